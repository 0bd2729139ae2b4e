"""aiogram 3 on chatstate: the BaseStorage contract, event isolation as the session, the
middleware and flow router, end to end through a real Dispatcher and Bot whose HTTP goes to the
fake Bot API server (updates fed as Telegram sends them, and by long polling)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import DataNotDictLikeError
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import DefaultKeyBuilder, StorageKey
from aiogram.types import Message
from examples import flows_registration
from fake_telegram import (
    BOT_ID,
    TOKEN,
    FakeTelegram,
    buttons,
    callback_update,
    payloads,
    text_update,
)

from chatstate.adapters.aiogram import (
    ChatstateEventIsolation,
    ChatstateMiddleware,
    ChatstateStorage,
    flow_router,
    session_key_for,
)
from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.model import Outgoing
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session
from chatstate.stores.memory import MemoryStore


class Form(StatesGroup):
    name = State()
    age = State()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(fake.base_url))
    client = Bot(TOKEN, session=session)
    try:
        yield client
    finally:
        await client.session.close()


def key(chat: int = 42, user: int = 42, **kw: Any) -> StorageKey:
    return StorageKey(bot_id=BOT_ID, chat_id=chat, user_id=user, **kw)


def test_key_mapping_is_explicit_and_one_to_one() -> None:
    assert str(session_key_for(key())) == f"telegram.{BOT_ID}:user_in_chat:42:42"
    full = StorageKey(bot_id=1, chat_id=-100, user_id=42, thread_id=7,
                      business_connection_id="bc:1 x", destiny="quiz game")
    assert str(session_key_for(full)) == (
        "telegram.1:user_in_chat:-100~t7~bbc%3A1%20x:42~dquiz%20game"
    )
    variants = {
        key(), key(destiny="other"), StorageKey(bot_id=2, chat_id=42, user_id=42),
        key(thread_id=5), key(business_connection_id="b"), key(chat=-1, user=42),
    }
    assert len({str(session_key_for(k)) for k in variants}) == len(variants)
    built = session_key_for(key(), key_builder=DefaultKeyBuilder(with_destiny=True))
    assert str(built) == f"telegram.{BOT_ID}:chat:fsm%3A42%3A42%3Adefault"


async def test_storage_contract() -> None:
    clock = FakeClock(start=1_700_000_000.0)
    manager = SessionManager(MemoryStore(), clock=clock,
                             policy=LifecyclePolicy(idle_timeout=600, max_age=None))
    storage = ChatstateStorage(manager)
    k = key()
    assert await storage.get_state(k) is None and await storage.get_data(k) == {}
    await storage.set_state(k, None)
    await storage.set_data(k, {})
    assert await manager.get(storage.session_key(k)) is None  # clearing creates nothing
    await storage.set_state(k, Form.name)
    assert await storage.get_state(k) == "Form:name"
    await storage.set_state(k, "custom")
    assert await storage.get_state(k) == "custom"
    await storage.set_data(k, {"a": [1]})
    data = await storage.get_data(k)
    data["a"].append(2)  # a copy: the stored data does not change
    assert await storage.get_data(k) == {"a": [1]}
    assert await storage.get_value(k, "a") == [1]
    assert await storage.get_value(k, "missing") is None
    assert await storage.get_value(k, "missing", 5) == 5
    assert await storage.update_data(k, {"b": 2}) == {"a": [1], "b": 2}
    with pytest.raises(DataNotDictLikeError):
        await storage.set_data(k, [("a", 1)])  # type: ignore[arg-type]
    # destinies and bots do not share
    other = key(destiny="quiz")
    assert await storage.get_state(other) is None
    await storage.set_state(other, Form.age)
    assert await storage.get_state(k) == "custom"
    assert await storage.get_state(StorageKey(bot_id=1, chat_id=42, user_id=42)) is None
    # an FSMContext over it
    ctx = FSMContext(storage=storage, key=k)
    await ctx.update_data(c=3)
    assert await ctx.get_data() == {"a": [1], "b": 2, "c": 3}
    await ctx.clear()
    assert await ctx.get_state() is None and await ctx.get_data() == {}
    # TTL: an idle session expires with the manager's policy
    await storage.set_state(k, Form.name)
    clock.advance(601)
    assert await storage.get_state(k) is None and await storage.get_data(k) == {}
    await storage.close()


async def test_fsm_form_through_dispatcher(bot: Bot, fake: FakeTelegram) -> None:
    manager = SessionManager(MemoryStore())
    storage = ChatstateStorage(manager)
    dp = Dispatcher(storage=storage, events_isolation=ChatstateEventIsolation(storage))
    dp.update.outer_middleware(ChatstateMiddleware(manager))
    router = Router()

    @router.message(Command("form"))
    async def start(message: Message, state: FSMContext, session: Session) -> None:
        await state.set_state(Form.name)
        session.data["started_by"] = "form"  # same session as the FSM's
        await message.answer("name?")

    @router.message(Form.name)
    async def name(message: Message, state: FSMContext) -> Outgoing:
        await state.update_data(name=message.text)
        await state.set_state(Form.age)
        return Outgoing(text="age?", keyboard=[["18", "30"]])  # sent after the commit

    @router.message(Form.age, F.text.isdigit())
    async def age(message: Message, state: FSMContext) -> list[Outgoing]:
        data = await state.update_data(age=int(message.text or 0))
        await state.set_state(None)
        return [Outgoing(text=f"{data['name']} is {data['age']}", remove_keyboard=True)]

    dp.include_router(router)
    for text in ("/form", "Ada", "36"):
        await dp.feed_raw_update(bot, text_update(text))
    assert fake.texts(42) == ["name?", "age?", "Ada is 36"]
    assert fake.sent(42)[1].markup == {"keyboard": [[{"text": "18"}, {"text": "30"}]],
                                       "resize_keyboard": True, "one_time_keyboard": False}
    assert fake.sent(42)[2].markup == {"remove_keyboard": True}
    record = await manager.get(f"telegram.{BOT_ID}:user_in_chat:42:42")
    assert record is not None and record.state is None
    assert record.data["name"] == "Ada" and record.data["age"] == 36
    assert record.data["started_by"] == "form"
    assert record.counters.messages == 3  # one committed update per message


async def test_fifty_polled_updates_of_one_user_in_order(bot: Bot, fake: FakeTelegram) -> None:
    """Polling with handle_as_tasks (aiogram's default): updates run as concurrent tasks, the
    isolation serialises one user's, and nothing is lost."""
    manager = SessionManager(MemoryStore())
    storage = ChatstateStorage(manager)
    dp = Dispatcher(storage=storage, events_isolation=ChatstateEventIsolation(storage))
    running: dict[int, int] = {}
    overlaps: list[int] = []
    most = 0

    @dp.message()
    async def collect(message: Message, state: FSMContext) -> None:
        nonlocal most
        user = message.chat.id
        if running.get(user):
            overlaps.append(user)
        running[user] = running.get(user, 0) + 1
        most = max(most, sum(running.values()))
        await asyncio.sleep(0.001)
        seen = await state.get_value("seen", [])
        await state.update_data(seen=[*seen, message.text])
        running[user] -= 1
        await message.answer(f"{user}:{message.text}")

    for i in range(50):
        fake.pending.append(text_update(str(i), user_id=42))
        fake.pending.append(text_update(str(i), user_id=43))
    polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False,
                                                   close_bot_session=False))
    try:
        await fake.wait_for(100, "sendMessage", within=20)
    finally:
        await dp.stop_polling()
        await polling
    assert overlaps == [] and most > 1
    for user in (42, 43):
        data = await storage.get_data(StorageKey(bot_id=BOT_ID, chat_id=user, user_id=user))
        assert data["seen"] == [str(i) for i in range(50)]
        assert fake.texts(user) == [f"{user}:{i}" for i in range(50)]


async def test_flow_router_with_buttons(bot: Bot, fake: FakeTelegram) -> None:
    manager = SessionManager(MemoryStore())
    dp = Dispatcher()  # no chatstate storage: the middleware opens the session itself
    dp.update.outer_middleware(ChatstateMiddleware(manager, scope="user"))
    dp.include_router(flow_router(flows_registration.build_runner()))
    for text in ("/register", "Ada", "ada@example.com"):
        await dp.feed_raw_update(bot, text_update(text, user_id=5))
    confirm = fake.sent(5)[-1]
    assert buttons(confirm) == [["✅ Confirm", "✏️ Edit"]]
    await dp.feed_raw_update(bot, callback_update(payloads(confirm)["✅ Confirm"], user_id=5))
    assert fake.texts(5)[-2] == "✅ Registered Ada <ada@example.com>."
    assert len(fake.of("answerCallbackQuery")) == 1
    record = await manager.get(f"telegram.{BOT_ID}:user:5")
    assert record is not None and record.data["profile"]["email"] == "ada@example.com"
