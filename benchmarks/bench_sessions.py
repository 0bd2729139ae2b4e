"""chatstate against its peers: `python -m benchmarks.bench_sessions [--quick] [--only ...]`.

Groups (``--only memory,sqlite,sqlite-full,bytes,claim,redis,postgres``; default all):

* memory:   chatstate MemoryStore engine cycle vs aiogram MemoryStorage (without and with
            SimpleEventIsolation, the per-user ordering the engine gives), and the floor of
            any cycle on serialised records (decode + encode, no engine) for scale
* sqlite:   chatstate SQLiteStore vs plain stdlib sqlite3 SELECT + UPSERT, commit per message
            (WAL, synchronous=NORMAL)
* sqlite-full: the same with power-loss durability on both sides (synchronous=FULL: an fsync
            per transaction), where committing concurrent updates together pays off most
* bytes:    process memory per idle session: MemoryStore vs aiogram MemoryStorage vs a dict
* claim:    claiming 100 due sessions among 1,000,000 vs among 1,000 (MemoryStore, SQLiteStore)
* redis:    chatstate RedisStore vs aiogram RedisStorage (with and without RedisEventIsolation)
            vs a raw redis-py GET+SET loop; round trips, server CPU and commands per update,
            server time also warm, the run replayed (on a private redis-server; with
            $CHATSTATE_BENCH_REDIS_URL on that server, without the replay)
* postgres: chatstate PostgresStore vs raw asyncpg SELECT + UPSERT of a JSONB row; transactions
            per update (on a private database)

Every configuration prints one JSON line on stdout; tables and ratios go to stderr.
`--quick` runs a tiny workload (for the smoke test; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .common import Report, Result, Workload, make_result, note, run_workload
from .probes import PostgresProbe, Probe, RedisProbe
from .systems import (
    SystemFactory,
    aiogram_memory,
    aiogram_memory_isolated,
    aiogram_redis,
    chatstate_memory,
    chatstate_on,
    chatstate_sqlite,
    chatstate_sqlite_uncached,
    chatstate_sqlite_with,
    postgres_store_url,
    raw_asyncpg,
    raw_redis,
    raw_sqlite3,
    raw_sqlite3_with,
    redis_store_url,
    serialised_floor,
    temp_sqlite_path,
)

GROUPS = ("memory", "sqlite", "sqlite-full", "bytes", "claim", "redis", "postgres")

MEMORY_ENGINE = "chatstate MemoryStore"
SERIALISED_FLOOR = "floor: decode+encode only"
AIOGRAM_MEMORY = "aiogram MemoryStorage"
AIOGRAM_MEMORY_ISOLATED = "aiogram MemoryStorage+isolation"
SQLITE_STORE = "chatstate SQLiteStore"
SQLITE_STORE_UNCACHED = "chatstate SQLiteStore (cache=0)"
RAW_SQLITE = "sqlite3 SELECT+UPSERT"
SQLITE_STORE_FULL = "chatstate SQLiteStore (full)"
RAW_SQLITE_FULL = "sqlite3 SELECT+UPSERT (full)"
REDIS_STORE = "chatstate RedisStore"
AIOGRAM_REDIS = "aiogram RedisStorage"
AIOGRAM_REDIS_ISOLATED = "aiogram RedisStorage+isolation"
RAW_REDIS = "redis-py GET+SET"
POSTGRES_STORE = "chatstate PostgresStore"
RAW_ASYNCPG = "asyncpg SELECT+UPSERT"

RATIOS = [
    (MEMORY_ENGINE, AIOGRAM_MEMORY),
    (MEMORY_ENGINE, AIOGRAM_MEMORY_ISOLATED),
    (SERIALISED_FLOOR, AIOGRAM_MEMORY),
    (SQLITE_STORE, RAW_SQLITE),
    (SQLITE_STORE_UNCACHED, RAW_SQLITE),
    (SQLITE_STORE_FULL, RAW_SQLITE_FULL),
    (REDIS_STORE, AIOGRAM_REDIS_ISOLATED),
    (REDIS_STORE, AIOGRAM_REDIS),
    (REDIS_STORE, RAW_REDIS),
    (POSTGRES_STORE, RAW_ASYNCPG),
]


@dataclass(frozen=True)
class Plan:
    users: tuple[int, ...]
    messages: int
    concurrency: tuple[int, ...]
    idle_sessions: int  # for bytes per idle session
    claim_among: tuple[int, ...]  # total sessions for the claim benchmark (MemoryStore)
    # SQLiteStore fills at a few thousand commits/s, so 1,000,000 sessions take minutes:
    # the default run stops at 100,000 and `--claim-full` goes to 1,000,000.
    claim_among_sqlite: tuple[int, ...]
    claim_due: int
    claim_repeats: int
    max_seconds: float | None = None  # time box per throughput configuration
    # Rounds per configuration: every system of a group runs once per round, one after the
    # other, so a ratio pairs runs made moments apart (see `Report.ratio`).
    repeat: int = 1

    def workloads(self) -> list[Workload]:
        return [
            Workload(users=u, messages=self.messages, concurrency=c)
            for u in self.users
            for c in self.concurrency
            for _ in range(self.repeat)
        ]


FULL = Plan(users=(1_000, 10_000), messages=20, concurrency=(1, 64), idle_sessions=10_000,
            claim_among=(1_000, 1_000_000), claim_among_sqlite=(1_000, 100_000), claim_due=100,
            claim_repeats=20, max_seconds=5.0)
QUICK = Plan(users=(50,), messages=3, concurrency=(1, 8), idle_sessions=500,
             claim_among=(200, 2_000), claim_among_sqlite=(200, 2_000), claim_due=20,
             claim_repeats=3)


async def measure(
    report: Report, plan: Plan, group: str, system: str, factory: SystemFactory,
    workload: Workload, probe: Probe | None = None,
) -> Result:
    # Every configuration starts from a collected heap, whatever ran before it in this
    # process: otherwise the garbage of earlier groups lands in a later system's time.
    gc.collect()
    async with factory(workload) as cycle:
        if probe is not None:
            await probe.start()
        cpu = time.process_time()
        seconds, latencies, done = await run_workload(cycle, workload, plan.max_seconds)
        cpu = time.process_time() - cpu
        if probe is not None:
            await probe.stop()
    extra = {"client_cpu_us_per_update": round(cpu / max(1, len(latencies)) * 1e6, 2)}
    if probe is not None:
        extra.update(await probe.finish(len(latencies)))
    return report.add(make_result(group, system, workload, seconds, latencies, done, **extra))


# -- throughput groups ----------------------------------------------------------------------


async def bench_memory(report: Report, plan: Plan) -> None:
    for w in plan.workloads():
        await measure(report, plan, "memory", MEMORY_ENGINE, chatstate_memory, w)
        await measure(report, plan, "memory", AIOGRAM_MEMORY, aiogram_memory, w)
        await measure(
            report, plan, "memory", AIOGRAM_MEMORY_ISOLATED, aiogram_memory_isolated, w
        )
        await measure(report, plan, "memory", SERIALISED_FLOOR, serialised_floor, w)


async def bench_sqlite(report: Report, plan: Plan) -> None:
    for w in plan.workloads():
        await measure(report, plan, "sqlite", RAW_SQLITE, raw_sqlite3, w)
        await measure(report, plan, "sqlite", SQLITE_STORE, chatstate_sqlite, w)
        await measure(
            report, plan, "sqlite", SQLITE_STORE_UNCACHED, chatstate_sqlite_uncached, w
        )


async def bench_sqlite_full(report: Report, plan: Plan) -> None:
    full_chatstate, full_raw = chatstate_sqlite_with("full"), raw_sqlite3_with("full")
    for w in plan.workloads():
        await measure(report, plan, "sqlite-full", RAW_SQLITE_FULL, full_raw, w)
        await measure(report, plan, "sqlite-full", SQLITE_STORE_FULL, full_chatstate, w)


async def bench_redis(report: Report, plan: Plan) -> None:
    from .servers import private_redis

    # The warm replay flushes a database: only on the server the benchmark started itself.
    replay = not os.environ.get("CHATSTATE_BENCH_REDIS_URL")
    async with private_redis() as url:
        systems: list[tuple[str, SystemFactory]] = [
            (RAW_REDIS, raw_redis(url)),
            (AIOGRAM_REDIS, aiogram_redis(url, isolated=False)),
            (AIOGRAM_REDIS_ISOLATED, aiogram_redis(url, isolated=True)),
            (REDIS_STORE, chatstate_on(lambda: redis_store_url(url))),
        ]
        for w in plan.workloads():
            for name, factory in systems:
                probe = RedisProbe(url, replay=replay)
                await measure(report, plan, "redis", name, factory, w, probe)


async def bench_postgres(report: Report, plan: Plan) -> None:
    from .servers import private_postgres_database

    async with private_postgres_database() as url:
        systems: list[tuple[str, SystemFactory]] = [
            (RAW_ASYNCPG, raw_asyncpg(url)),
            (POSTGRES_STORE, chatstate_on(lambda: postgres_store_url(url))),
        ]
        for w in plan.workloads():
            for name, factory in systems:
                await measure(report, plan, "postgres", name, factory, w, PostgresProbe(url))


# -- bytes per idle session -----------------------------------------------------------------


async def bench_bytes(report: Report, plan: Plan) -> None:
    # Import everything first: modules loaded while tracing would count as sessions' memory.
    import aiogram.fsm.storage.memory  # noqa: F401

    import chatstate.stores.memory  # noqa: F401

    n = plan.idle_sessions
    builders: list[tuple[str, Callable[[int], Awaitable[object]]]] = [
        (MEMORY_ENGINE, _idle_chatstate),
        (AIOGRAM_MEMORY, _idle_aiogram),
        ("dict of dicts", _idle_dicts),
    ]
    for name, build in builders:
        per_session = await _bytes_per_item(build, n)
        report.add(Result(group="bytes", system=name,
                          extra={"sessions": n, "bytes_per_idle_session": round(per_session)}))


async def _bytes_per_item(build: Callable[[int], Awaitable[object]], n: int) -> float:
    """Traced memory that `build(n)`'s result keeps alive, per session (keys included)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = await build(n)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return (after - before) / n


