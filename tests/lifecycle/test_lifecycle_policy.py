"""LifecyclePolicy with a fake clock: sliding expiry, max age, extensions, overrides, env."""

from __future__ import annotations

import pytest

from chatstate import events as ev
from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.errors import ConfigurationError
from chatstate.flows.base import FlowTimeouts
from chatstate.model import FlowPosition, SessionKey, new_record
from chatstate.policy import (
    Extension,
    LifecyclePolicy,
    clear_timeouts,
    session_timeouts,
    set_timeouts,
)
from chatstate.stores.memory import MemoryStore

KEY = SessionKey.user("telegram", 7)
T0 = 1_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


def manager_with(clock: FakeClock, policy: LifecyclePolicy) -> SessionManager:
    return SessionManager(MemoryStore(clock=clock), clock=clock, policy=policy)


async def message(manager: SessionManager, key: SessionKey = KEY) -> None:
    async with manager.session(key):
        pass


async def test_sliding_expiry_moves_with_every_message(clock: FakeClock) -> None:
    manager = manager_with(clock, LifecyclePolicy(idle_timeout=300, max_age=None))
    await message(manager)
    record = await manager.get(KEY)
    assert record is not None and record.expires_at == T0 + 300
    clock.advance(200)
    await message(manager)
    record = await manager.get(KEY)
    assert record is not None and record.expires_at == T0 + 500
    assert record.warn_at is None  # no warning configured


async def test_max_age_caps_the_sliding_deadline(clock: FakeClock) -> None:
    manager = manager_with(clock, LifecyclePolicy(idle_timeout=300, max_age=1000))
    await message(manager)
    for _ in range(3):
        clock.advance(250)
        await message(manager)
    record = await manager.get(KEY)  # last message at T0+750: 300 s idle would be T0+1050
    assert record is not None and record.expires_at == T0 + 1000
    clock.advance(250)  # at the cap: the next message starts a new session
    first_id = record.id
    await message(manager)
    record = await manager.get(KEY)
    assert record is not None and record.id != first_id


async def test_extension_after_five_messages_seed_003(clock: FakeClock) -> None:
    policy = LifecyclePolicy(idle_timeout=300, max_age=None, extension=Extension(5, 120))
    manager = manager_with(clock, policy)
    extended: list[ev.Event] = []
    manager.events.on(ev.SESSION_EXTENDED, extended.append)
    for n in range(1, 8):
        await message(manager)
        record = await manager.get(KEY)
        assert record is not None
        expected = 300 + (120 if n > 5 else 0)
        assert record.expires_at == clock.now() + expected, n
    # announced once: when the sixth message earned the bonus, not on every later message
    assert len(extended) == 1 and extended[0].data["seconds"] == 120


def test_extension_rules_are_general() -> None:
    stepwise = Extension(after_messages=5, extra_seconds=60, every_messages=5,
                         max_extra_seconds=150)
    assert [stepwise.extra(n) for n in (5, 6, 10, 11, 16, 100)] == [0, 60, 60, 120, 150, 150]
    combined = LifecyclePolicy(extension=(Extension(2, 10), Extension(4, 5)))
    assert [combined.extra_seconds(n) for n in (2, 3, 5)] == [0, 10, 15]
    custom = LifecyclePolicy(extension=lambda messages: 2.0 * messages)
    assert custom.extra_seconds(10) == 20.0
    with pytest.raises(ConfigurationError):
        Extension(after_messages=-1)
    with pytest.raises(ConfigurationError):
        Extension(every_messages=0)


async def test_warning_time_is_set_before_the_deadline(clock: FakeClock) -> None:
    manager = manager_with(clock, LifecyclePolicy(idle_timeout=300, warn_before=60))
    await message(manager)
    record = await manager.get(KEY)
    assert record is not None and (record.warn_at, record.expires_at) == (T0 + 240, T0 + 300)
    # a warning longer than the timeout cannot be given: none is scheduled
    short = LifecyclePolicy(idle_timeout=30, warn_before=60)
    rec = new_record(KEY, T0)
    short.touch(rec, T0)
    assert rec.expires_at == T0 + 30 and rec.warn_at is None


