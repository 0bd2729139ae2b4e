"""One bot process for the multi-process Redis test: a python-telegram-bot bot or an aiogram bot,
both on chatstate with a RedisStore, each talking to its own fake Bot API server.

    python telegram_bot_proc.py ptb|aiogram REDIS_URL PREFIX

It prints ``ready`` and then reads commands from stdin, one per line: ``<text>`` feeds a text
message from user 42 as Telegram would send it and prints the JSON list of texts the bot sent
back; ``quit`` stops. The PTB bot uses `ChatstatePersistence` (user_data) and a
`TelegramAdapter` keyed exactly like aiogram's FSM session of the same user, so the two
frameworks share one chatstate session.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_telegram import BOT_ID, TOKEN, FakeTelegram, text_update

from chatstate.engine import SessionManager
from chatstate.model import Incoming, SessionKey
from chatstate.session import Session
from chatstate.stores.redis import RedisStore

FSM_PLATFORM = f"telegram.{BOT_ID}"  # what aiogram's storage key maps to


async def run_ptb(store: RedisStore, fake: FakeTelegram) -> Any:
    from telegram import Update
    from telegram.ext import ApplicationBuilder, CommandHandler

    from chatstate.adapters.telegram import TelegramAdapter
    from chatstate.adapters.telegram_persistence import ChatstatePersistence

    manager = SessionManager(store)
    app = (
        ApplicationBuilder().token(TOKEN).base_url(f"{fake.base_url}/bot").updater(None)
        .persistence(ChatstatePersistence(manager, update_interval=3600)).build()
    )

    async def note(update: Update, context: Any) -> None:
        notes = [*context.user_data.get("notes", []), " ".join(context.args or [])]
        context.user_data["notes"] = notes
        assert update.effective_message is not None
        await update.effective_message.reply_text(f"notes={notes}")

    async def shared(session: Session, incoming: Incoming) -> str:
        if incoming.command == "advance":
            session.state = "Form:age"
            session.data["from_ptb"] = True
        visible = {k: v for k, v in session.data.items() if not k.startswith("_")}
        return f"ptb sees state={session.state} data={json.dumps(visible, sort_keys=True)}"

    adapter = TelegramAdapter(
        manager, shared,
        key_for=lambda i: SessionKey.user_in_chat(FSM_PLATFORM, i.chat_id, i.user_id),
    )
    app.add_handler(CommandHandler("note", note))
    app.add_handler(CommandHandler(["peek", "advance"], adapter))
    await app.initialize()

    async def feed(text: str) -> None:
        await app.process_update(Update.de_json(text_update(text), app.bot))
        await app.update_persistence()  # what PTB does every update_interval

    return feed, app.shutdown


async def run_aiogram(store: RedisStore, fake: FakeTelegram) -> Any:
    from aiogram import Bot, Dispatcher
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from aiogram.filters import Command
    from aiogram.fsm.context import FSMContext
    from aiogram.fsm.state import State, StatesGroup
    from aiogram.types import Message

    from chatstate.adapters.aiogram import ChatstateEventIsolation, ChatstateStorage

    class Form(StatesGroup):
        name = State()
        age = State()

    storage = ChatstateStorage(SessionManager(store))
    dp = Dispatcher(storage=storage, events_isolation=ChatstateEventIsolation(storage))
    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(fake.base_url)))

    @dp.message(Command("form"))
    async def form(message: Message, state: FSMContext) -> None:
        await state.set_state(Form.name)
        await state.update_data(name="Ada")
        await message.answer("form started")

    @dp.message(Form.age)
    async def age(message: Message, state: FSMContext) -> None:
        data = await state.get_data()
        await state.clear()
        await message.answer(f"aiogram sees age state, from_ptb={data.get('from_ptb')}")

    async def feed(text: str) -> None:
        await dp.feed_raw_update(bot, text_update(text))

    async def stop() -> None:
        await bot.session.close()

    return feed, stop


async def main(kind: str, url: str, prefix: str) -> None:
    store = RedisStore.from_url(url, prefix=prefix)
    await store.open()
    fake = await FakeTelegram().start()
    feed, stop = await (run_ptb if kind == "ptb" else run_aiogram)(store, fake)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        fake.clear()
        await feed(line)
        print(json.dumps(fake.texts(42)), flush=True)
    await stop()
    await fake.stop()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
