"""Discord adapter on the real discord.py: gateway payloads fed into the client's ConnectionState
parsers, REST calls answered by a local fake Discord API that records what the bot sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from examples import flows_order
from fake_discord import (
    BOT_ID,
    BOT_USER,
    DM_CHANNEL_ID,
    GUILD_ID,
    TEXT_CHANNEL_ID,
    THREAD_ID,
    TOKEN,
    FakeDiscord,
    attachment,
    button_press,
    guild_create,
    message_create,
    slash_command,
    user,
)

from chatstate.adapters.discord import MAX_MESSAGE, DiscordAdapter, render
from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.lifecycle import Lifecycle
from chatstate.model import Button, Incoming, Outgoing, SessionKey
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session
from chatstate.stores.memory import MemoryStore

ADA = user("1600000000000000001", "ada")
BOB = user("1600000000000000002", "bob")
T0 = 1_700_000_000.0


class Bot:
    def __init__(self, fake: FakeDiscord, client: discord.Client, adapter: DiscordAdapter,
                 manager: SessionManager) -> None:
        self.fake = fake
        self.client = client
        self.adapter = adapter
        self.manager = manager
        self.state = client._connection

    async def message(self, payload: dict[str, Any], expect: int = 1) -> None:
        before = len(self.fake.sent())
        self.state.parse_message_create(payload)  # type: ignore[arg-type]
        await self.fake.wait_sent(before + expect)

    async def interaction(self, payload: dict[str, Any], expect: int = 1) -> None:
        before = len(self.fake.sent())
        self.state.parse_interaction_create(payload)  # type: ignore[arg-type]
        await self.fake.wait_sent(before + expect)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    server = await FakeDiscord().start()
    monkeypatch.setattr(discord.http.Route, "BASE", server.api_base)
    yield server
    await server.stop()


async def make_bot(fake: FakeDiscord, handler: Any, **kw: Any) -> Bot:
    manager = SessionManager(MemoryStore(), clock=kw.pop("clock", None),
                             policy=kw.pop("policy", None))
    client = discord.Client(intents=discord.Intents.default())
    adapter = DiscordAdapter(manager, handler, **kw)
    adapter.install(client, commands={"order": "Place an order", "chat": "Talk to the bot",
                                      "reset": "Start over"})
    await client.login(TOKEN)
    client._connection.parse_guild_create(guild_create())  # type: ignore[arg-type]
    return Bot(fake, client, adapter, manager)


@pytest.fixture
async def echo_bot(fake: FakeDiscord) -> AsyncIterator[Bot]:
    async def echo(session: Session, incoming: Incoming) -> Any:
        session.data["n"] = session.data.get("n", 0) + 1
        if incoming.attachments:
            names = ", ".join(a.name or "?" for a in incoming.attachments)
            return f"got {names}"
        if incoming.command == "long":
            return "word " * 900
        return f"{session.data['n']}: {incoming.text or incoming.payload}"

    bot = await make_bot(fake, echo, record_history=True)
    yield bot
    await bot.client.close()


async def test_login_goes_to_the_local_api(echo_bot: Bot) -> None:
    assert echo_bot.client.user is not None and str(echo_bot.client.user.id) == BOT_ID
    assert echo_bot.fake.calls[0].path == "/users/@me"


async def test_dm_messages_share_the_dm_channel_session(echo_bot: Bot) -> None:
    await echo_bot.message(message_create("hello", author=ADA))
    await echo_bot.message(message_create("again", author=ADA))
    sent = echo_bot.fake.sent()
    assert [c.path for c in sent] == [f"/channels/{DM_CHANNEL_ID}/messages"] * 2
    assert echo_bot.fake.contents() == ["1: hello", "2: again"]
    record = await echo_bot.manager.get(SessionKey.chat("discord", DM_CHANNEL_ID))
    assert record is not None and record.data["n"] == 2


async def test_guild_messages_need_a_mention_and_threads_have_their_own_session(
    echo_bot: Bot
) -> None:
    state = echo_bot.state
    # no mention in a guild channel: ignored
    state.parse_message_create(message_create("hi all", author=ADA, channel_id=TEXT_CHANNEL_ID,
                                              guild=True))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert echo_bot.fake.sent() == []
    await echo_bot.message(message_create(f"<@{BOT_ID}> hi bot", author=ADA,
                                          channel_id=TEXT_CHANNEL_ID, guild=True,
                                          mentions=[BOT_USER]))
    await echo_bot.message(message_create(f"<@{BOT_ID}> me too", author=BOB,
                                          channel_id=TEXT_CHANNEL_ID, guild=True,
                                          mentions=[BOT_USER]))
    await echo_bot.message(message_create(f"<@{BOT_ID}> in thread", author=ADA,
                                          channel_id=THREAD_ID, guild=True, mentions=[BOT_USER]))
    # the channel is one session for everybody in it (seed 001); the thread is another
    assert echo_bot.fake.contents() == ["1: hi bot", "2: me too", "1: in thread"]
    assert echo_bot.fake.sent()[-1].path == f"/channels/{THREAD_ID}/messages"
    thread = await echo_bot.manager.get(SessionKey.thread("discord", TEXT_CHANNEL_ID, THREAD_ID))
    assert thread is not None and thread.data["n"] == 1


async def test_member_scope_keys_by_guild_and_user(fake: FakeDiscord) -> None:
    async def count(session: Session, incoming: Incoming) -> str:
        session.data["n"] = session.data.get("n", 0) + 1
        return str(session.data["n"])

    bot = await make_bot(fake, count, scope="member", guild_messages="all")
    await bot.message(message_create("a", author=ADA, channel_id=TEXT_CHANNEL_ID, guild=True))
    await bot.message(message_create("b", author=BOB, channel_id=TEXT_CHANNEL_ID, guild=True))
    await bot.message(message_create("c", author=ADA, channel_id=THREAD_ID, guild=True))
    await bot.message(message_create("d", author=ADA))  # DM: the user's own session
    assert fake.contents() == ["1", "1", "2", "1"]
    key = SessionKey.user_in_chat("discord", GUILD_ID, ADA["id"])
    record = await bot.manager.get(key)
    assert record is not None and record.data["n"] == 2
    await bot.client.close()


async def test_long_replies_are_split_at_2000_characters(echo_bot: Bot) -> None:
    await echo_bot.message(message_create("/long", author=ADA), expect=3)
    contents = echo_bot.fake.contents()
    assert len(contents) == 3 and all(len(c) <= MAX_MESSAGE for c in contents)
    assert " ".join(contents).split() == ["word"] * 900


async def test_attachments_are_kept_as_message_metadata(echo_bot: Bot) -> None:
    files = [attachment("plan.pdf", "application/pdf"), attachment("cat.png", "image/png")]
    await echo_bot.message(message_create("see these", author=ADA, attachments=files))
    assert echo_bot.fake.contents() == ["got plan.pdf, cat.png"]
    record = await echo_bot.manager.get(SessionKey.chat("discord", DM_CHANNEL_ID))
    assert record is not None
    [first, reply] = await echo_bot.manager.store.read_tail(record.ref, 10)
    assert first.role == "user" and first.content == "see these"
    kinds = [(a["kind"], a["name"], a["mime_type"]) for a in first.metadata["attachments"]]
    assert kinds == [("document", "plan.pdf", "application/pdf"),
                     ("photo", "cat.png", "image/png")]
    assert first.metadata["attachments"][1]["url"].startswith("https://cdn.discordapp.com/")
    assert reply.role == "assistant"


async def test_flow_over_slash_command_and_buttons(fake: FakeDiscord) -> None:
    bot = await make_bot(fake, flows_order.build_runner())
    await bot.interaction(slash_command("order", who=ADA))
    # acknowledged with a deferred "thinking" response, answered with a follow-up
    callback = next(c for c in fake.calls if c.path.endswith("/callback"))
    assert callback.body["type"] == 5
    question = fake.sent()[-1]
    assert question.path.startswith("/webhooks/") and question.content == (
        "What product do you want to order?")
    labels = [b["label"] for b in question.buttons]
    assert labels == ["Apple", "Banana", "Orange"]
    banana = question.buttons[1]["custom_id"]
    await bot.interaction(button_press(banana, who=ADA))
    assert fake.sent()[-1].content == "How many Banana do you want?"
    press_ack = [c for c in fake.calls if c.path.endswith("/callback")][-1]
    assert press_ack.body["type"] == 6  # deferred update of the button's message
    await bot.message(message_create("3", author=ADA))
    assert fake.sent()[-1].content == "What is your delivery address?"
    record = await bot.manager.get(SessionKey.chat("discord", DM_CHANNEL_ID))
    assert record is not None and record.flow is not None
    assert record.flow.data == {"product": "Banana", "quantity": 3}
    await bot.client.close()


async def test_slash_command_text_option_reaches_the_handler(echo_bot: Bot) -> None:
    await echo_bot.interaction(slash_command("chat", "what is up", who=BOB,
                                             channel_id=TEXT_CHANNEL_ID, guild=True))
    assert echo_bot.fake.sent()[-1].content == "1: /chat what is up"
    assert await echo_bot.manager.get(SessionKey.chat("discord", TEXT_CHANNEL_ID)) is not None


def test_rendering_of_buttons_keyboards_and_links() -> None:
    out = Outgoing(text="pick", buttons=[[Button(text=f"B{i}", payload=f"p{i}")
                                          for i in range(7)],
                                         [Button(text="Docs", url="https://example.org")]],
                   keyboard=[["Yes", "No"]])
    [(content, view)] = render(out)
    assert content == "pick" and view is not None
    rows: dict[int, list[Any]] = {}
    for item in view.children:
        assert isinstance(item, discord.ui.Button)
        rows.setdefault(item.row or 0, []).append(item)
    assert [len(rows[r]) for r in sorted(rows)] == [5, 2, 1, 2]
    assert rows[2][0].url == "https://example.org"
    assert [b.custom_id for b in rows[3]] == ["kb:Yes", "kb:No"]
    assert not view.is_dispatchable()  # presses come back through on_interaction


async def test_keyboard_button_press_arrives_as_text(echo_bot: Bot) -> None:
    await echo_bot.interaction(button_press("kb:Yes", who=ADA))
    assert echo_bot.fake.sent()[-1].content == "1: Yes"


async def test_lifecycle_notifications_go_to_the_sessions_channel(fake: FakeDiscord) -> None:
    clock = FakeClock(T0)
    policy = LifecyclePolicy(idle_timeout=300, warn_before=60)

    async def hello(session: Session, incoming: Incoming) -> str:
        return "hi"

    bot = await make_bot(fake, hello, clock=clock, policy=policy, guild_messages="all")
    lifecycle = Lifecycle(bot.manager, restore=False, **bot.adapter.lifecycle_notifier().hooks())
    await bot.message(message_create("hello", author=ADA, channel_id=THREAD_ID, guild=True))
    clock.advance(241)
    await lifecycle.run_once()
    clock.advance(60)
    await lifecycle.run_once()
    notes = fake.sent()[1:]
    assert [c.path for c in notes] == [f"/channels/{THREAD_ID}/messages"] * 2
    assert "expire in 1 minute" in (notes[0].content or "")
    assert "expired" in (notes[1].content or "")
    await bot.client.close()