async def test_per_session_override_wins_and_can_switch_warning_off(clock: FakeClock) -> None:
    manager = manager_with(clock, LifecyclePolicy(idle_timeout=300, warn_before=60))
    async with manager.session(KEY) as s:
        set_timeouts(s, idle_timeout=3600, warn_before=None, expiry_message="bye!")
    record = await manager.get(KEY)
    assert record is not None
    assert (record.expires_at, record.warn_at) == (T0 + 3600, None)
    assert manager.policy.effective(record).expiry_message == "bye!"
    assert session_timeouts(record)["idle_timeout"] == 3600
    async with manager.session(KEY) as s:
        clear_timeouts(s)
    record = await manager.get(KEY)
    assert record is not None and record.expires_at == T0 + 300
    with pytest.raises(ConfigurationError):
        set_timeouts(record, idle_timeout=-5)


class _Flow:
    def __init__(self, name: str, timeouts: FlowTimeouts | None) -> None:
        self.name = name
        self.timeouts = timeouts


async def test_flow_timeouts_apply_while_inside_the_flow(clock: FakeClock) -> None:
    checkout = _Flow("checkout", FlowTimeouts(idle_timeout=120, warn_before=30,
                                               expiry_message="Your cart was kept."))
    plain = _Flow("faq", None)
    policy = LifecyclePolicy(idle_timeout=600).with_flows(checkout, plain)
    manager = manager_with(clock, policy)
    async with manager.session(KEY) as s:
        s.flow = FlowPosition(name="checkout", step="address")
    record = await manager.get(KEY)
    assert record is not None
    assert (record.expires_at, record.warn_at) == (T0 + 120, T0 + 90)
    assert policy.effective(record).expiry_message == "Your cart was kept."
    async with manager.session(KEY) as s:
        set_timeouts(s, idle_timeout=50)  # the session's own override beats the flow's
    record = await manager.get(KEY)
    assert record is not None and record.expires_at == T0 + 50
    async with manager.session(KEY) as s:
        clear_timeouts(s)
        s.flow = None
    record = await manager.get(KEY)
    assert record is not None and (record.expires_at, record.warn_at) == (T0 + 600, None)


def test_from_env_reads_minutes_hours_days_and_the_seed_004_name() -> None:
    policy = LifecyclePolicy.from_env({
        "SESSION_TIMEOUT_MINUTES": "3", "CHATSTATE_WARN_BEFORE_MINUTES": "1",
        "CHATSTATE_MAX_AGE_HOURS": "2", "CHATSTATE_RETENTION_DAYS": "0.5",
    })
    assert (policy.idle_timeout, policy.warn_before, policy.max_age, policy.retention) == (
        180, 60, 7200, 43200
    )
    preferred = LifecyclePolicy.from_env(
        {"CHATSTATE_SESSION_TIMEOUT_MINUTES": "10", "SESSION_TIMEOUT_MINUTES": "3"}
    )
    assert preferred.idle_timeout == 600
    with pytest.raises(ConfigurationError, match="CHATSTATE_WARN_BEFORE_MINUTES"):
        LifecyclePolicy.from_env({"CHATSTATE_WARN_BEFORE_MINUTES": "soon"})
    with pytest.raises(ConfigurationError):
        LifecyclePolicy(idle_timeout=-1)
    with pytest.raises(ConfigurationError, match="tuple"):
        LifecyclePolicy(carry_over="language")  # type: ignore[arg-type]


def test_from_env_reads_the_extension_for_active_users() -> None:
    policy = LifecyclePolicy.from_env(
        {"CHATSTATE_SESSION_TIMEOUT_MINUTES": "5", "CHATSTATE_EXTEND_MINUTES": "2"}
    )
    assert policy.extension is not None
    assert policy.extra_seconds(5) == 0.0 and policy.extra_seconds(6) == 120.0
    custom = LifecyclePolicy.from_env(
        {"CHATSTATE_EXTEND_MINUTES": "1", "CHATSTATE_EXTEND_AFTER_MESSAGES": "2"}
    )
    assert custom.extra_seconds(3) == 60.0
    assert LifecyclePolicy.from_env({}).extension is None
