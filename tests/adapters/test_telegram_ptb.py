"""python-telegram-bot v22 adapter, end to end: real PTB Application, updates as Telegram sends
them (Update.de_json), the Bot API answered by a local fake server that records every call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from examples import flows_registration
from fake_telegram import (
    TOKEN,
    FakeTelegram,
    buttons,
    callback_update,
    payloads,
    text_update,
)
from telegram import Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CommandHandler,
    MessageHandler,
    filters,
)

from chatstate.adapters.telegram import FlowConversation, TelegramAdapter
from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.errors import StoreUnavailable
from chatstate.lifecycle import Lifecycle
from chatstate.model import Button, Incoming, Outgoing, SessionRecord
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session
from chatstate.stores.memory import MemoryStore

AnyApp = Application[Any, Any, Any, Any, Any, Any]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


def build_app(fake: FakeTelegram, *, concurrent: bool = True) -> AnyApp:
    return (
        ApplicationBuilder().token(TOKEN).base_url(f"{fake.base_url}/bot")
        .base_file_url(f"{fake.base_url}/file/bot").updater(None)
        .concurrent_updates(concurrent).build()
    )


@pytest.fixture
async def app(fake: FakeTelegram) -> AsyncIterator[AnyApp]:
    application = build_app(fake)
    await application.initialize()
    try:
        yield application
    finally:
        await application.shutdown()


async def feed(app: AnyApp, data: dict[str, Any]) -> None:
    await app.process_update(Update.de_json(data, app.bot))


async def test_registration_flow_with_inline_buttons(app: AnyApp, fake: FakeTelegram) -> None:
    manager = SessionManager(MemoryStore())
    TelegramAdapter(manager, flows_registration.build_runner()).install(app)
    assert fake.of("getMe")  # PTB asked the fake server who it is
    await feed(app, text_update("/register"))
    await feed(app, text_update("Ada Lovelace"))
    await feed(app, text_update("not-an-email"))
    await feed(app, text_update("ada@example.com"))
    confirm = fake.sent(42)[-1]
    assert confirm.text == "Confirm:\nName: Ada Lovelace\nEmail: ada@example.com"
    assert buttons(confirm) == [["✅ Confirm", "✏️ Edit"]]
    data = payloads(confirm)["✅ Confirm"]
    assert data.startswith("register@1") and len(data.encode()) <= 64
    await feed(app, callback_update(data, message_id=confirm_message_id(fake)))
    texts = fake.texts(42)
    assert texts[0] == "What is your name?"
    assert texts[1] == "Nice, Ada Lovelace! What is your email?"
    assert "email" in texts[2].lower()
    assert texts[-2] == "✅ Registered Ada Lovelace <ada@example.com>."
    assert len(fake.of("answerCallbackQuery")) == 1
    record = await manager.get("telegram:user:42")
    assert record is not None and record.flow is None
    assert record.data["profile"] == {"name": "Ada Lovelace", "email": "ada@example.com"}


def confirm_message_id(fake: FakeTelegram) -> int:
    return 1000 + len(fake.of("sendMessage")) - 1


@pytest.mark.parametrize(("scope", "expected"), [
    ("user", "telegram:user:42"),
    ("chat", "telegram:chat:-1001"),
    ("user_in_chat", "telegram:user_in_chat:-1001:42"),
    ("thread", "telegram:thread:-1001:77"),
])
async def test_session_key_follows_the_chosen_scope(
    app: AnyApp, fake: FakeTelegram, scope: str, expected: str
) -> None:
    manager = SessionManager(MemoryStore())
    keys: list[str] = []

    async def handler(session: Session, incoming: Incoming) -> str:
        keys.append(str(session.key))
        return "ok"

    TelegramAdapter(manager, handler, scope=scope).install(app)
    await feed(app, text_update("hello", chat_id=-1001, thread_id=77))
    assert keys == [expected]
    sent = fake.sent(-1001)[0]
    assert sent.params.get("message_thread_id") == 77  # replies stay in the forum topic


async def test_rendering_keyboards_removal_and_edits(app: AnyApp, fake: FakeTelegram) -> None:
    manager = SessionManager(MemoryStore())

    async def handler(session: Session, incoming: Incoming) -> list[Outgoing]:
        if incoming.payload == "next":
            return [Outgoing(text="Page 2", edit=True, buttons=[[Button(text="Back",
                                                                         payload="prev")]])]
        if incoming.text == "menu":
            return [Outgoing(text="Pick", keyboard=[["Apple", "Pear"], ["Cancel"]])]
        if incoming.text == "Cancel":
            return [Outgoing(text="Closed", remove_keyboard=True)]
        if incoming.text == "long":
            return [Outgoing(text="word " * 1000, buttons=[[Button(text="More", payload="m")]])]
        return [Outgoing(text="Page 1", buttons=[[Button(text="Next", payload="next"),
                                                  Button(text="Docs", url="https://example.com")]])]

    TelegramAdapter(manager, handler).install(app)
    await feed(app, text_update("start"))
    page1 = fake.sent(42)[-1]
    assert page1.markup == {"inline_keyboard": [[
        {"text": "Next", "callback_data": "next"}, {"text": "Docs", "url": "https://example.com"},
    ]]}
    await feed(app, callback_update("next", message_id=1000))
    edit = fake.of("editMessageText")[-1]
    assert edit.params["message_id"] == 1000 and edit.text == "Page 2"
    assert edit.markup == {"inline_keyboard": [[{"text": "Back", "callback_data": "prev"}]]}
    await feed(app, text_update("menu"))
    keyboard = fake.sent(42)[-1].markup or {}
    assert [[b["text"] for b in row] for row in keyboard["keyboard"]] == [["Apple", "Pear"],
                                                                          ["Cancel"]]
    assert keyboard["resize_keyboard"] is True
    await feed(app, text_update("Cancel"))
    assert fake.sent(42)[-1].markup == {"remove_keyboard": True}
    await feed(app, text_update("long"))  # 5000 characters: two messages, buttons on the last
    first, second = fake.sent(42)[-2:]
    assert len(first.text or "") <= 4096 and first.markup is None
    assert ((first.text or "") + " " + (second.text or "")).split() == ["word"] * 1000
    assert buttons(second) == [["More"]]


async def test_fifty_concurrent_updates_of_one_user_keep_order(fake: FakeTelegram) -> None:
    """With concurrent_updates PTB runs updates as parallel tasks; one user's still run one at
    a time and in order, while different users' overlap."""
    app = build_app(fake, concurrent=True)
    manager = SessionManager(MemoryStore())
    running: dict[str, int] = {}
    overlap_same_key: list[str] = []
    most_at_once = 0

    async def handler(session: Session, incoming: Incoming) -> str:
        nonlocal most_at_once
        key = str(session.key)
        if running.get(key):
            overlap_same_key.append(key)
        running[key] = running.get(key, 0) + 1
        most_at_once = max(most_at_once, sum(running.values()))
        await asyncio.sleep(0.001)
        session.data.setdefault("seen", []).append(incoming.text)
        running[key] -= 1
        return f"{session.key.ids[0]}:{incoming.text}"

    TelegramAdapter(manager, handler).install(app)
    async with app:
        for i in range(50):
            await app.update_queue.put(Update.de_json(text_update(str(i), user_id=42), app.bot))
            await app.update_queue.put(Update.de_json(text_update(str(i), user_id=43), app.bot))
        await app.start()
        await fake.wait_for(100, "sendMessage")
        await app.stop()
    assert overlap_same_key == []
    assert most_at_once > 1  # updates really ran concurrently (two users interleaved)
    for user_id in (42, 43):
        record = await manager.get(f"telegram:user:{user_id}")
        assert record is not None and record.data["seen"] == [str(i) for i in range(50)]
        assert fake.texts(user_id) == [f"{user_id}:{i}" for i in range(50)]


