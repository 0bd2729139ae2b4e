"""The platform-neutral BotRuntime: keys, ordering, busy policies, errors and reset, degraded
mode, and lifecycle notifications through a Notifier."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from examples import flows_booking, flows_registration

from chatstate.adapters.base import (
    REPLY_TO_FIELD,
    BotRuntime,
    ChatRef,
    LifecycleNotifier,
    open_session,
    scope_key,
)
from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.errors import ConfigurationError, StoreUnavailable
from chatstate.lifecycle import Lifecycle
from chatstate.model import Incoming, Outgoing, SessionKey, SessionRecord
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session
from chatstate.stores.memory import MemoryStore

T0 = 1_700_000_000.0


def msg(text: str, user: str = "7", chat: str | None = None, **kw: Any) -> Incoming:
    return Incoming.from_text(text, platform="telegram", user_id=user, chat_id=chat or user, **kw)


class FlakyStore(MemoryStore):
    """A memory store whose writes (or reads) can be made to fail like a lost connection."""

    fail_commits = False
    fail_loads = False

    async def commit(self, record: SessionRecord, **kw: Any) -> Any:
        if self.fail_commits:
            raise StoreUnavailable("connection refused (test)")
        return await super().commit(record, **kw)

    async def load(self, key: str) -> SessionRecord | None:
        if self.fail_loads:
            raise StoreUnavailable("connection refused (test)")
        return await super().load(key)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[ChatRef, Outgoing]] = []

    async def send(self, chat: ChatRef, outgoing: Outgoing) -> None:
        self.sent.append((chat, outgoing))


def test_scope_key_maps_every_scope() -> None:
    inc = Incoming(platform="telegram", user_id="7", chat_id="-100", thread_id="5")
    assert str(scope_key("user")(inc)) == "telegram:user:7"
    assert str(scope_key("chat")(inc)) == "telegram:chat:-100"
    assert str(scope_key("user_in_chat")(inc)) == "telegram:user_in_chat:-100:7"
    assert str(scope_key("thread")(inc)) == "telegram:thread:-100:5"
    no_thread = Incoming(platform="telegram", user_id="7", chat_id="-100")
    assert str(scope_key("thread")(no_thread)) == "telegram:chat:-100"
    with pytest.raises(ConfigurationError):
        scope_key("global_user")
    assert ChatRef.from_key("telegram:thread:-100:5") == ChatRef("telegram", "-100", "5")
    assert ChatRef.from_key("telegram:user_in_chat:-100:7") == ChatRef("telegram", "-100")


async def test_flow_runs_and_commits_before_replies() -> None:
    manager = SessionManager(MemoryStore())
    runtime = BotRuntime(manager, flows_registration.build_runner())
    first = await runtime.process(msg("/register"))
    assert first.ok and first.replies[0].text == "What is your name?"
    await runtime.process(msg("Ada"))
    record = await manager.get("telegram:user:7")
    assert record is not None and record.state == "awaiting_email"
    assert record.data[REPLY_TO_FIELD] == {"platform": "telegram", "chat": "7"}


async def test_updates_of_one_key_run_in_order_and_serially() -> None:
    manager = SessionManager(MemoryStore())
    running: set[str] = set()
    overlap: list[str] = []

    async def handler(session: Session, incoming: Incoming) -> str:
        key = str(session.key)
        if key in running:
            overlap.append(key)
        running.add(key)
        await asyncio.sleep(0)  # give the other tasks every chance to interleave
        session.data.setdefault("seen", []).append(incoming.text)
        running.discard(key)
        return f"got {incoming.text}"

    runtime = BotRuntime(manager, handler)
    results = await asyncio.gather(*(runtime.process(msg(str(i))) for i in range(50)))
    assert all(r.ok for r in results)
    assert overlap == []
    record = await manager.get("telegram:user:7")
    assert record is not None and record.data["seen"] == [str(i) for i in range(50)]


@pytest.mark.parametrize("policy", ["drop", "reply"])
async def test_busy_policies(policy: str) -> None:
    manager = SessionManager(MemoryStore())
    gate = asyncio.Event()

    async def slow(session: Session, incoming: Incoming) -> str:
        if incoming.text == "slow":
            await gate.wait()
        return "done"

    runtime = BotRuntime(manager, slow, busy=policy)  # type: ignore[arg-type]
    first = asyncio.create_task(runtime.process(msg("slow")))
    await asyncio.sleep(0.01)
    second = await runtime.process(msg("fast"))
    other_user = await runtime.process(msg("fast", user="8"))
    gate.set()
    assert (await first).replies[0].text == "done"
    assert other_user.ok
    if policy == "drop":
        assert second.outcome == "dropped" and second.replies == []
    else:
        assert second.outcome == "busy" and "Still working" in second.replies[0].text


async def test_store_unavailable_gives_fallback_and_writes_nothing() -> None:
    store = FlakyStore()
    manager = SessionManager(store)
    runtime = BotRuntime(manager, flows_registration.build_runner())
    await runtime.process(msg("/register"))
    store.fail_commits = True
    result = await runtime.process(msg("Ada"))
    assert result.outcome == "unavailable"
    assert "can't reach my memory" in result.replies[0].text
    store.fail_commits = False
    record = await manager.get("telegram:user:7")
    assert record is not None and record.state == "awaiting_name"  # nothing half-written
    store.fail_loads = True
    assert (await runtime.process(msg("Ada"))).outcome == "unavailable"
    store.fail_loads = False
    assert (await runtime.process(msg("Ada"))).replies[0].text.startswith("Nice, Ada")


async def test_repeated_flow_errors_reset_the_session() -> None:
    scheduler = flows_booking.Scheduler()
    clock = FakeClock(start=T0)
    manager = SessionManager(MemoryStore(), clock=clock, max_consecutive_errors=3)
    runtime = BotRuntime(manager, flows_booking.build_runner(scheduler))
    for text in ("/book", "Hair", "Haircut", "Marta"):
        assert (await runtime.process(msg(text))).ok
    scheduler.broken = True
    outcomes = [(await runtime.process(msg("tomorrow"))).outcome for _ in range(3)]
    assert outcomes == ["error", "error", "reset"]
    record = await manager.get("telegram:user:7")
    assert record is not None and record.flow is None and record.counters.errors == 3
    scheduler.broken = False
    again = await runtime.process(msg("/book"))
    assert again.ok and again.replies[0].text.startswith("What would you like to book?")


async def test_a_raising_handler_gets_an_apology() -> None:
    manager = SessionManager(MemoryStore())

    async def broken(session: Session, incoming: Incoming) -> str:
        session.data["half"] = True
        raise RuntimeError("boom")

    result = await BotRuntime(manager, broken).process(msg("hi"))
    assert result.outcome == "error" and "went wrong" in result.replies[0].text
    record = await manager.get("telegram:user:7")
    assert record is None or "half" not in record.data


async def test_handler_sees_its_open_session() -> None:
    manager = SessionManager(MemoryStore())
    seen: list[bool] = []
    later = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def after_the_update(key: SessionKey) -> None:
        await later.wait()
        seen.append(open_session(key) is None)  # committed: no longer handed out

    async def handler(session: Session, incoming: Incoming) -> None:
        seen.append(open_session(session.key) is session)
        tasks.append(asyncio.create_task(after_the_update(session.key)))

    await BotRuntime(manager, handler).process(msg("hi"))
    later.set()
    await asyncio.gather(*tasks)
    assert seen == [True, True] and open_session("telegram:user:7") is None


async def test_lifecycle_notifications_reach_the_chat() -> None:
    clock = FakeClock(start=T0)
    policy = LifecyclePolicy(idle_timeout=600, warn_before=120, max_age=None)
    manager = SessionManager(MemoryStore(), clock=clock, policy=policy)
    recorder = Recorder()
    notifier = LifecycleNotifier(recorder)
    lifecycle = Lifecycle(manager, **notifier.hooks())
    runtime = BotRuntime(manager, flows_registration.build_runner(), key_for="user_in_chat")
    await runtime.process(msg("/register", chat="-100"))
    clock.advance(481)
    await lifecycle.run_once()
    clock.advance(120)
    await lifecycle.run_once()
    await lifecycle.run_once()  # nothing due twice
    texts = [o.text for _, o in recorder.sent]
    assert [c for c, _ in recorder.sent] == [ChatRef("telegram", "-100")] * 2
    assert "expire in 2 minute(s)" in texts[0]
    assert texts[1].startswith("⌛ Your session expired")
    # A session closed by an operator is announced; one completed by the bot is not.
    await runtime.process(msg("/register", chat="-100"))
    await manager.update(SessionKey.user_in_chat("telegram", "-100", "7"),
                         lambda s: s.close("admin"), message=False)
    assert recorder.sent[-1][1].text == "This conversation was closed by an operator."
    lifecycle.detach()


async def test_restore_notice_and_failing_notifier() -> None:
    clock = FakeClock(start=T0)
    manager = SessionManager(MemoryStore(), clock=clock)
    runtime = BotRuntime(manager, flows_registration.build_runner())
    await runtime.process(msg("/register"))

    class Broken:
        async def send(self, chat: ChatRef, outgoing: Outgoing) -> None:
            raise ConnectionError("blocked by the user")

    recorder = Recorder()
    clock.advance(5)
    lifecycle = LifecycleNotifier(recorder).attach(Lifecycle(manager))
    assert await lifecycle.restore() == 1
    assert recorder.sent[0][1].text.startswith("🔄 The bot was restarted")
    lifecycle.detach()
    broken = LifecycleNotifier(Broken())
    record = await manager.get("telegram:user:7")
    assert record is not None
    # a failing send is counted, never raised
    await broken.on_restore(Session(record, key=SessionKey.user("telegram", 7)), _due())
    assert broken.failures == 1
    with pytest.raises(ConfigurationError):
        LifecycleNotifier(object())  # type: ignore[arg-type]


def _due() -> Any:
    from chatstate.lifecycle import Due

    return Due(kind="restore", key="telegram:user:7", session_id="x", due_at=T0, fired_at=T0)
