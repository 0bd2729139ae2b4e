"""Correct updates across many instances on PostgreSQL:

* no lost update with 4 OS processes x 64 concurrent tasks x 20 keys through SessionManager
  (the worker body is tests/mp_workload.py, shared with the other stores' tests);
* a handler that outlives its lease without renewing is refused at commit, the newer data kept;
* a handler whose lease is renewed is never interrupted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from backends import BACKENDS, POSTGRES_URL, drop_postgres_schema, require_postgres
from chatstate.clock import FakeClock
from chatstate.engine import SessionBusy, SessionManager
from chatstate.errors import ConflictError, LeaseLost
from chatstate.stores.base import Lease
from chatstate.stores.postgres import PostgresStore, upgrade
from mp_workload import Workload, run_processes, verify

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_no_lost_updates_across_processes() -> None:
    require_postgres()
    schema = f"cs_test_{uuid.uuid4().hex[:12]}"
    # A bounded pool per process (4 x 8 connections) keeps the server's connection slots free
    # for the rest of the suite; 64 tasks per process queue on it.
    work = Workload(url=POSTGRES_URL, options={"schema": schema, "pool_max_size": 8})

    async def prepare() -> None:
        await upgrade(f"{POSTGRES_URL}?schema={schema}")

    async def check() -> None:
        store = PostgresStore.from_url(POSTGRES_URL, schema=schema)
        await store.open()
        try:
            await verify(work, store)
        finally:
            await store.close()

    asyncio.run(prepare())
    try:
        run_processes(work)
        asyncio.run(check())
    finally:
        asyncio.run(drop_postgres_schema(schema))


def _managers(store: PostgresStore, clock: FakeClock, **options: Any) -> list[SessionManager]:
    """Two managers on one store, as two processes would be: different lease owners. The
    store reads lease times from the fake clock too."""
    store.clock = clock
    return [
        SessionManager(store, clock=clock, owner=f"process-{name}", **options)
        for name in ("a", "b")
    ]


async def test_a_handler_that_outlives_its_lease_is_refused() -> None:
    async with BACKENDS["postgres"]() as store:
        assert isinstance(store, PostgresStore)
        clock = FakeClock()
        slow, fast = _managers(store, clock, lease_seconds=30.0, lock_timeout=5.0)
        key = "web:user:lease1"
        await fast.update(key, lambda s: s.data.update(owner="first"))

        with pytest.raises(ConflictError) as refused:
            async with slow.session(key) as s:
                s.data["owner"] = "slow"
                clock.advance(31.0)  # the lease ran out; no renewal happened in between
                await fast.update(key, lambda t: t.data.update(owner="fast"))
        assert isinstance(refused.value, LeaseLost)

        record = await store.load(key)
        assert record is not None and record.data["owner"] == "fast"
        assert record.version == 2
        await slow.aclose()
        await fast.aclose()


async def test_a_handler_whose_lease_is_renewed_is_never_interrupted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with BACKENDS["postgres"]() as store:
        assert isinstance(store, PostgresStore)
        clock = FakeClock()
        # A short lease: the engine renews it every lease_seconds / 3 while the handler runs.
        holder, other = _managers(store, clock, lease_seconds=0.3, lock_timeout=0.0)
        key = "web:user:lease2"
        renewals: asyncio.Queue[Lease | None] = asyncio.Queue()
        real_renew: Callable[..., Any] = store.renew

        async def counting_renew(lease: Lease, ttl: float) -> Lease | None:
            renewed = await real_renew(lease, ttl)
            renewals.put_nowait(renewed)
            return renewed

        monkeypatch.setattr(store, "renew", counting_renew)
        async with holder.session(key) as s:
            for step in range(6):
                clock.advance(0.25)  # 1.5 s of fake time in all: five lease lengths
                assert await asyncio.wait_for(renewals.get(), 10.0) is not None
                with pytest.raises(SessionBusy):
                    async with other.session(key):
                        pass
                s.data[f"step{step}"] = True
        record = await store.load(key)
        assert record is not None and all(record.data[f"step{i}"] for i in range(6))
        await holder.aclose()
        await other.aclose()
