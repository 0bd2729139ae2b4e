"""The lifecycle runner with a fake clock on the memory store: warnings, expiry, closes, purge,
restore after restart, carry-over, bounded memory."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from chatstate import events as ev
from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.lifecycle import Due, Lifecycle, load_hooks
from chatstate.model import FlowPosition, Message, SessionKey, Status
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session
from chatstate.stores.memory import MemoryStore

T0 = 1_000_000.0
KEY = SessionKey.user("telegram", 1)
POLICY = LifecyclePolicy(idle_timeout=300, warn_before=60, max_age=None, retention=3600)


class Calls:
    """Records every hook call."""

    def __init__(self) -> None:
        self.warnings: list[tuple[str, Due]] = []
        self.expiries: list[tuple[str, Due]] = []
        self.closes: list[tuple[str, str, Due | None]] = []
        self.restores: list[tuple[str, Due]] = []

    def hooks(self) -> dict[str, Any]:
        return {
            "on_warning": self.on_warning, "on_expire": self.on_expire,
            "on_close": self.on_close, "on_restore": self.on_restore,
        }

    async def on_warning(self, session: Session, due: Due) -> None:
        self.warnings.append((str(session.key), due))

    async def on_expire(self, session: Session, due: Due) -> None:
        assert session.status is Status.EXPIRED
        self.expiries.append((str(session.key), due))

    def on_close(self, session: Session, reason: str, due: Due | None) -> None:
        self.closes.append((str(session.key), reason, due))

    async def on_restore(self, session: Session, due: Due) -> None:
        self.restores.append((str(session.key), due))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


@pytest.fixture
def manager(store: MemoryStore, clock: FakeClock) -> SessionManager:
    return SessionManager(store, clock=clock, policy=POLICY)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def lifecycle(manager: SessionManager, calls: Calls) -> Lifecycle:
    return Lifecycle(manager, **calls.hooks())


def names(seen: list[ev.Event], *wanted: str) -> list[str]:
    return [e.name for e in seen if e.name in wanted]


async def say(manager: SessionManager, key: SessionKey = KEY, text: str = "hi") -> Session:
    async with manager.session(key) as s:
        s.append(Message(role="user", content=text))
    return s


async def test_warning_fires_once_and_only_while_the_user_stays_silent(
    manager: SessionManager, lifecycle: Lifecycle, calls: Calls, clock: FakeClock
) -> None:
    await say(manager)
    clock.advance(239)
    assert (await lifecycle.run_once()).warned == 0  # not yet due (warn at +240)
    clock.advance(1)
    report = await lifecycle.run_once()
    assert report.warned == 1 and len(calls.warnings) == 1
    due = calls.warnings[0][1]
    assert (due.kind, due.due_at, due.expires_at, due.remaining) == (
        "warn", T0 + 240, T0 + 300, 60
    )
    assert due.id == f"{due.session_id}:warn:{T0 + 240:.6f}"
    clock.advance(30)
    assert (await lifecycle.run_once()).warned == 0
    assert len(calls.warnings) == 1  # exactly once
    record = await manager.get(KEY)
    assert record is not None and record.status is Status.ACTIVE and record.warn_at is None


async def test_no_warning_when_the_user_wrote_before_it(
    manager: SessionManager, lifecycle: Lifecycle, calls: Calls, clock: FakeClock
) -> None:
    await say(manager)
    clock.advance(200)
    await say(manager)  # moves warn_at to +440
    clock.advance(50)  # +250: past the first warn time
    await lifecycle.run_once()
    assert calls.warnings == []
    clock.advance(190)  # +440
    await lifecycle.run_once()
    assert len(calls.warnings) == 1 and calls.warnings[0][1].due_at == T0 + 440


async def test_message_after_the_warning_cancels_the_expiry(
    manager: SessionManager, lifecycle: Lifecycle, calls: Calls, clock: FakeClock
) -> None:
    await say(manager)
    clock.advance(240)
    await lifecycle.run_once()
    assert len(calls.warnings) == 1
    clock.advance(30)
    await say(manager, text="still here")  # at +270
    clock.advance(40)  # +310: the old deadline has passed
    report = await lifecycle.run_once()
    assert report.expired == 0 and calls.expiries == []
    record = await manager.get(KEY)
    assert record is not None and record.status is Status.ACTIVE
    assert record.expires_at == T0 + 570 and record.warn_at == T0 + 510
    clock.advance(200)  # +510: a new silence gets a new warning
    await lifecycle.run_once()
    assert len(calls.warnings) == 2


async def test_expiry_notifies_closes_and_records_the_reason(
    manager: SessionManager, lifecycle: Lifecycle, calls: Calls, clock: FakeClock
) -> None:
    seen: list[ev.Event] = []
    manager.events.on("*", seen.append)
    first = await say(manager)
    clock.advance(240)
    await lifecycle.run_once()
    clock.advance(60)
    report = await lifecycle.run_once()
    assert report.expired == 1
    assert [(k, d.kind, d.due_at, d.late) for k, d in calls.expiries] == [
        (str(KEY), "expire", T0 + 300, False)
    ]
    assert [(k, r) for k, r, _ in calls.closes] == [(str(KEY), "timeout")]
    record = await manager.store.load_by_id(first.id)
    assert record is not None
    assert (record.status, record.close_reason, record.closed_at) == (
        Status.EXPIRED, "timeout", T0 + 300
    )
    assert record.expires_at is None and record.purge_at == T0 + 300 + 3600
    assert names(seen, ev.TIMEOUT_WARNED, ev.SESSION_EXPIRED, ev.SESSION_CLOSED) == [
        ev.TIMEOUT_WARNED, ev.SESSION_CLOSED, ev.SESSION_EXPIRED
    ]
    assert len(names(seen, ev.LIFECYCLE_LAG)) == 2
    clock.advance(1000)
    assert (await lifecycle.run_once()).expired == 0
    assert len(calls.expiries) == 1 and len(calls.closes) == 1
    # the next message starts a new session
    second = await say(manager)
    assert second.id != first.id and second.created


async def test_timers_that_fell_due_while_no_runner_ran_fire_late_with_their_due_time(
    manager: SessionManager, lifecycle: Lifecycle, calls: Calls, clock: FakeClock
) -> None:
    for user in range(5):
        await say(manager, SessionKey.user("telegram", user))
    clock.advance(3 * 3600)  # every runner was down for hours
    report = await lifecycle.run_once()
    assert report.expired == 5
    assert calls.warnings == []  # too late to warn: only the expiry is reported
    for _, due in calls.expiries:
        assert due.due_at == T0 + 300
        assert due.delay == pytest.approx(3 * 3600 - 300)


async def test_several_runners_on_one_store_fire_each_timer_once(
    store: MemoryStore, clock: FakeClock
) -> None:
    calls = Calls()
    managers = [SessionManager(store, clock=clock, policy=POLICY) for _ in range(3)]
    runners = [Lifecycle(m, batch_size=7, **calls.hooks()) for m in managers]
    for user in range(40):
        await say(managers[user % 3], SessionKey.user("telegram", user))
    clock.advance(240)
    await asyncio.gather(*(r.run_once() for r in runners for _ in range(4)))
    clock.advance(60)
    await asyncio.gather(*(r.run_once() for r in runners for _ in range(4)))
    assert sorted(k for k, _ in calls.warnings) == sorted(
        str(SessionKey.user("telegram", u)) for u in range(40)
    )
    assert len({k for k, _ in calls.expiries}) == 40 and len(calls.expiries) == 40


async def test_late_expiry_on_a_message_notifies_once_and_never_accepts_the_message(
    manager: SessionManager, lifecycle: Lifecycle, calls: Calls, clock: FakeClock
) -> None:
    first = await say(manager)
    clock.advance(400)  # past the deadline; no runner round happened
    second = await say(manager, text="hello again")
    assert second.id != first.id and second.created
    assert [(d.kind, d.late, d.due_at) for _, d in calls.expiries] == [
        ("expire", True, T0 + 300)
    ]
    assert [r for _, r, _ in calls.closes] == ["timeout"]
    old = await manager.store.load_by_id(first.id)
    assert old is not None and old.status is Status.EXPIRED
    assert old.counters.messages == 1  # the late message went to the new session
    history = await manager.store.read_tail(old.ref, 10)
    assert [m.text for m in history] == ["hi"]
    await lifecycle.run_once()
    assert len(calls.expiries) == 1  # the runner finds nothing left to expire
    assert lifecycle.counters["expired_late"] == 1


async def test_handler_close_reaches_on_close_and_carry_over_fills_the_next_session(
    store: MemoryStore, clock: FakeClock
) -> None:
    policy = LifecyclePolicy(idle_timeout=300, carry_over=("language", "prefs"))
    manager = SessionManager(store, clock=clock, policy=policy)
    calls = Calls()
    Lifecycle(manager, **calls.hooks())
    async with manager.session(KEY) as s:
        s.data.update(language="es", prefs={"plastic": 3}, cart=["x"])
        s.close("goodbye")
    assert [(k, r, d) for k, r, d in calls.closes] == [(str(KEY), "goodbye", None)]
    async with manager.session(KEY) as s:
        assert s.created
        assert s.data == {"language": "es", "prefs": {"plastic": 3}}


async def test_a_failing_hook_is_counted_and_the_session_still_expires(
    manager: SessionManager, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(session: Session) -> None:
        raise RuntimeError("telegram is down")

    lifecycle = Lifecycle(manager, on_expire=broken)
    await say(manager)
    clock.advance(300)
    with caplog.at_level(logging.ERROR, logger="chatstate.lifecycle"):
        report = await lifecycle.run_once()
    assert report.expired == 1 and lifecycle.counters["hook_errors"] == 1
    record = await manager.get(KEY)
    assert record is not None and record.status is Status.EXPIRED
    assert "telegram is down" in caplog.text


async def test_purge_after_retention_deletes_the_session_and_its_history(
    manager: SessionManager, lifecycle: Lifecycle, clock: FakeClock
) -> None:
    seen: list[ev.Event] = []
    manager.events.on(ev.SESSION_PURGED, seen.append)
    first = await say(manager)
    async with manager.session(KEY) as s:
        s.close("completed")
    clock.advance(3599)
    assert (await lifecycle.run_once()).purged == 0
    assert await manager.store.load_by_id(first.id) is not None
    assert len(await manager.store.read_tail(first.record.ref, 10)) == 1
    clock.advance(1)
    assert (await lifecycle.run_once()).purged == 1
    assert await manager.store.load_by_id(first.id) is None
    assert await manager.store.read_tail(first.record.ref, 10) == []
    assert [(e.session_id, e.data["close_reason"]) for e in seen] == [(first.id, "completed")]


async def test_expired_sessions_are_purged_too_and_a_newer_session_survives(
    manager: SessionManager, lifecycle: Lifecycle, clock: FakeClock
) -> None:
    first = await say(manager)
    clock.advance(300)
    await lifecycle.run_once()  # expires at +300, purge at +3900
    clock.advance(3000)
    second = await say(manager)  # a new session of the same key
    clock.advance(600)
    assert (await lifecycle.run_once()).purged == 1
    assert await manager.store.load_by_id(first.id) is None
    current = await manager.get(KEY)
    assert current is not None and current.id == second.id


@pytest.mark.parametrize("cap", [500, 100_000])
async def test_memory_store_stays_bounded_under_one_time_users(clock: FakeClock, cap: int) -> None:
    evicted: list[ev.Event] = []
    store = MemoryStore(clock=clock, max_sessions=cap, on_evict=evicted.append)
    policy = LifecyclePolicy(idle_timeout=60, max_age=None, retention=60)
    manager = SessionManager(store, clock=clock, policy=policy)
    lifecycle = Lifecycle(manager, batch_size=1000)
    peak = 0
    for user in range(3000):  # 10 new users a second, each writes once and never again
        await say(manager, SessionKey.user("web", user))
        if user % 100 == 99:
            clock.advance(10)
            await lifecycle.run_once()
        peak = max(peak, len(store))
    # expiry (60 s) + retention (60 s) at 10 users/s keeps about 1,200 records; a smaller cap
    # evicts the least recently used ones instead
    assert peak <= min(cap, 1400)
    assert bool(evicted) == (cap < 1200)
    clock.advance(60)
    await lifecycle.run_once()  # the last ones expire
    clock.advance(60)
    await lifecycle.run_once()  # and are purged after retention
    assert len(store) == 0


async def test_restore_after_restart_calls_on_restore_once_per_interrupted_session(
    store: MemoryStore, clock: FakeClock
) -> None:
    before = SessionManager(store, clock=clock, policy=POLICY)
    for user in range(3):  # in a flow
        async with before.session(SessionKey.user("telegram", user)) as s:
            s.flow = FlowPosition(name="order", step="address")
    await say(before, SessionKey.user("telegram", 10))  # idle: nothing to restore
    clock.advance(60)  # the process was down for a minute

    calls = Calls()
    seen: list[ev.Event] = []
    runners = []
    for _ in range(2):  # two runners come up together
        manager = SessionManager(store, clock=clock, policy=POLICY)
        manager.events.on(ev.SESSION_RESTORED, seen.append)
        runners.append(Lifecycle(manager, poll_interval=0.01, **calls.hooks()))
    for runner in runners:
        await runner.start()
    for runner in runners:
        await runner.stop()
    assert sorted(k for k, _ in calls.restores) == [
        str(SessionKey.user("telegram", u)) for u in range(3)
    ]
    assert all(d.kind == "restore" and d.due_at == T0 for _, d in calls.restores)
    assert len(seen) == 3
    # started again without any user activity in between: nobody is told twice
    again = Lifecycle(SessionManager(store, clock=clock, policy=POLICY), **calls.hooks())
    assert await again.restore() == 0
    # a user who answers and is interrupted again is restored again on the next restart
    async with before.session(SessionKey.user("telegram", 0)):
        pass
    clock.advance(10)
    assert await again.restore() == 1


async def test_restore_ignores_sessions_older_than_the_window(
    manager: SessionManager, calls: Calls, clock: FakeClock
) -> None:
    async with manager.session(KEY) as s:
        s.flow = FlowPosition(name="order", step="qty")
    clock.advance(120)
    lifecycle = Lifecycle(manager, restore_window=60, **calls.hooks())
    assert await lifecycle.restore() == 0 and calls.restores == []


async def test_background_runner_fires_and_stops_gracefully(
    manager: SessionManager, calls: Calls, clock: FakeClock
) -> None:
    lifecycle = Lifecycle(manager, poll_interval=0.01, **calls.hooks())
    await say(manager)
    async with lifecycle:
        assert lifecycle.running
        clock.advance(300)
        for _ in range(500):
            if calls.expiries:
                break
            await asyncio.sleep(0.01)
    assert not lifecycle.running
    assert len(calls.expiries) == 1
    assert manager.active_locks == 0  # nothing left held


async def test_summary_lists_active_sessions_nearest_expiry_first(
    manager: SessionManager, lifecycle: Lifecycle, clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await say(manager, SessionKey.user("whatsapp", "5491234"))
    clock.advance(120)
    await say(manager, SessionKey.user("whatsapp", "5495678"))
    with caplog.at_level(logging.INFO, logger="chatstate.lifecycle"):
        summary = await lifecycle.log_summary()
    assert summary.active == 2
    assert [(s.key, s.age_seconds, s.remaining_seconds) for s in summary.sessions] == [
        ("whatsapp:user:5491234", 120, 180), ("whatsapp:user:5495678", 0, 300)
    ]
    lines = summary.lines()
    assert lines[0] == "active sessions: 2 (timeout: 5min)"
    assert lines[1] == "  - whatsapp:user:5491234: active for 2min, expires in 3min"
    assert "active sessions: 2" in caplog.text


async def test_metrics_report_counts_and_lag(
    manager: SessionManager, lifecycle: Lifecycle, clock: FakeClock
) -> None:
    await say(manager)
    clock.advance(245)
    await lifecycle.run_once()
    clock.advance(100)
    await lifecycle.run_once()
    metrics = lifecycle.metrics()
    assert metrics["warned"] == 1 and metrics["expired"] == 1
    assert metrics["lag_max_seconds"] == 45  # the expiry ran 45 s after its due time


async def test_hooks_may_take_fewer_arguments_and_load_from_a_mapping(
    manager: SessionManager, clock: FakeClock
) -> None:
    seen: list[str] = []
    hooks = load_hooks({"on_expire": lambda session: seen.append(session.id)})
    lifecycle = Lifecycle(manager, **hooks)
    first = await say(manager)
    clock.advance(300)
    await lifecycle.run_once()
    assert seen == [first.id]