async def _idle_chatstate(n: int) -> object:
    from chatstate import SessionKey, SessionManager
    from chatstate.stores import open_store

    store = open_store(f"memory://?max_sessions={n * 2}")
    manager = SessionManager(store)
    async with manager.session(SessionKey.user("bench", 0)):
        pass  # warm the engine's one-time structures before counting
    await store.delete("bench:user:0")
    for user in range(1, n + 1):
        async with manager.session(SessionKey.user("bench", user)) as s:
            s.state = "chatting"
            s.data["last_text"] = "message number 1"
            s.data["step"] = 1
            s.data["count"] = 1
    return store


async def _idle_aiogram(n: int) -> object:
    from aiogram.fsm.storage.base import StorageKey
    from aiogram.fsm.storage.memory import MemoryStorage

    storage = MemoryStorage()
    for user in range(1, n + 1):
        key = StorageKey(bot_id=1, chat_id=user, user_id=user)
        await storage.set_state(key, "chatting")
        await storage.update_data(key, {"last_text": "message number 1", "step": 1, "count": 1})
    return storage


async def _idle_dicts(n: int) -> object:
    sessions: dict[int, dict[str, object]] = {}
    for user in range(1, n + 1):
        sessions[user] = {
            "state": "chatting",
            "data": {"last_text": "message number 1", "step": 1, "count": 1},
        }
    return sessions


