"""ChatstatePersistence: PTB's BasePersistence contract on a chatstate store, through real PTB
Applications (one per "instance") talking to the fake Bot API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_telegram import TOKEN, FakeTelegram, text_update
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update, User
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CommandHandler,
    ConversationHandler,
    MessageHandler,
    PersistenceInput,
    filters,
)

from chatstate.adapters.telegram_persistence import ChatstatePersistence
from chatstate.engine import SessionManager
from chatstate.errors import InvalidDataError
from chatstate.stores.base import Store
from chatstate.stores.memory import MemoryStore

AnyApp = Application[Any, Any, Any, Any, Any, Any]
NAME, AGE = 0, 1


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


def build(fake: FakeTelegram, persistence: ChatstatePersistence) -> AnyApp:
    app: AnyApp = (
        ApplicationBuilder().token(TOKEN).base_url(f"{fake.base_url}/bot").updater(None)
        .persistence(persistence).arbitrary_callback_data(True).build()
    )

    async def remember(update: Update, context: Any) -> None:
        assert update.effective_message is not None and update.effective_user is not None
        text = update.effective_message.text or ""
        context.user_data["notes"] = [*context.user_data.get("notes", []), text]
        context.user_data["me"] = update.effective_user
        context.chat_data["count"] = context.chat_data.get("count", 0) + 1
        context.bot_data["total"] = context.bot_data.get("total", 0) + 1
        await update.effective_message.reply_text(
            f"notes={context.user_data['notes']}",
            reply_markup=InlineKeyboardMarkup([[InlineKeyboardButton(
                "again", callback_data={"note": text})]]),
        )

    async def start(update: Update, context: Any) -> int:
        assert update.effective_message is not None
        await update.effective_message.reply_text("name?")
        return NAME

    async def name(update: Update, context: Any) -> int:
        assert update.effective_message is not None
        await update.effective_message.reply_text("age?")
        return AGE

    async def age(update: Update, context: Any) -> int:
        assert update.effective_message is not None
        await update.effective_message.reply_text("done")
        return ConversationHandler.END

    app.add_handler(ConversationHandler(
        entry_points=[CommandHandler("signup", start)],
        states={NAME: [MessageHandler(filters.TEXT & ~filters.COMMAND, name)],
                AGE: [MessageHandler(filters.TEXT & ~filters.COMMAND, age)]},
        fallbacks=[], name="signup", persistent=True,
    ))
    app.add_handler(CommandHandler("note", remember))
    return app


async def feed(app: AnyApp, data: dict[str, Any]) -> None:
    await app.process_update(Update.de_json(data, app.bot))


async def test_data_and_conversations_survive_a_restart(fake: FakeTelegram) -> None:
    store: Store = MemoryStore()
    first = build(fake, ChatstatePersistence(SessionManager(store)))
    async with first:
        await feed(first, text_update("/note one", user_id=42))
        await feed(first, text_update("/note two", user_id=42))
        await feed(first, text_update("/signup", user_id=42))
        await feed(first, text_update("Ada", user_id=42))  # conversation now at AGE
        await first.update_persistence()
    manager = SessionManager(store)
    record = await manager.get("ptb:user:42")
    assert record is not None and record.data["user_data"]["notes"] == ["/note one", "/note two"]
    assert (await manager.get("ptb:chat:bot_data")) is not None

    second = build(fake, ChatstatePersistence(SessionManager(store)))
    async with second:  # a new process: everything comes back from the store
        assert second.user_data[42]["notes"] == ["/note one", "/note two"]
        me = second.user_data[42]["me"]
        assert isinstance(me, User) and me.id == 42 and me.get_bot() is second.bot
        assert second.chat_data[42]["count"] == 2
        assert second.bot_data["total"] == 2
        cache = second.bot.callback_data_cache  # type: ignore[attr-defined]
        assert len(cache.persistence_data[0]) == 2  # both keyboards' callback data
        fake.clear()
        await feed(second, text_update("33", user_id=42))  # continues at AGE
        assert fake.texts(42) == ["done"]


async def test_refresh_pulls_what_another_instance_wrote(fake: FakeTelegram) -> None:
    store = MemoryStore()
    a = build(fake, ChatstatePersistence(SessionManager(store)))
    b = build(fake, ChatstatePersistence(SessionManager(store)))
    async with a, b:
        await feed(a, text_update("/note from-a", user_id=7))
        await a.update_persistence()
        fake.clear()
        await feed(b, text_update("/note from-b", user_id=7))  # b refreshes before handling
        assert fake.texts(7) == ["notes=['/note from-a', '/note from-b']"]
        await b.update_persistence()
        await feed(a, text_update("/note again", user_id=7))
        assert fake.texts(7)[-1] == "notes=['/note from-a', '/note from-b', '/note again']"
        # a's own unflushed change is not overwritten by a refresh of unchanged data
        await feed(a, text_update("/note local", user_id=7))
        assert a.user_data[7]["notes"][-1] == "/note local"


async def test_drop_and_contract_details(fake: FakeTelegram) -> None:
    store = MemoryStore()
    persistence = ChatstatePersistence(
        SessionManager(store), store_data=PersistenceInput(callback_data=False),
        update_interval=5,
    )
    assert persistence.update_interval == 5
    app = build(fake, persistence)
    async with app:
        await feed(app, text_update("/note x", user_id=9))
        await app.update_persistence()
        stored = await persistence.get_user_data()
        assert stored[9]["notes"] == ["/note x"] and stored[9]["me"].id == 9
        app.drop_user_data(9)
        app.drop_chat_data(9)
        await app.update_persistence()
        assert await persistence.get_user_data() == {}
        assert await persistence.get_chat_data() == {}
        assert await persistence.get_callback_data() is None
        assert await persistence.get_conversations("nothing") == {}
        await persistence.update_conversation("odd name: x", (1, 2), "S")
        assert await persistence.get_conversations("odd name: x") == {(1, 2): "S"}
        await persistence.update_conversation("odd name: x", (1, 2), None)
        assert await persistence.get_conversations("odd name: x") == {}
        with pytest.raises(InvalidDataError, match="cannot be stored"):
            await persistence.update_user_data(9, {"bad": {1, 2}})


async def test_store_url_is_opened_and_closed_by_the_persistence(fake: FakeTelegram) -> None:
    persistence = ChatstatePersistence("memory://", platform="ptb.bot2")
    app = build(fake, persistence)
    async with app:
        await feed(app, text_update("/note y", user_id=5))
    # stop() flushed and closed the store it opened; the data had been written first
    assert persistence.manager.store is not None
