"""The demo bot's built-in feedback flow, as the terminal demo and the web chat drive it."""

from __future__ import annotations

from chatstate import Incoming, SessionKey
from chatstate.demo import DemoBot, demo_manager


async def test_feedback_flow_runs_inside_the_demo_bot() -> None:
    manager = demo_manager("memory://")
    bot = DemoBot(manager)

    async def say(text: str) -> list[str]:
        replies = await bot.reply(Incoming.from_text(text, platform="cli", user_id="ada"))
        return [r.text for r in replies]

    async def press(label: str) -> list[str]:
        replies = await bot.reply(Incoming.button(payloads[label], platform="cli", user_id="ada"))
        return [r.text for r in replies]

    assert (await say("Ada"))[0].startswith("Hello!")  # asks for the name first
    await say("Ada")
    first = await bot.reply(Incoming.from_text("/feedback", platform="cli", user_id="ada"))
    assert "rate chatstate" in first[0].text
    payloads = {b.text: b.payload for row in first[0].buttons for b in row if b.payload}
    assert set(payloads) == {"1", "2", "3", "4", "5"}
    assert "like most" in (await press("4"))[0]
    record = await manager.get(SessionKey.user("cli", "ada"))
    assert record is not None and record.flow is not None and record.flow.step == "liked"
    assert "rated" not in " ".join(await say("/cancel"))
    record = await manager.get(SessionKey.user("cli", "ada"))
    assert record is not None and record.flow is None
    # outside the flow the demo answers as before
    assert "Ada, that is message number" in (await say("hello"))[0]


async def test_demo_without_flows_answers_commands_itself() -> None:
    bot = DemoBot(demo_manager("memory://"), flows=None)
    replies = await bot.reply(Incoming.from_text("/feedback", platform="cli", user_id="bo"))
    assert replies and "name" in replies[0].text