async def test_lifecycle_notifications_are_sent_with_the_bot(app: AnyApp, fake: FakeTelegram
                                                             ) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    policy = LifecyclePolicy(idle_timeout=300, warn_before=60, max_age=None)
    manager = SessionManager(MemoryStore(), clock=clock, policy=policy)
    adapter = TelegramAdapter(manager, flows_registration.build_runner(), scope="user_in_chat")
    adapter.install(app)
    lifecycle = Lifecycle(manager, **adapter.lifecycle_notifier(app.bot).hooks())
    await feed(app, text_update("/register", chat_id=-1001, thread_id=5))
    fake.clear()
    clock.advance(241)
    assert (await lifecycle.run_once()).warned == 1
    clock.advance(60)
    assert (await lifecycle.run_once()).expired == 1
    warning, expiry = fake.of("sendMessage")
    assert warning.chat_id == -1001 and warning.params["message_thread_id"] == 5
    assert "will expire in 1 minute(s)" in (warning.text or "")
    assert (expiry.text or "").startswith("⌛ Your session expired")
    lifecycle.detach()


async def test_with_session_callback_and_flow_conversation(app: AnyApp, fake: FakeTelegram
                                                           ) -> None:
    manager = SessionManager(MemoryStore())
    adapter = TelegramAdapter(manager, flows_registration.build_runner())

    async def noop(update: Update, context: Any) -> None:
        raise AssertionError("entry point callbacks are not called")

    app.add_handler(FlowConversation(adapter, entry_points={
        "register": MessageHandler(filters.Regex("^Sign me up$"), noop),
    }), group=-1)

    @adapter.with_session
    async def count(update: Update, context: Any, session: Session) -> str:
        session.data["count"] = session.data.get("count", 0) + 1
        return f"count={session.data['count']}"

    async def echo(update: Update, context: Any) -> None:
        assert update.effective_chat is not None and update.effective_message is not None
        await context.bot.send_message(update.effective_chat.id,
                                       f"echo {update.effective_message.text}")

    app.add_handler(CommandHandler("count", count))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    await feed(app, text_update("hello"))  # not in a flow: the bot's own handlers
    await feed(app, text_update("/count"))
    await feed(app, text_update("Sign me up"))  # entry point
    await feed(app, text_update("Ada"))  # inside the flow: only the flow sees it
    await feed(app, text_update("/cancel"))
    await feed(app, text_update("bye"))
    await feed(app, text_update("/count"))
    texts = fake.texts(42)
    assert texts[:4] == ["echo hello", "count=1", "What is your name?",
                         "Nice, Ada! What is your email?"]
    assert texts[4] == "❌ Cancelled: Register. Use /start to begin again."
    assert texts[-2:] == ["echo bye", "count=2"]


async def test_store_outage_answers_with_fallback(app: AnyApp, fake: FakeTelegram) -> None:
    class Down(MemoryStore):
        down = False

        async def commit(self, record: SessionRecord, **kw: Any) -> Any:
            if self.down:
                raise StoreUnavailable("redis: connection refused")
            return await super().commit(record, **kw)

    store = Down()
    manager = SessionManager(store)
    TelegramAdapter(manager, flows_registration.build_runner()).install(app)
    await feed(app, text_update("/register"))
    store.down = True
    await feed(app, text_update("Ada"))
    store.down = False
    assert "can't reach my memory" in fake.texts(42)[-1]
    record = await manager.get("telegram:user:42")
    assert record is not None and record.state == "awaiting_name"
    fake.fail_methods.add("sendMessage")  # a refused reply is logged; the update still commits
    await feed(app, text_update("Ada"))
    record = await manager.get("telegram:user:42")
    assert record is not None and record.state == "awaiting_email"
