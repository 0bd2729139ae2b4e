"""The memory layer on every store: context, summaries, forks, export/import, clear, cap,
ledger, search and statistics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec
import pytest
from memory_corpus import CORPUS
from memory_synth import iter_turns

from chatstate import FakeClock, SessionKey, SessionManager
from chatstate.errors import ContextOverflow
from chatstate.memory import (
    MEMORY_SUMMARIZED,
    MEMORY_SUMMARY_FAILED,
    Memory,
    MemoryConfig,
    SummaryRequest,
    TokenCounter,
    export_session,
    import_sessions,
)
from chatstate.memory.history import get_state, starts_turn
from chatstate.memory.tokens import load_bpe
from chatstate.model import Message, SessionRecord
from chatstate.stores.base import Store

KEY = SessionKey.user("test", 1)
StoreFactory = Callable[[], AbstractAsyncContextManager[Store]]


@pytest.fixture
async def manager(memory_store: Store) -> AsyncIterator[SessionManager]:
    clock = FakeClock()
    if hasattr(memory_store, "clock"):
        memory_store.clock = clock  # the store's lease and due times on the same clock
    manager = SessionManager(memory_store, clock=clock)
    yield manager


def counter() -> TokenCounter:
    return TokenCounter("cl100k_base" if load_bpe("cl100k_base") else "heuristic")


async def add_turns(
    memory: Memory, key: SessionKey, turns: int, *, seed: int = 0, tool_rate: float = 0.3,
) -> None:
    """One update per turn, as a bot would: the user message, tool calls, the answer."""
    for turn in iter_turns(turns, seed=seed, tool_rate=tool_rate):
        async with memory.manager.session(key) as s:
            for message in turn:
                await memory.add(
                    s, message.role, message.content, tool_calls=message.tool_calls,
                    tool_call_id=message.tool_call_id,
                    usage={"prompt_tokens": 100, "completion_tokens": 20}
                    if message.role == "assistant" and not message.tool_calls else None,
                    model="test-model" if message.role == "assistant" else None,
                )


async def all_messages(memory: Memory, key: SessionKey | str) -> list[Message]:
    record = await memory.record_of(key)
    return await memory.read_range(record, 1, record.counters.last_seq)


def comparable(record: SessionRecord) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(record)
    out.pop("version")
    return out


# -- context ----------------------------------------------------------------------------------


async def test_budgeted_context_on_a_long_conversation(
    manager: SessionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = Memory(manager, counter=counter(), config=MemoryConfig(auto_summarize=False))
    await add_turns(memory, KEY, 300, seed=11, tool_rate=0.4)
    history = await all_messages(memory, KEY)
    assert len(history) > 900
    assert [m.seq for m in history] == list(range(1, len(history) + 1))

    store = manager.store
    read = 0
    original = store.read_tail

    async def counting_read_tail(*args: Any, **kwargs: Any) -> list[Message]:
        nonlocal read
        page = await original(*args, **kwargs)
        read += len(page)
        return page

    monkeypatch.setattr(store, "read_tail", counting_read_tail)
    for budget in (300, 1000, 4000):
        read = 0
        context = await memory.build_context(KEY, budget, system="You are an agent.",
                                             reserve_for_output=100)
        kept = context.messages
        assert context.tokens <= budget - 100
        assert kept[-1].seq == history[-1].seq  # the newest turn is there
        assert [m.seq for m in kept] == [m.seq for m in history[-len(kept):]]
        assert starts_turn(history[len(history) - len(kept) - 1], kept[0])
        called = {c["id"] for m in kept if m.tool_calls for c in m.tool_calls}
        answered = {m.tool_call_id for m in kept if m.role == "tool"}
        assert called == answered
        assert context.left_out.last_seq == kept[0].seq - 1
        # The cost follows the budget: far fewer messages read than stored.
        assert read < 3 * len(kept) + 40


async def test_context_inside_an_update_includes_staged_messages(manager: SessionManager) -> None:
    memory = Memory(manager, counter=counter(), config=MemoryConfig(auto_summarize=False))
    await add_turns(memory, KEY, 5)
    async with manager.session(KEY) as s:
        question = await memory.add(s, "user", "What did I ask first?")
        context = await memory.build_context(s, 4000)
        assert context.messages[-1] is question
        assert len(context.messages) == (await memory.count(s))
        await memory.add(s, "assistant", "You asked about bookings.",
                         usage={"prompt_tokens": context.tokens + 10, "completion_tokens": 5},
                         model="test-model")
    # The reported usage corrected the estimate for the model.
    assert memory.counter.correction("test-model") > 1.0


async def test_newest_turn_over_budget_is_an_error(manager: SessionManager) -> None:
    memory = Memory(manager, counter=counter(), config=MemoryConfig(auto_summarize=False))
    async with manager.session(KEY) as s:
        await memory.add(s, "user", "long question " * 200)
    with pytest.raises(ContextOverflow):
        await memory.build_context(KEY, 100)


# -- summaries --------------------------------------------------------------------------------


async def test_summary_triggers_at_the_threshold_and_stacks(manager: SessionManager) -> None:
    config = MemoryConfig()  # seed 001: 4000 tokens, at 70%, keep 30%, <= 500, >= 10 messages
    memory = Memory(manager, counter=counter(), config=config)
    events: list[str] = []
    manager.events.on("*", lambda e: events.append(e.name))
    summaries_seen: list[tuple[int, int]] = []
    for index, turn in enumerate(iter_turns(200, seed=3, tool_rate=0.3)):
        record = await manager.get(KEY)
        before = get_state(record) if record is not None else None
        async with manager.session(KEY) as s:
            for message in turn:
                await memory.add(s, message.role, message.content,
                                 tool_calls=message.tool_calls, tool_call_id=message.tool_call_id)
            crossed = memory.needs_summary(s.record)
        await memory.wait_idle()
        summaries = await memory.summaries(KEY)
        if crossed:
            assert len(summaries) == 1, index  # summarised right after crossing
            summaries_seen.append((summaries[0].start_seq, summaries[0].end_seq))
        elif before is not None:
            assert len(summaries) == (1 if summaries_seen else 0)
        state = get_state(await memory.record_of(KEY))
        assert state is not None
        assert state.live_tokens + state.summary_tokens < config.threshold_tokens
    assert len(summaries_seen) >= 3
    # Stacking: one summary at a time, always from the first message, ending later each time.
    assert all(start == 1 for start, _ in summaries_seen)
    ends = [end for _, end in summaries_seen]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    (summary,) = await memory.summaries(KEY)
    assert summary.tokens <= config.summary_max_tokens
    assert events.count(MEMORY_SUMMARIZED) == len(summaries_seen)
    # Nothing was lost: every message is still stored (no cap configured).
    record = await memory.record_of(KEY)
    assert await memory.count(KEY) == record.counters.last_seq
    # The context is the summary plus what came after it.
    context = await memory.build_context(KEY, 4000)
    assert context.summaries == [summary]
    assert context.messages[0].seq > summary.end_seq


@pytest.mark.parametrize("behaviour", ["raise", "empty", "too_long", "not_text"])
async def test_a_bad_summariser_leaves_history_untouched(
    manager: SessionManager, behaviour: str
) -> None:
    async def bad(request: SummaryRequest) -> Any:
        if behaviour == "raise":
            raise RuntimeError("model unavailable")
        if behaviour == "empty":
            return "   "
        if behaviour == "not_text":
            return None
        return request.transcript() * 2  # not shorter than what it covers

    # (A large summary limit, so that the too-long answer is not simply trimmed to fit.)
    limit = 100_000 if behaviour == "too_long" else 500
    config = MemoryConfig(token_limit=800, summary_max_tokens=limit, min_messages=4)
    memory = Memory(manager, counter=counter(), config=config, summarizer=bad)
    failures: list[dict[str, Any]] = []
    manager.events.on(MEMORY_SUMMARY_FAILED, lambda e: failures.append(e.data))
    await add_turns(memory, KEY, 30, seed=5)
    await memory.wait_idle()
    assert await memory.summaries(KEY) == []
    record = await memory.record_of(KEY)
    messages = await all_messages(memory, KEY)
    assert [m.seq for m in messages] == list(range(1, record.counters.last_seq + 1))
    assert failures and all(f["reason"] for f in failures)
    state = get_state(record)
    assert state is not None and state.claim is None  # released: the next run may try again
    # A working summariser afterwards succeeds.
    memory.summarizer = Memory(manager).summarizer
    assert await memory.summarize(KEY) is not None


async def test_summarisation_runs_once_under_concurrent_appends(
    manager: SessionManager,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow(request: SummaryRequest) -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "The user talked about bookings and orders."

    config = MemoryConfig(token_limit=1000, min_messages=4)
    memory = Memory(manager, counter=counter(), config=config, summarizer=slow)
    other_process = Memory(manager, counter=counter(), config=config, summarizer=slow)
    await add_turns(memory, KEY, 25, seed=8)
    await asyncio.wait_for(started.wait(), 10)
    # While it runs: more appends (each would trigger a summary), and another "process".
    writers = [add_turns(memory, KEY, 3, seed=100 + i) for i in range(5)]
    await asyncio.gather(*writers, other_process.summarize(KEY, force=True))
    assert calls == 1
    release.set()
    await memory.wait_idle()
    await other_process.wait_idle()
    summaries = await memory.summaries(KEY)
    assert len(summaries) == 1 and calls >= 1
    record = await memory.record_of(KEY)
    messages = await all_messages(memory, KEY)
    assert [m.seq for m in messages] == list(range(1, record.counters.last_seq + 1))
    # The running totals agree with a recount of what is after the summary.
    state = get_state(record)
    assert state is not None and state.claim is None
    after = [m for m in messages if m.seq > summaries[0].end_seq]
    assert state.live_messages == len(after)
    assert state.live_tokens == sum(memory.counter.count_message(m) for m in after)


# -- tokens on the store ----------------------------------------------------------------------


async def test_stored_token_counts_equal_the_real_encoding(manager: SessionManager) -> None:
    encoding = load_bpe("cl100k_base")
    if encoding is None:
        pytest.skip("the tokens extra is not installed")
    memory = Memory(manager, counter=TokenCounter("cl100k_base"),
                    config=MemoryConfig(auto_summarize=False))
    async with manager.session(KEY) as s:
        for text in CORPUS:
            await memory.add(s, "user", text)
    stored = await all_messages(memory, KEY)
    assert [m.tokens for m in stored] == [len(encoding.encode(t)) for t in CORPUS]


# -- forks ------------------------------------------------------------------------------------


async def test_forks_read_the_parent_prefix_plus_their_own_messages(
    manager: SessionManager,
) -> None:
    memory = Memory(manager, counter=counter(), config=MemoryConfig(auto_summarize=False))
    await add_turns(memory, KEY, 10, seed=1)
    parent = await memory.record_of(KEY)
    parent_messages = await all_messages(memory, KEY)
    branch = SessionKey.user("test", 2)
    child = await memory.fork(KEY, branch)
    assert child.counters.last_seq == parent.counters.last_seq
    assert await manager.store.count_messages(child.ref) == 0  # nothing copied
    async with manager.session(branch) as s:
        await memory.add(s, "user", "Only in the branch: zebra")
    async with manager.session(KEY) as s:
        await memory.add(s, "user", "Only in the parent: giraffe")
    child_messages = await all_messages(memory, branch)
    assert [m.seq for m in child_messages] == list(range(1, len(parent_messages) + 2))
    assert child_messages[:-1] == parent_messages
    assert child_messages[-1].content == "Only in the branch: zebra"
    assert (await all_messages(memory, KEY))[-1].content == "Only in the parent: giraffe"
    assert await memory.count(branch) == len(parent_messages) + 1
    tail = await memory.messages(branch, limit=3)
    assert [m.seq for m in tail] == [m.seq for m in child_messages[-3:]]
    assert [m.content for m in await memory.search(branch, "zebra")] == [
        "Only in the branch: zebra"]
    assert await memory.search(branch, "giraffe") == []
    assert (await memory.search(branch, parent_messages[0].text.split()[0]))
    context = await memory.build_context(branch, 100_000)
    assert [m.seq for m in context.messages] == [m.seq for m in child_messages]
    # A fork of a fork at an earlier point reads both ancestors correctly.
    grandchild_key = SessionKey.user("test", 3)
    await memory.fork(branch, grandchild_key, at_seq=5)
    assert await all_messages(memory, grandchild_key) == parent_messages[:5]
    deep = SessionKey.user("test", 4)
    await memory.fork(branch, deep)
    async with manager.session(deep) as s:
        await memory.add(s, "user", "deep")
    assert [m.content for m in await all_messages(memory, deep)][-2:] == [
        "Only in the branch: zebra", "deep"]


# -- export / import --------------------------------------------------------------------------


async def test_export_then_import_gives_an_identical_session(
    manager: SessionManager, store_factory: StoreFactory
) -> None:
    memory = Memory(manager, counter=counter(),
                    config=MemoryConfig(token_limit=1000, min_messages=4))
    await add_turns(memory, KEY, 40, seed=9)
    await memory.wait_idle()
    async with manager.session(KEY) as s:
        s.data["name"] = "Ada"
        memory.record_tool_call(s, error=True)
    original = await memory.record_of(KEY)
    messages = await all_messages(memory, KEY)
    summaries = await memory.summaries(KEY)
    assert summaries and original.usage.model_calls > 0
    lines = [line async for line in export_session(manager.store, str(KEY))]
    assert lines[0].startswith('{"type":"session"') and '"type":"end"' in lines[-1]
    async with store_factory() as other:
        refs = await import_sessions(other, lines)
        assert refs == [original.ref]
        imported = await other.load(str(KEY))
        assert imported is not None
        assert comparable(imported) == comparable(original)
        copy = await other.read_range(imported.ref, 1, imported.counters.last_seq)
        assert copy == messages
        assert await other.list_summaries(imported.ref) == summaries
        # Importing again needs replace=True, and then gives the same session again.
        with pytest.raises(Exception, match="replace"):
            await import_sessions(other, lines)
        await import_sessions(other, lines, replace=True)
        again = await other.load(str(KEY))
        assert again is not None and comparable(again) == comparable(original)
        assert await other.read_range(again.ref, 1, again.counters.last_seq) == messages


async def test_a_fork_exports_self_contained(
    manager: SessionManager, store_factory: StoreFactory
) -> None:
    memory = Memory(manager, counter=counter(), config=MemoryConfig(auto_summarize=False))
    await add_turns(memory, KEY, 5, seed=2)
    branch = SessionKey.user("test", 9)
    await memory.fork(KEY, branch)
    async with manager.session(branch) as s:
        await memory.add(s, "user", "branch message")
    expected = await all_messages(memory, branch)
    lines = [line async for line in export_session(manager.store, str(branch))]
    async with store_factory() as other:
        (ref,) = await import_sessions(other, lines)
        record = await other.load_by_id(ref.id)
        assert record is not None
        state = get_state(record)
        assert state is not None and state.forks == []
        assert await other.read_range(ref, 1, record.counters.last_seq) == expected


# -- clear, cap, ledger, search, stats --------------------------------------------------------


async def test_clear_messages_keeps_summaries(manager: SessionManager) -> None:
    memory = Memory(manager, counter=counter(),
                    config=MemoryConfig(token_limit=600, min_messages=4))
    await add_turns(memory, KEY, 25, seed=4)
    await memory.wait_idle()
    summaries = await memory.summaries(KEY)
    assert summaries
    async with manager.session(KEY) as s:
        await memory.clear_messages(s)
    assert await memory.count(KEY) == 0
    assert await memory.summaries(KEY) == summaries
    async with manager.session(KEY) as s:
        await memory.add(s, "user", "Fresh start")
    context = await memory.build_context(KEY, 4000)
    assert context.summaries == summaries
    assert [m.content for m in context.messages] == ["Fresh start"]
    async with manager.session(KEY) as s:
        await memory.clear_messages(s, keep_summaries=False)
    assert await memory.summaries(KEY) == [] and await memory.count(KEY) == 0


async def test_history_cap_drops_only_summarised_messages_after_archiving(
    manager: SessionManager,
) -> None:
    archived: list[int] = []

    async def archive(record: SessionRecord, messages: list[Message]) -> None:
        archived.extend(m.seq for m in messages)

    memory = Memory(manager, counter=counter(), archive=archive,
                    config=MemoryConfig(token_limit=600, min_messages=4, max_messages=20))
    await add_turns(memory, KEY, 40, seed=6)
    await memory.wait_idle()
    (summary,) = await memory.summaries(KEY)
    stored = await all_messages(memory, KEY)
    assert archived and archived == list(range(1, len(archived) + 1))
    assert stored[0].seq == archived[-1] + 1
    assert archived[-1] <= summary.end_seq  # never an unsummarised message


async def test_ledger_totals_and_per_turn_usage(manager: SessionManager) -> None:
    memory = Memory(manager, counter=counter(), config=MemoryConfig(auto_summarize=False))
    async with manager.session(KEY) as s:
        await memory.add(s, "user", "hi")
        await memory.add(s, "assistant", tool_calls=[
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}])
        await memory.add(s, "tool", "ok", tool_call_id="a")
        await memory.add(s, "tool", "failed", tool_call_id="b", error=True)
        await memory.add(s, "assistant", "done", model="gpt-4o", latency_ms=250.0, usage={
            "prompt_tokens": 120, "completion_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 64}})
    stats = await memory.stats(KEY)
    assert (stats.tool_calls, stats.tool_errors, stats.model_calls) == (2, 1, 1)
    assert (stats.input_tokens, stats.output_tokens, stats.cached_tokens) == (120, 30, 64)
    assert stats.messages == 5 and stats.average_latency_ms == 250.0
    last = (await memory.messages(KEY, 1))[0]
    assert last.usage is not None and last.usage["model"] == "gpt-4o"
    assert last.usage["input_tokens"] == 120
    totals = await memory.global_stats()
    assert totals.sessions == 1 and totals.tokens == 150
    assert totals.by_platform == {"test": 1}


async def test_keyword_search(manager: SessionManager) -> None:
    memory = Memory(manager, counter=counter(), config=MemoryConfig(auto_summarize=False))
    async with manager.session(KEY) as s:
        await memory.add(s, "user", "My flight to Lisbon is delayed")
        await memory.add(s, "assistant", "Sorry about the delay.")
        await memory.add(s, "user", "Also the hotel in Lisbon")
    found = await memory.search(KEY, "lisbon")
    assert [m.content for m in found] == ["Also the hotel in Lisbon",
                                          "My flight to Lisbon is delayed"]
    assert [m.content for m in await memory.search(KEY, "flight Lisbon")] == [
        "My flight to Lisbon is delayed"]
