"""The Agents SDK `Session` protocol on chatstate: `Runner.run` with a model pointed at a local
fake OpenAI-compatible server, history asserted in the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from agents.memory import Session as AgentsSession
from fake_openai import FakeOpenAI
from openai import AsyncOpenAI

from chatstate.adapters.base import publish_session
from chatstate.adapters.openai_agents import ITEM_FIELD, ChatstateAgentSession
from chatstate.engine import SessionManager
from chatstate.memory import Memory, MemoryConfig
from chatstate.model import SessionKey
from chatstate.stores.memory import MemoryStore

KEY = SessionKey.chat("discord", "42")


@function_tool
def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"sunny in {city}"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    set_tracing_disabled(True)
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()


def agent_for(server: FakeOpenAI) -> Agent[Any]:
    client = AsyncOpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)
    model = OpenAIChatCompletionsModel(model="fake-model", openai_client=client)
    return Agent(name="helper", instructions="Be brief.", model=model, tools=[get_weather])


async def test_runner_keeps_memory_in_the_store(server: FakeOpenAI) -> None:
    manager = SessionManager(MemoryStore())
    session = ChatstateAgentSession(manager, KEY)
    assert isinstance(session, AgentsSession)
    agent = agent_for(server)
    first = await Runner.run(agent, "hello there", session=session)
    assert first.final_output == "[1 user messages] you said: hello there"
    second = await Runner.run(agent, "and again", session=session)
    assert second.final_output == "[2 user messages] you said: and again"
    # the model saw the first turn in its input
    sent = server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]

    record = await manager.get(KEY)
    assert record is not None
    stored = await manager.store.read_tail(record.ref, 50)
    assert [(m.role, m.text) for m in stored] == [
        ("user", "hello there"), ("assistant", "[1 user messages] you said: hello there"),
        ("user", "and again"), ("assistant", "[2 user messages] you said: and again"),
    ]
    assert all(ITEM_FIELD in m.metadata and m.tokens > 0 for m in stored)
    assert record.counters.messages == 2  # one per user turn
    # a fresh session object (another process) reads the same items back
    again = ChatstateAgentSession(SessionManager(manager.store), KEY)
    assert await again.get_items() == await session.get_items()


async def test_tool_calls_are_recorded_with_their_results(server: FakeOpenAI) -> None:
    manager = SessionManager(MemoryStore())
    session = ChatstateAgentSession(manager, KEY)
    result = await Runner.run(agent_for(server), "what is the weather in Paris", session=session)
    assert result.final_output == "Tool says: sunny in Paris"
    record = await manager.get(KEY)
    assert record is not None and record.counters.tool_calls == 1
    stored = await manager.store.read_tail(record.ref, 50)
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    call, output = stored[1], stored[2]
    assert call.tool_calls and call.tool_calls[0]["function"]["name"] == "get_weather"
    assert output.tool_call_id == call.tool_calls[0]["id"] == "call_paris"
    assert call.turn_id == output.turn_id == stored[0].turn_id
    items = await session.get_items()
    assert [i.get("type", "message") for i in items] == [
        "message", "function_call", "function_call_output", "message"]


async def test_get_items_limit_pop_and_clear(server: FakeOpenAI) -> None:
    manager = SessionManager(MemoryStore())
    session = ChatstateAgentSession(manager, KEY)
    await session.add_items([{"role": "user", "content": f"m{i}"} for i in range(5)])
    assert [i["content"] for i in await session.get_items(limit=2)] == ["m3", "m4"]
    assert await session.get_items(limit=0) == []
    popped = await session.pop_item()
    assert popped == {"role": "user", "content": "m4"}
    assert [i["content"] for i in await session.get_items()] == ["m0", "m1", "m2", "m3"]
    assert [i["content"] for i in await session.get_items(limit=2)] == ["m2", "m3"]
    await session.add_items([{"role": "user", "content": "m5"}])
    assert [i["content"] for i in await session.get_items(limit=2)] == ["m3", "m5"]
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None
    empty = ChatstateAgentSession(manager, SessionKey.chat("discord", "nobody"))
    assert await empty.get_items() == [] and await empty.pop_item() is None


async def test_inside_an_open_update_items_commit_with_it(server: FakeOpenAI) -> None:
    manager = SessionManager(MemoryStore())
    session = ChatstateAgentSession(manager, KEY)
    async with manager.session(KEY) as s:
        with publish_session(s):
            await Runner.run(agent_for(server), "hi", session=session)
            assert await manager.get(KEY) is None  # nothing committed yet
            assert len(await session.get_items()) == 2
    record = await manager.get(KEY)
    assert record is not None and record.counters.last_seq == 2


async def test_failed_update_stores_nothing(server: FakeOpenAI) -> None:
    manager = SessionManager(MemoryStore())
    session = ChatstateAgentSession(manager, KEY)
    with pytest.raises(RuntimeError):
        async with manager.session(KEY) as s:
            with publish_session(s):
                await session.add_items([{"role": "user", "content": "lost"}])
                raise RuntimeError("handler failed")
    assert await session.get_items() == []


async def test_summaries_and_budget_shape_the_next_input(server: FakeOpenAI) -> None:
    manager = SessionManager(MemoryStore())
    memory = Memory(manager, config=MemoryConfig(token_limit=400, min_messages=4,
                                                 summary_max_tokens=120))
    session = ChatstateAgentSession(manager, KEY, memory=memory, budget_tokens=450)
    agent = agent_for(server)
    for i in range(8):
        await Runner.run(agent, f"message number {i} " + "blah " * 20, session=session)
        await memory.wait_idle()
    summaries = await memory.summaries(KEY)
    assert summaries, "rolling summaries should have covered the older turns"
    items = await session.get_items()
    assert items[0]["role"] == "system"
    assert items[0]["content"].startswith("Summary of the earlier conversation")
    # the summary replaces the turns it covers; the newest turn is there verbatim
    assert "message number 7" in str(items[-1]) or "message number 7" in str(items[-2])
    covered = summaries[-1].end_seq
    record = await manager.get(KEY)
    assert record is not None and covered < record.counters.last_seq
    counted = sum(memory.counter.count_text_message(i.get("role", "assistant"),
                                                    str(i.get("content", ""))) for i in items)
    assert counted <= 450
    result = await Runner.run(agent, "last one", session=session)
    assert "1 summary" in str(result.final_output)
    await memory.aclose()