# -- claiming due sessions ------------------------------------------------------------------


async def bench_claim(report: Report, plan: Plan) -> None:
    for store_name in ("memory", "sqlite"):
        timings: dict[int, float] = {}
        sizes = plan.claim_among if store_name == "memory" else plan.claim_among_sqlite
        for total in sizes:
            seconds = await _claim_time(store_name, total, plan)
            timings[total] = seconds
            report.add(Result(group="claim", system=f"chatstate {store_name} claim_due",
                              extra={"sessions": total, "due": plan.claim_due,
                                     "claim_ms": round(seconds * 1000, 3)}))
        small, large = min(timings), max(timings)
        if timings[small]:
            note(f"{store_name}: claiming {plan.claim_due} due among {large:,} / among "
                 f"{small:,} = {timings[large] / timings[small]:.2f}x")


async def _claim_time(store_name: str, total: int, plan: Plan) -> float:
    """Median time to claim `claim_due` due sessions among `total` (the rest due in a year)."""
    from chatstate.model import new_record
    from chatstate.stores import open_store

    async with temp_sqlite_path() as path:
        url = f"memory://?max_sessions={total + 10}" if store_name == "memory" else \
            f"sqlite:///{path}"
        store = open_store(url)
        async with store:
            now = time.time()
            later = now + 365 * 86400

            async def put(i: int) -> None:
                record = new_record(f"bench:user:{i}", now)
                record.expires_at = now - 1 if i < plan.claim_due else later
                record.version = 1
                await store.commit(record, expected=0)

            started = time.perf_counter()
            if store_name == "memory":
                for i in range(total):  # no I/O to overlap: tasks would only add overhead
                    await put(i)
            else:
                batch = 512  # concurrent commits let the store batch them into transactions
                for first in range(0, total, batch):
                    await asyncio.gather(*(put(i) for i in range(first, min(first + batch,
                                                                             total))))
            note(f"{store_name}: {total:,} sessions stored in {time.perf_counter() - started:.1f}s")
            samples = []
            for repeat in range(plan.claim_repeats):
                at = now + repeat * 120.0  # earlier claims pushed the items 30 s ahead
                t0 = time.perf_counter()
                items = await store.claim_due("expire", at, plan.claim_due, claim_seconds=30.0)
                samples.append(time.perf_counter() - t0)
                if len(items) != plan.claim_due:
                    raise RuntimeError(
                        f"{store_name}: claimed {len(items)} instead of {plan.claim_due}"
                    )
            return statistics.median(samples)


