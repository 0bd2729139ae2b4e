"""Leases through the engine, on every store shared by several processes: two managers on one
store with different owners stand for two processes, and a fake clock drives lease times.

* a handler that outlives its lease without renewing is refused at commit, the newer data kept;
* a handler whose lease is renewed is never interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest

from backends import BACKENDS, require_service, sqlite_store
from chatstate.clock import FakeClock
from chatstate.engine import SessionBusy, SessionManager
from chatstate.errors import ConflictError, LeaseLost
from chatstate.stores.base import Lease, Store
from redis_servers import require_redis_binaries

SHARED_STORES = ["sqlite", "redis", "redis_cluster", "postgres"]


@contextlib.asynccontextmanager
async def _shared_store(name: str) -> AsyncIterator[Store]:
    """The store `name` as several processes share it. An SQLiteStore takes leases only while
    another store has its file open (``shared=auto``); here both "processes" use one store
    object, so it is told to take them always (``shared=true``)."""
    _require(name)
    factory = partial(sqlite_store, "shared=true") if name == "sqlite" else BACKENDS[name]
    async with factory() as store:
        yield store


def _managers(store: Store, clock: FakeClock, **options: Any) -> tuple[SessionManager, ...]:
    """Two managers on one store, as two processes would be: different lease owners."""
    store.clock = clock  # type: ignore[attr-defined]
    return tuple(
        SessionManager(store, clock=clock, owner=f"process-{name}", **options)
        for name in ("a", "b")
    )


def _require(name: str) -> None:
    if name == "redis":
        require_service("Redis", "127.0.0.1", 6379)
    elif name == "redis_cluster":
        require_redis_binaries()
    elif name == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)


@pytest.mark.parametrize("name", SHARED_STORES)
async def test_a_handler_that_outlives_its_lease_is_refused(name: str) -> None:
    async with _shared_store(name) as store:
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


@pytest.mark.parametrize("name", SHARED_STORES)
async def test_a_handler_whose_lease_is_renewed_is_never_interrupted(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _shared_store(name) as store:
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
