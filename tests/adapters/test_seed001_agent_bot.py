"""Seed 001 end to end on Discord: gateway payloads into discord.py, the agent bot with the
offline model, its memory in the store (tool calls, errors, /reset, automatic summaries)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from examples import seed001_agent_bot as seed
from fake_discord import (
    DM_CHANNEL_ID,
    TOKEN,
    FakeDiscord,
    attachment,
    message_create,
    slash_command,
    user,
)

from chatstate.adapters.discord import DiscordAdapter
from chatstate.memory import Memory, MemoryConfig
from chatstate.model import SessionKey
from chatstate.stores.memory import MemoryStore

ADA = user("1600000000000000001", "ada")
KEY = SessionKey.chat("discord", DM_CHANNEL_ID)


class Rig:
    def __init__(self, fake: FakeDiscord, client: discord.Client, bot: seed.AgentBot) -> None:
        self.fake, self.client, self.bot = fake, client, bot
        self.manager = bot.manager

    async def say(self, text: str, **kw: Any) -> str:
        before = len(self.fake.sent())
        self.client._connection.parse_message_create(
            message_create(text, author=ADA, **kw))  # type: ignore[arg-type]
        await self.fake.wait_sent(before + 1)
        return self.fake.sent()[-1].content or ""

    async def slash(self, name: str, text: str | None = None) -> str:
        before = len(self.fake.sent())
        self.client._connection.parse_interaction_create(
            slash_command(name, text, who=ADA))  # type: ignore[arg-type]
        await self.fake.wait_sent(before + 1)
        return self.fake.sent()[-1].content or ""


async def make_rig(fake: FakeDiscord, memory_config: MemoryConfig | None = None) -> Rig:
    manager = seed.build_manager(MemoryStore())
    memory = Memory(manager, config=memory_config or seed.MEMORY)
    bot = seed.AgentBot(manager, model=seed.OfflineModel(), memory=memory)
    client = discord.Client(intents=discord.Intents.default())
    DiscordAdapter(manager, bot, scope="channel").install(
        client, commands={"chat": "Talk", "reset": "Forget"})
    await client.login(TOKEN)
    return Rig(fake, client, bot)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    server = await FakeDiscord().start()
    monkeypatch.setattr(discord.http.Route, "BASE", server.api_base)
    yield server
    await server.stop()


@pytest.fixture
async def rig(fake: FakeDiscord) -> AsyncIterator[Rig]:
    r = await make_rig(fake)
    yield r
    await r.bot.memory.aclose()
    await r.client.close()


async def test_conversation_memory_tools_and_usage(rig: Rig) -> None:
    assert (await rig.say("my name is Ada")).startswith("You said: “my name is Ada”. "
                                                        "I remember 0 earlier")
    second = await rig.say("what did I say?")
    assert "I remember 1 earlier message(s), the last one was: “my name is Ada”" in second
    assert await rig.say("calculate 12*7") == "The result is 84."
    record = await rig.manager.get(KEY)
    assert record is not None
    assert record.counters.tool_calls == 1 and record.counters.messages == 3
    # one ledger entry per agent run (its model requests summed)
    assert record.usage.model_calls == 3 and record.usage.input_tokens > 0
    stored = await rig.manager.store.read_tail(record.ref, 50)
    roles = [m.role for m in stored]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant", "tool",
                     "assistant"]
    assert stored[6].text == "84" and stored[6].tool_call_id == (
        stored[5].tool_calls or [{}])[0]["id"]


async def test_attachments_are_kept_with_the_users_message(rig: Rig) -> None:
    reply = await rig.say("look", attachments=[attachment("report.pdf", "application/pdf")])
    assert "[attachments: report.pdf]" in reply
    record = await rig.manager.get(KEY)
    assert record is not None
    [user_message, _] = await rig.manager.store.read_tail(record.ref, 10)
    assert user_message.metadata["attachments"][0]["name"] == "report.pdf"


async def test_reset_forgets_the_conversation(rig: Rig) -> None:
    await rig.say("remember the number 42")
    assert (await rig.slash("reset")).startswith("🔄 Conversation reset")
    assert "I remember 0 earlier" in await rig.say("what number?")
    record = await rig.manager.get(KEY)
    assert record is not None
    stored = await rig.manager.store.read_tail(record.ref, 50)
    assert stored[0].text == "what number?"  # nothing from before the reset


async def test_errors_are_recorded_and_repeated_errors_reset(rig: Rig) -> None:
    await rig.say("hello")
    assert (await rig.say("fail please")).startswith("⚠️ Sorry")
    record = await rig.manager.get(KEY)
    assert record is not None and record.counters.errors == 1
    assert record.counters.last_seq == 2  # the failed turn left nothing in the history
    await rig.say("fail again")
    reset = await rig.say("fail once more")
    assert "Too many errors" in reset
    record = await rig.manager.get(KEY)
    assert record is not None and record.counters.errors == 3


async def test_long_conversations_are_summarised(fake: FakeDiscord) -> None:
    rig = await make_rig(fake, MemoryConfig(token_limit=600, min_messages=6,
                                            summary_max_tokens=150))
    for i in range(12):
        await rig.say(f"fact number {i}: " + "the quick brown fox " * 6)
        await rig.bot.memory.wait_idle()
    summaries = await rig.bot.memory.summaries(KEY)
    assert summaries and summaries[0].start_seq == 1
    last = await rig.say("and what do you remember?")
    assert "(and a summary of older ones)" in last
    await rig.bot.memory.aclose()
    await rig.client.close()


async def test_chat_slash_command(rig: Rig) -> None:
    assert (await rig.slash("chat", "hello from a slash command")).startswith(
        "You said: “hello from a slash command”")
