"""The engine's lease sweeper: one timer per manager renews every lease held for a third of its
ttl, instead of a timer armed and cancelled per update. A fake clock drives the lease times (the
store's), the event loop the sweeper; an SQLiteStore with ``shared=true`` takes real leases."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from backends import sqlite_store
from chatstate.clock import FakeClock
from chatstate.engine import SessionBusy, SessionManager
from chatstate.errors import LeaseLost
from chatstate.stores.base import Lease, Store


def _managers(store: Store, clock: FakeClock) -> tuple[SessionManager, SessionManager]:
    store.clock = clock  # type: ignore[attr-defined]
    return tuple(  # type: ignore[return-value]
        SessionManager(store, clock=clock, owner=f"process-{name}", lease_seconds=0.3,
                       lock_timeout=0.0)
        for name in ("a", "b")
    )


def _count_renewals(store: Store, monkeypatch: pytest.MonkeyPatch) -> asyncio.Queue[Any]:
    renewals: asyncio.Queue[tuple[str, Lease | None]] = asyncio.Queue()
    real_renew = store.renew

    async def counting_renew(lease: Lease, ttl: float) -> Lease | None:
        renewed = await real_renew(lease, ttl)
        renewals.put_nowait((lease.key, renewed))
        return renewed

    monkeypatch.setattr(store, "renew", counting_renew)
    return renewals


async def _sweeper_stopped(manager: SessionManager) -> None:
    """Wait until the sweeper found nothing left to renew and stopped."""
    for _ in range(200):
        if manager._sweeper is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the sweeper kept running with no lease held")


async def test_one_sweeper_renews_every_long_handler_of_a_manager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with sqlite_store("shared=true") as store:
        clock = FakeClock()
        holder, other = _managers(store, clock)
        renewals = _count_renewals(store, monkeypatch)
        keys = [f"web:user:sweep{i}" for i in range(3)]
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(holder.session(k)) for k in keys]
            assert set(holder._held) and len(holder._held) == len(keys)
            for step in range(4):
                # 1.0 s of fake time in all: more than three lease lengths.
                clock.advance(0.25)
                renewed: set[str] = set()
                while renewed != set(keys):
                    key, lease = await asyncio.wait_for(renewals.get(), 10.0)
                    assert lease is not None
                    renewed.add(key)
                for key in keys:
                    with pytest.raises(SessionBusy):
                        async with other.session(key):
                            pass
                for session in sessions:
                    session.data[f"step{step}"] = True
        assert holder._held == {}
        for key in keys:
            record = await store.load(key)
            assert record is not None and all(record.data[f"step{i}"] for i in range(4))
        await _sweeper_stopped(holder)
        await holder.aclose()
        await other.aclose()


async def test_quick_updates_leave_nothing_to_renew(monkeypatch: pytest.MonkeyPatch) -> None:
    async with sqlite_store("shared=true") as store:
        clock = FakeClock()
        holder, _ = _managers(store, clock)
        renewals = _count_renewals(store, monkeypatch)
        for _ in range(5):
            async with holder.session("web:user:quick") as s:
                s.data["n"] = s.data.get("n", 0) + 1
            assert holder._held == {}
        with pytest.raises(SessionBusy):
            async with holder.session("web:user:failing"):
                # A handler that fails leaves nothing held either.
                assert len(holder._held) == 1
                raise SessionBusy("web:user:failing", 0.0, "drop")
        assert holder._held == {}
        await _sweeper_stopped(holder)
        assert renewals.empty()
        await holder.aclose()


async def test_a_lost_lease_is_not_renewed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    async with sqlite_store("shared=true") as store:
        clock = FakeClock()
        holder, other = _managers(store, clock)
        renewals = _count_renewals(store, monkeypatch)
        key = "web:user:lost"
        with pytest.raises(LeaseLost):  # the commit of a lost lease is refused
            async with holder.session(key) as s:
                clock.advance(1.0)  # the lease ran out before the first renewal
                await other.update(key, lambda t: t.data.update(owner="other"))
                _, lease = await asyncio.wait_for(renewals.get(), 10.0)
                assert lease is None  # the sweeper's renewal found it lost
                assert holder._held == {}  # and stops renewing it
                s.data["owner"] = "holder"
        record = await store.load(key)
        assert record is not None and record.data["owner"] == "other"
        await _sweeper_stopped(holder)
        await holder.aclose()
        await other.aclose()
