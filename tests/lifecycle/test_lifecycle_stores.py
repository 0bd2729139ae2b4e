"""The lifecycle on every registered store (fake clock): warning once, a message cancelling the
expiry, expiry, the late-expiry race, purge and restore."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from backends import BACKENDS
from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.lifecycle import Due, Lifecycle
from chatstate.model import FlowPosition, Message, SessionKey, Status
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session
from chatstate.stores.base import Store
from chatstate.stores.memory import MemoryStore

# Real time as the start: server-side safety expiries (Redis TTLs) are set in real time.
T0 = float(int(time.time()))
POLICY = LifecyclePolicy(idle_timeout=300, warn_before=60, max_age=None, retention=3600)
STORES = ["memory", *(name for name in ("sqlite", "redis", "postgres") if name in BACKENDS)]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore(clock=clock)
        return
    async with BACKENDS[request.param]() as opened:
        if hasattr(opened, "clock"):
            opened.clock = clock  # due and lease times on the test's clock
        yield opened


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


class Hooks:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []

    def warning(self, session: Session, due: Due) -> None:
        self.seen.append(("warn", session.id, due.due_at))

    def expire(self, session: Session, due: Due) -> None:
        self.seen.append(("expire", session.id, due.due_at))

    def close(self, session: Session, reason: str) -> None:
        self.seen.append((f"close:{reason}", session.id, 0.0))

    def restore(self, session: Session) -> None:
        self.seen.append(("restore", session.id, 0.0))


def runner(manager: SessionManager, hooks: Hooks) -> Lifecycle:
    return Lifecycle(manager, on_warning=hooks.warning, on_expire=hooks.expire,
                     on_close=hooks.close, on_restore=hooks.restore)


async def say(manager: SessionManager, key: SessionKey, text: str = "hi") -> Session:
    async with manager.session(key) as s:
        s.append(Message(role="user", content=text))
    return s


async def test_warn_once_then_expire_then_purge(store: Store, clock: FakeClock) -> None:
    manager = SessionManager(store, clock=clock, policy=POLICY)
    hooks = Hooks()
    lifecycle = runner(manager, hooks)
    quiet, chatty = SessionKey.user("t", 1), SessionKey.user("t", 2)
    a = await say(manager, quiet)
    b = await say(manager, chatty)
    clock.advance(240)
    await lifecycle.run_once()
    await lifecycle.run_once()
    assert sorted(hooks.seen) == sorted([("warn", a.id, T0 + 240), ("warn", b.id, T0 + 240)])
    clock.advance(30)
    await say(manager, chatty, "still here")  # cancels b's expiry
    clock.advance(30)
    report = await lifecycle.run_once()
    assert report.expired == 1
    assert hooks.seen[2:] == [("expire", a.id, T0 + 300), ("close:timeout", a.id, 0.0)]
    current = await manager.get(chatty)
    assert current is not None and current.status is Status.ACTIVE
    clock.advance(3600)
    report = await lifecycle.run_once()
    assert report.purged == 1 and report.expired == 1  # a purged; b expired meanwhile
    assert await store.load_by_id(a.id) is None
    assert await store.read_tail(a.record.ref, 5) == []


async def test_late_message_expires_the_old_session_once(store: Store, clock: FakeClock) -> None:
    manager = SessionManager(store, clock=clock, policy=POLICY)
    hooks = Hooks()
    lifecycle = runner(manager, hooks)
    key = SessionKey.user("t", 3)
    first = await say(manager, key)
    clock.advance(301)
    second = await say(manager, key, "late")
    assert second.id != first.id
    await lifecycle.run_once()
    assert hooks.seen == [("expire", first.id, T0 + 300), ("close:timeout", first.id, 0.0)]
    old = await store.load_by_id(first.id)
    assert old is not None and old.status is Status.EXPIRED
    assert [m.text for m in await store.read_tail(old.ref, 5)] == ["hi"]


async def test_restore_once_per_interruption(store: Store, clock: FakeClock) -> None:
    before = SessionManager(store, clock=clock, policy=POLICY)
    keys = [SessionKey.user("t", n) for n in range(4)]
    for key in keys:
        async with before.session(key) as s:
            s.flow = FlowPosition(name="order", step="qty")
    clock.advance(30)
    hooks = Hooks()
    first, second = (runner(SessionManager(store, clock=clock, policy=POLICY), hooks)
                     for _ in range(2))
    assert await first.restore() + await second.restore() == 4
    assert len({sid for _, sid, _ in hooks.seen}) == 4
