"""Engine behaviour on the in-memory store with a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import msgspec
import pytest

from chatstate import events as ev
from chatstate.clock import FakeClock
from chatstate.engine import SessionBusy, SessionManager
from chatstate.errors import ConflictError
from chatstate.model import Message, SessionKey, Status
from chatstate.policy import LifecyclePolicy
from chatstate.stores.memory import MemoryStore

KEY = SessionKey.user("telegram", 42)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_000_000.0)


@pytest.fixture
def manager(clock: FakeClock) -> SessionManager:
    return SessionManager(MemoryStore(), clock=clock, defaults={"language": "en", "cart": []})


def recorder(manager: SessionManager) -> list[ev.Event]:
    seen: list[ev.Event] = []
    manager.events.on("*", seen.append)
    return seen


async def test_new_session_starts_complete_and_is_committed(
    manager: SessionManager, clock: FakeClock
) -> None:
    seen = recorder(manager)
    async with manager.session(KEY) as s:
        assert s.created and s.data == {"language": "en", "cart": []}
        assert s.counters.messages == 1
        s.data["cart"].append("apple")
    record = await manager.get(KEY)
    assert record is not None
    assert record.version == 1 and record.data["cart"] == ["apple"]
    assert record.last_activity == clock.now()
    assert record.expires_at == clock.now() + 30 * 60
    assert [e.name for e in seen][:2] == [ev.SESSION_CREATED, ev.SESSION_COMMITTED]


async def test_defaults_are_fresh_copies_and_filled_in_on_load(clock: FakeClock) -> None:
    store = MemoryStore()
    first = SessionManager(store, clock=clock, defaults={"cart": []})
    async with first.session(KEY) as s:
        s.data["cart"].append(1)
    async with first.session(SessionKey.user("telegram", 43)) as s:
        assert s.data["cart"] == []
    # A later deploy adds a default: old sessions get it on their next load.
    second = SessionManager(store, clock=clock, defaults={"cart": [], "theme": "dark"})
    async with second.session(KEY) as s:
        assert s.data == {"cart": [1], "theme": "dark"}


@dataclasses.dataclass
class Profile:
    name: str = ""
    visits: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)


class Settings(msgspec.Struct):
    lang: str = "es"


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        (Profile, {"name": "", "visits": 0, "tags": []}),
        (Settings, {"lang": "es"}),
        (lambda: {"n": 0}, {"n": 0}),
    ],
)
async def test_typed_defaults(defaults: Any, expected: dict[str, Any], clock: FakeClock) -> None:
    manager = SessionManager(MemoryStore(), clock=clock, defaults=defaults)
    async with manager.session(KEY) as s:
        assert s.data == expected


async def test_exception_rolls_back_and_records_the_error(manager: SessionManager) -> None:
    async with manager.session(KEY) as s:
        s.data["name"] = "Ada"
    seen = recorder(manager)
    with pytest.raises(RuntimeError, match="boom"):
        async with manager.session(KEY) as s:
            s.data["name"] = "half-written"
            s.append(Message(role="user", content="lost"))
            raise RuntimeError("boom")
    record = await manager.get(KEY)
    assert record is not None
    assert record.data["name"] == "Ada"
    assert record.counters.errors == 1 and record.counters.consecutive_errors == 1
    assert record.last_error == "RuntimeError: boom"
    assert await manager.store.count_messages(record.ref) == 0
    assert ev.SESSION_ERROR in [e.name for e in seen]


async def test_consecutive_errors_reset_the_session(clock: FakeClock) -> None:
    manager = SessionManager(
        MemoryStore(), clock=clock, keep_on_reset=("language",), max_consecutive_errors=3
    )
    async with manager.session(KEY) as s:
        s.data.update(language="pt", booking={"step": 3})
        s.state = "booking"
        session_id = s.id
    seen = recorder(manager)
    for _ in range(3):
        with pytest.raises(ValueError):
            async with manager.session(KEY):
                raise ValueError("bad")
    record = await manager.get(KEY)
    assert record is not None
    assert record.id == session_id  # reset keeps the session, clears the operation
    assert record.state is None and record.data == {"language": "pt"}
    assert record.counters.consecutive_errors == 0 and record.counters.errors == 3
    resets = [e for e in seen if e.name == ev.SESSION_RESET]
    assert len(resets) == 1 and resets[0].data["reason"] == "errors"


async def test_success_clears_the_consecutive_error_count(manager: SessionManager) -> None:
    for _ in range(2):
        with pytest.raises(ValueError):
            async with manager.session(KEY):
                raise ValueError("bad")
    async with manager.session(KEY):
        pass
    record = await manager.get(KEY)
    assert record is not None and record.counters.consecutive_errors == 0


async def test_error_hook_can_handle_the_exception(clock: FakeClock) -> None:
    handled: list[str] = []

    async def on_error(session: Any, exc: BaseException) -> bool:
        handled.append(str(exc))
        return True

    manager = SessionManager(MemoryStore(), clock=clock, on_error=on_error)
    async with manager.session(KEY):
        raise KeyError("swallowed")
    assert handled == ["'swallowed'"]


async def test_no_write_when_nothing_changed(manager: SessionManager) -> None:
    async with manager.session(KEY) as s:
        s.data["x"] = 1
    seen = recorder(manager)
    async with manager.session(KEY, message=False) as s:
        _ = s.data["x"]
    record = await manager.get(KEY)
    assert record is not None and record.version == 1
    assert ev.SESSION_COMMITTED not in [e.name for e in seen]
    async with manager.session(KEY, message=False) as s:
        s.data["x"] = 2
    record = await manager.get(KEY)
    assert record is not None and record.version == 2


async def test_updates_of_one_key_never_interleave(manager: SessionManager) -> None:
    order: list[tuple[int, str]] = []

    async def handle(i: int) -> None:
        async with manager.session(KEY) as s:
            order.append((i, "in"))
            value = s.data.get("n", 0)
            await asyncio.sleep(0)  # a real handler awaits: others must still wait
            s.data["n"] = value + 1
            order.append((i, "out"))

    await asyncio.gather(*(handle(i) for i in range(50)))
    record = await manager.get(KEY)
    assert record is not None and record.data["n"] == 50
    # strictly nested in/out pairs, in submission order (FIFO)
    assert order == [(i, tag) for i in range(50) for tag in ("in", "out")]


async def test_lock_map_does_not_grow_with_users(manager: SessionManager) -> None:
    async def touch(user: int) -> None:
        async with manager.session(SessionKey.user("telegram", user)) as s:
            s.data["seen"] = True

    await asyncio.gather(*(touch(u) for u in range(2000)))
    for u in range(200):
        await touch(u)
    assert manager.active_locks == 0


async def test_busy_session_times_out(clock: FakeClock) -> None:
    manager = SessionManager(MemoryStore(), clock=clock, lock_timeout=0.05, busy="reply")
    entered = asyncio.Event()
    release = asyncio.Event()

    async def long_handler() -> None:
        async with manager.session(KEY):
            entered.set()
            await release.wait()

    task = asyncio.create_task(long_handler())
    await entered.wait()
    with pytest.raises(SessionBusy) as info:
        async with manager.session(KEY):
            pass
    assert info.value.policy == "reply"
    release.set()
    await task
    assert manager.active_locks == 0


async def test_update_retries_a_conflicting_commit(manager: SessionManager) -> None:
    async with manager.session(KEY) as s:
        s.data["n"] = 0
    calls = 0

    async def increment(session: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # another process commits between our load and our commit
            other = await manager.store.load(str(KEY))
            assert other is not None
            other.data["n"] = 100
            expected = other.version
            other.version = expected + 1
            await manager.store.commit(other, expected=expected)
        session.data["n"] += 1
        return int(session.data["n"])

    assert await manager.update(KEY, increment) == 101
    assert calls == 2


async def test_conflict_without_retry_raises_and_keeps_newer_data(manager: SessionManager) -> None:
    async with manager.session(KEY) as s:
        s.data["n"] = 0
    with pytest.raises(ConflictError):
        async with manager.session(KEY) as s:
            other = await manager.store.load(str(KEY))
            assert other is not None
            other.data["n"] = 7
            other.version += 1
            await manager.store.commit(other, expected=other.version - 1)
            s.data["n"] = 1
    record = await manager.get(KEY)
    assert record is not None and record.data["n"] == 7


async def test_reset_keeps_id_creation_and_chosen_fields(
    manager: SessionManager, clock: FakeClock
) -> None:
    async with manager.session(KEY) as s:
        s.data.update(language="es", booking={"service": "cut"}, phone="+1")
        s.state = "confirm"
        session_id, created = s.id, s.created_at
    clock.advance(10)
    seen = recorder(manager)
    await manager.reset(KEY, keep=("phone",))
    record = await manager.get(KEY)
    assert record is not None
    assert (record.id, record.created_at) == (session_id, created)
    assert record.data == {"language": "en", "cart": [], "phone": "+1"}
    assert record.state is None
    assert ev.SESSION_RESET in [e.name for e in seen]


async def test_clear_removes_the_session_and_its_history(manager: SessionManager) -> None:
    async with manager.session(KEY) as s:
        s.append(Message(role="user", content="hi"))
        ref = s.record.ref
    assert await manager.clear(KEY) is True
    assert await manager.get(KEY) is None
    assert await manager.store.count_messages(ref) == 0
    async with manager.session(KEY) as s:
        assert s.created and s.id != ref.id


async def test_closed_session_is_replaced_with_carry_over(clock: FakeClock) -> None:
    policy = LifecyclePolicy(carry_over=("language",))
    manager = SessionManager(MemoryStore(), clock=clock, policy=policy)
    async with manager.session(KEY) as s:
        s.data.update(language="pt", order=[1, 2])
        s.close("goodbye")
        old_id = s.id
    closed = await manager.store.load_by_id(old_id)
    assert closed is not None and closed.status is Status.CLOSED
    assert closed.close_reason == "goodbye" and closed.purge_at is not None
    async with manager.session(KEY) as s:
        assert s.created and s.id != old_id
        assert s.data == {"language": "pt"}
    assert (await manager.store.load_by_id(old_id)) is not None  # old one kept until purged


async def test_message_after_the_deadline_starts_a_new_session(clock: FakeClock) -> None:
    manager = SessionManager(MemoryStore(), clock=clock, policy=LifecyclePolicy(idle_timeout=60))
    async with manager.session(KEY) as s:
        old_id = s.id
    clock.advance(61)
    seen = recorder(manager)
    async with manager.session(KEY) as s:
        assert s.created and s.id != old_id
    old = await manager.store.load_by_id(old_id)
    assert old is not None and old.status is Status.EXPIRED and old.close_reason == "timeout"
    expired = [e for e in seen if e.name == ev.SESSION_EXPIRED]
    assert len(expired) == 1 and expired[0].data["late"] is True


async def test_sliding_deadline_and_max_age(clock: FakeClock) -> None:
    policy = LifecyclePolicy(idle_timeout=100, max_age=250, warn_before=10)
    manager = SessionManager(MemoryStore(), clock=clock, policy=policy)
    async with manager.session(KEY) as s:
        start = s.created_at
    record = await manager.get(KEY)
    assert record is not None
    assert (record.expires_at, record.warn_at) == (start + 100, start + 90)
    clock.advance(90)
    async with manager.session(KEY):
        pass
    record = await manager.get(KEY)
    assert record is not None and record.expires_at == start + 190
    clock.advance(90)
    async with manager.session(KEY):
        pass
    record = await manager.get(KEY)
    assert record is not None and record.expires_at == start + 250  # capped by max_age


async def test_staged_history_commits_with_the_record(manager: SessionManager) -> None:
    async with manager.session(KEY) as s:
        s.append(Message(role="user", content="one"), Message(role="assistant", content="two"))
        ref = s.record.ref
    async with manager.session(KEY) as s:
        s.append(Message(role="user", content="three"))
    tail = await manager.store.read_tail(ref, 10)
    assert [(m.seq, m.content) for m in tail] == [(1, "one"), (2, "two"), (3, "three")]
    record = await manager.get(KEY)
    assert record is not None and record.counters.last_seq == 3


async def test_store_events_reach_the_managers_hooks(clock: FakeClock) -> None:
    manager = SessionManager(MemoryStore(max_sessions=2), clock=clock)
    seen = recorder(manager)
    for user in range(3):
        async with manager.session(SessionKey.user("telegram", user)):
            pass
    await asyncio.sleep(0)  # async hooks of a synchronous store event are scheduled
    assert ev.SESSION_EVICTED in [e.name for e in seen]


async def test_on_commit_runs_only_after_a_successful_commit(
    manager: SessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    key = SessionKey.user("cli", 77)
    seen: list[Any] = []

    async def stored_name() -> Any:
        record = await manager.get(key)
        return None if record is None else record.data.get("name")

    async with manager.session(key) as s:
        s.data["name"] = "Ada"
        s.on_commit(lambda: seen.append("committed"))
        assert seen == []  # not before the commit
    assert seen == ["committed"] and await stored_name() == "Ada"

    with pytest.raises(RuntimeError):
        async with manager.session(key) as s:
            s.data["name"] = "Bob"
            s.on_commit(lambda: seen.append("failed handler"))
            raise RuntimeError("boom")
    assert seen == ["committed"] and await stored_name() == "Ada"

    with pytest.raises(ConflictError):
        async with manager.session(key) as s:
            s.on_commit(lambda: seen.append("refused commit"))
            s.data["name"] = "Cy"
            stale = await manager.store.load(str(key))
            assert stale is not None
            stale.version += 1
            await manager.store.commit(stale, expected=stale.version - 1)  # a rival commit
    assert seen == ["committed"]

    async with manager.session(key, message=False) as s:  # nothing changes: no write
        s.on_commit(lambda: seen.append("no-op"))

    def broken() -> None:
        raise ValueError("callback bug")

    async with manager.session(key) as s:
        s.data["name"] = "Di"
        s.on_commit(broken)
        s.on_commit(lambda: seen.append("after the broken one"))
    assert seen == ["committed", "no-op", "after the broken one"]
    assert await stored_name() == "Di"  # the commit stands
    assert "on_commit callback" in caplog.text
