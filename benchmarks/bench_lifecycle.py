"""Lifecycle lag: due time -> on_expire call, for many sessions falling due within a window.

    python benchmarks/bench_lifecycle.py                  # 10,000 sessions within 60 s
    python benchmarks/bench_lifecycle.py --quick          # 1,000 sessions within 5 s
    python benchmarks/bench_lifecycle.py --stores redis --sessions 5000 --seconds 20

One runner (`Lifecycle`) in this process claims the due expiries; the sessions are written
straight into the store beforehand with deadlines spread evenly over the window, so the seeding
does not compete with the runner. Prints p50 / p99 / max lag and the runner's CPU use (process
CPU time over wall time while the window runs). Target (issue 4): p99 under 1 s with one runner.
Needs the Redis and PostgreSQL servers of ../shared/SERVICES.md for those stores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chatstate.engine import SessionManager
from chatstate.lifecycle import Due, Lifecycle
from chatstate.model import SessionKey, new_record
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session
from chatstate.stores.base import Store
from chatstate.stores.url import open_store

REDIS_URL = os.environ.get("CHATSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "CHATSTATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@asynccontextmanager
async def opened(name: str) -> AsyncIterator[Store]:
    """A fresh store of kind `name` in its own namespace, removed afterwards."""
    if name == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            store = open_store(f"sqlite:///{folder}/bench.db")
            await store.open()
            try:
                yield store
            finally:
                await store.close()
        return
    if name == "redis":
        prefix = f"csbench{uuid.uuid4().hex[:8]}"
        store = open_store(f"{REDIS_URL}?prefix={prefix}")
        await store.open()
        try:
            yield store
        finally:
            client = store._client  # type: ignore[attr-defined]
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                await client.unlink(key)
            await store.close()
        return
    if name == "postgres":
        import asyncpg

        schema = f"cs_bench_{uuid.uuid4().hex[:8]}"
        store = open_store(f"{POSTGRES_URL}?schema={schema}")
        await store.open()
        try:
            yield store
        finally:
            await store.close()
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
        return
    if name == "memory":
        store = open_store("memory://")
        yield store
        return
    raise SystemExit(f"unknown store {name!r}; use sqlite, redis, postgres or memory")


async def seed(store: Store, count: int, first_due: float, seconds: float) -> None:
    """Write `count` active sessions whose deadlines are spread over [first_due, +seconds)."""
    gate = asyncio.Semaphore(64)

    async def one(n: int) -> None:
        record = new_record(SessionKey.user("bench", n), first_due - 60)
        record.expires_at = first_due + seconds * n / count
        record.version = 1
        async with gate:
            await store.commit(record, expected=0)

    await asyncio.gather(*(one(n) for n in range(count)))


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench(name: str, sessions: int, seconds: float, batch: int, concurrency: int) -> None:
    async with opened(name) as store:
        policy = LifecyclePolicy(idle_timeout=60, max_age=None)
        manager = SessionManager(store, policy=policy)
        await manager.open()
        lags: list[float] = []
        done = asyncio.Event()

        def on_expire(session: Session, due: Due) -> None:
            lags.append(due.delay)
            if len(lags) >= sessions:
                done.set()

        started = time.time()
        # Seed first (its cost is not measured), parked far in the future ...
        await seed(store, sessions, started + 3600, seconds)
        seeded = time.time() - started
        runner = Lifecycle(manager, on_expire=on_expire, batch_size=batch,
                           concurrency=concurrency, poll_interval=0.05, restore=False)
        # ... then move the window to open once the rewrite (about twice the seeding) is done,
        # so that no session is already overdue when the runner starts.
        first_due = time.time() + 2.0 + 2.5 * seeded
        await seed_shift(store, sessions, first_due, seconds)
        if time.time() > first_due:
            print(f"{name:9} warning: the window opened before the runner started")
        lead = first_due - time.time()
        cpu0, wall0 = time.process_time(), time.monotonic()
        async with runner:
            try:
                await asyncio.wait_for(done.wait(), lead + seconds + 60)
            except TimeoutError:
                pass
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    lags.sort()
    if not lags:
        print(f"{name:9} no expiry observed")
        return
    print(
        f"{name:9} sessions={sessions:6d} window={seconds:5.0f}s expired={len(lags):6d} "
        f"lag p50={percentile(lags, 0.5) * 1000:7.1f}ms p99={percentile(lags, 0.99) * 1000:7.1f}ms "
        f"max={lags[-1] * 1000:7.1f}ms runner cpu={cpu / wall * 100:5.1f}% "
        f"(seed {seeded:.1f}s)"
    )


async def seed_shift(store: Store, count: int, first_due: float, seconds: float) -> None:
    """Give the seeded sessions their real deadlines (one conditional write each)."""
    gate = asyncio.Semaphore(64)

    async def one(n: int) -> None:
        key = str(SessionKey.user("bench", n))
        async with gate:
            record = await store.load(key)
            assert record is not None
            expected = record.version
            record.expires_at = first_due + seconds * n / count
            record.version = expected + 1
            await store.commit(record, expected=expected)

    await asyncio.gather(*(one(n) for n in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,redis,postgres")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="window the deadlines span")
    parser.add_argument("--quick", action="store_true", help="1,000 sessions within 5 s")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.seconds = 1000, 5.0
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s)")
    for name in [s.strip() for s in args.stores.split(",") if s.strip()]:
        try:
            asyncio.run(bench(name, args.sessions, args.seconds, args.batch, args.concurrency))
        except (ImportError, OSError) as exc:
            print(f"{name:9} skipped: {exc}")


if __name__ == "__main__":
    main()
