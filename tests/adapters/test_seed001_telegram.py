"""Seed 001 end to end on Telegram: Bot API updates into python-telegram-bot, the agent bot with
the offline model, one session per chat, its memory in the store, /reset."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from examples import seed001_agent_bot as seed
from fake_telegram import TOKEN, FakeTelegram, text_update
from telegram import Update

from chatstate.model import SessionKey
from chatstate.stores.memory import MemoryStore

GROUP = -100777


@pytest.fixture
async def telegram() -> AsyncIterator[tuple[FakeTelegram, Any, seed.AgentBot]]:
    async with FakeTelegram() as fake:
        manager = seed.build_manager(MemoryStore())
        bot = seed.AgentBot(manager)
        app = seed.build_telegram_application(
            TOKEN, manager, bot, base_url=f"{fake.base_url}/bot"
        )
        await app.initialize()
        try:
            yield fake, app, bot
        finally:
            await app.shutdown()
            await bot.memory.aclose()


async def say(fake: FakeTelegram, app: Any, text: str, *, user_id: int) -> list[str]:
    before = len(fake.sent(GROUP))
    await app.process_update(Update.de_json(text_update(text, user_id=user_id, chat_id=GROUP),
                                            app.bot))
    return [c.text or "" for c in fake.sent(GROUP)[before:]]


async def test_one_session_per_chat_with_tools_memory_and_reset(
    telegram: tuple[FakeTelegram, Any, seed.AgentBot],
) -> None:
    fake, app, bot = telegram
    assert await say(fake, app, "calculate 12*7", user_id=1) == ["The result is 84."]
    # a second member of the group talks to the same chat session
    await say(fake, app, "hello there", user_id=2)
    key = SessionKey.chat("telegram", GROUP)
    record = await bot.manager.get(key)
    assert record is not None
    assert record.counters.messages == 2 and record.counters.tool_calls == 1
    stored = await bot.manager.store.read_tail(record.ref, 50)
    assert [m.role for m in stored][:4] == ["user", "assistant", "tool", "assistant"]
    assert stored[0].text == "calculate 12*7"

    replies = await say(fake, app, "/reset", user_id=1)
    assert replies and "reset" in replies[0].lower()
    record = await bot.manager.get(key)
    assert record is not None
    assert await bot.manager.store.count_messages(record.ref) == 0