# -- main -------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Report, Plan], Awaitable[None]]] = {
    "memory": bench_memory,
    "sqlite": bench_sqlite,
    "sqlite-full": bench_sqlite_full,
    "bytes": bench_bytes,
    "claim": bench_claim,
    "redis": bench_redis,
    "postgres": bench_postgres,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sessions",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny workload (smoke test)")
    parser.add_argument("--max-seconds", type=float, default=None, metavar="S",
                        help="time box per throughput configuration (default 5 s, 0 for none): "
                        "no new user starts after that, so figures cover the users done")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="rounds per throughput configuration (default 1); ratios are "
                        "the median of the rounds, each pairing runs made one after the other")
    parser.add_argument("--claim-full", action="store_true",
                        help="claim among 1,000,000 sessions on SQLite too (minutes to fill)")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated groups among {', '.join(GROUPS)}")
    args = parser.parse_args(argv)
    args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; use {', '.join(GROUPS)}")
    return args


async def run(groups: Sequence[str], plan: Plan, report: Report) -> None:
    for group in groups:
        started = time.perf_counter()
        await RUNNERS[group](report, plan)
        note(f"{group}: done in {time.perf_counter() - started:.1f}s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    plan = QUICK if args.quick else FULL
    if args.claim_full:
        plan = dataclasses.replace(plan, claim_among_sqlite=plan.claim_among)
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    plan = dataclasses.replace(plan, repeat=args.repeat)
    if args.max_seconds is not None:
        plan = dataclasses.replace(plan, max_seconds=args.max_seconds or None)
    asyncio.run(run(args.groups, plan, report))
    report.print_tables()
    report.print_ratios(RATIOS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
