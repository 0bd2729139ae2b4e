"""The multi-process lost-update workload, shared by every store's multi-process test.

Each OS process runs `TASKS` concurrent tasks through one `SessionManager`; every task makes one
update on each of `KEYS` keys (in a task-specific rotation, so the keys are contended from every
process at once). An update increments a counter in the session's data and appends one message
naming the process and the order in which this process submitted updates for that key.

The parent then checks (see `verify`) that nothing was lost: every counter and every history
length equals the number of updates made on its key, and, within one process, the messages of a
key are in the order they were submitted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import traceback
from dataclasses import dataclass, field
from typing import Any

from chatstate.engine import SessionManager
from chatstate.model import Message, SessionKey
from chatstate.stores import open_store
from chatstate.stores.base import Store

PROCESSES = 4
TASKS = 64
KEYS = 20


@dataclass(frozen=True)
class Workload:
    """What to run: a store URL plus options that every process passes to `open_store`."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)
    processes: int = PROCESSES
    tasks: int = TASKS
    keys: int = KEYS
    lock_timeout: float = 120.0
    lease_seconds: float = 30.0

    @property
    def updates_per_key(self) -> int:
        return self.processes * self.tasks

    def key(self, index: int) -> str:
        return str(SessionKey.user("mp", f"k{index}"))


async def _worker_main(work: Workload, worker: int, opened: Any) -> dict[str, int]:
    store = open_store(work.url, **work.options)
    manager = SessionManager(
        store, lock_timeout=work.lock_timeout, lease_seconds=work.lease_seconds, retries=10
    )
    await manager.open()
    submitted = dict.fromkeys(range(work.keys), 0)
    # Every process begins once all have opened their store: "four processes sharing a store"
    # (a store that opens while the others update: test_store_sqlite.py, "an update begun
    # alone yields to a lease taken meanwhile").
    await asyncio.to_thread(opened.wait, 120.0)

    async def one_update(index: int) -> None:
        # The submission number is taken synchronously, right before queueing on the key's
        # lock, so it is the order in which this process submitted updates for the key.
        order = submitted[index]
        submitted[index] += 1

        def change(session: Any) -> None:
            session.data["n"] = session.data.get("n", 0) + 1
            session.append(Message(role="user", content=f"{worker}:{order}"))

        async with manager.session(work.key(index)) as session:
            change(session)

    async def task(t: int) -> None:
        for step in range(work.keys):
            await one_update((t + step) % work.keys)

    try:
        await asyncio.gather(*(task(t) for t in range(work.tasks)))
    finally:
        await manager.aclose()
    return {work.key(i): n for i, n in submitted.items()}


def _worker(work: Workload, worker: int, opened: Any, results: Any) -> None:
    try:
        done = asyncio.run(_worker_main(work, worker, opened))
        results.put((worker, "ok", done))
    except BaseException:
        results.put((worker, "error", traceback.format_exc()))


def run_processes(work: Workload, timeout: float = 240.0) -> dict[int, dict[str, int]]:
    """Run the workload in `work.processes` spawned OS processes; raise if any failed."""
    ctx = multiprocessing.get_context("spawn")
    opened = ctx.Barrier(work.processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(work, i, opened, results), daemon=True)
        for i in range(work.processes)
    ]
    for proc in procs:
        proc.start()
    outcome: dict[int, dict[str, int]] = {}
    failures: list[str] = []
    try:
        for _ in procs:
            worker, status, payload = results.get(timeout=timeout)
            if status == "ok":
                outcome[worker] = payload
            else:
                failures.append(f"worker {worker} failed:\n{payload}")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    if failures:
        raise AssertionError("\n".join(failures))
    return outcome


async def verify_opened(work: Workload, store: Store) -> None:
    """`verify` on a store that is opened for it and closed afterwards."""
    await store.open()
    try:
        await verify(work, store)
    finally:
        await store.close()


async def verify(work: Workload, store: Store) -> None:
    """No lost update, no duplicated message, per-process submission order kept."""
    for index in range(work.keys):
        key = work.key(index)
        record = await store.load(key)
        assert record is not None, f"{key}: no record"
        assert record.data.get("n") == work.updates_per_key, (
            f"{key}: counter {record.data.get('n')} != {work.updates_per_key} updates"
        )
        assert await store.count_messages(record.ref) == work.updates_per_key
        messages = await store.read_range(record.ref, 1, work.updates_per_key)
        assert [m.seq for m in messages] == list(range(1, work.updates_per_key + 1))
        per_worker: dict[str, list[int]] = {}
        for message in messages:
            worker, _, order = message.text.partition(":")
            per_worker.setdefault(worker, []).append(int(order))
        assert len(per_worker) == work.processes
        for worker, orders in per_worker.items():
            assert orders == sorted(orders) == list(range(work.tasks)), (
                f"{key}: worker {worker} messages out of submission order: {orders}"
            )
