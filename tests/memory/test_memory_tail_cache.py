"""The context tail cache on every store: a context built from the cache is the context built
from the store, whatever other processes did to the history in between."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from memory_synth import iter_turns

from chatstate import FakeClock, SessionKey, SessionManager
from chatstate.memory import Memory, MemoryConfig, export_session, import_sessions
from chatstate.memory.tail_cache import TailCache
from chatstate.model import Message, SessionRef
from chatstate.stores.base import Store

KEY = SessionKey.user("test", 7)
BUDGET = 1500


class Reads:
    """Counts the history reads a store serves (wraps its read_tail / read_range)."""

    def __init__(self, store: Store) -> None:
        self.tail: list[int] = []
        self.range: list[int] = []
        tail, rng = store.read_tail, store.read_range

        async def read_tail(ref: SessionRef, limit: int, **kw: Any) -> list[Message]:
            found = await tail(ref, limit, **kw)
            self.tail.append(len(found))
            return found

        async def read_range(ref: SessionRef, start: int, end: int) -> list[Message]:
            found = await rng(ref, start, end)
            self.range.append(len(found))
            return found

        store.read_tail = read_tail  # type: ignore[method-assign]
        store.read_range = read_range  # type: ignore[method-assign]

    def reset(self) -> None:
        self.tail.clear()
        self.range.clear()


@pytest.fixture
async def manager(memory_store: Store) -> AsyncIterator[SessionManager]:
    clock = FakeClock()
    if hasattr(memory_store, "clock"):
        memory_store.clock = clock
    yield SessionManager(memory_store, clock=clock)


def memory_of(manager: SessionManager, cache: int = 256) -> Memory:
    return Memory(manager, config=MemoryConfig(auto_summarize=False, context_cache=cache))


async def add_turns(memory: Memory, turns: int, seed: int) -> None:
    for turn in iter_turns(turns, seed=seed, tool_rate=0.3):
        async with memory.manager.session(KEY) as s:
            for m in turn:
                await memory.add(s, m.role, m.content, tool_calls=m.tool_calls,
                                 tool_call_id=m.tool_call_id)


async def seqs(memory: Memory) -> list[int]:
    context = await memory.build_context(KEY, BUDGET)
    return [m.seq for m in context.messages]


async def assert_same_as_uncached(memory: Memory, manager: SessionManager) -> list[int]:
    cached = await seqs(memory)
    assert cached == await seqs(memory_of(manager, cache=0))
    return cached


async def test_a_turn_reads_only_what_was_committed_since_the_last(
    manager: SessionManager, memory_store: Store
) -> None:
    memory = memory_of(manager)
    await add_turns(memory, 60, seed=1)
    reads = Reads(memory_store)
    first = await assert_same_as_uncached(memory, manager)
    assert len(first) > 20
    reads.reset()
    for turn in iter_turns(1, seed=2):
        async with manager.session(KEY) as s:
            context = await memory.build_context(s, BUDGET)
            for m in turn:
                await memory.add(s, m.role, m.content, tool_calls=m.tool_calls,
                                 tool_call_id=m.tool_call_id)
    assert reads.tail == []  # nothing re-read page by page...
    reads.reset()
    await memory.build_context(KEY, BUDGET)
    # ...and the turn this process committed joined the cache: no read at all
    assert reads.tail == [] and reads.range == []
    assert context.messages[-1].seq == first[-1]
    await assert_same_as_uncached(memory, manager)


async def test_another_process_appending_is_seen(
    manager: SessionManager, memory_store: Store
) -> None:
    ours, theirs = memory_of(manager), memory_of(manager)
    await add_turns(ours, 20, seed=3)
    await seqs(ours)
    await add_turns(theirs, 5, seed=4)
    reads = Reads(memory_store)
    record = await ours.record_of(KEY)
    assert (await seqs(ours))[-1] == record.counters.last_seq
    # One range read brought the cache up to date (their turns, and our newest as a check).
    assert reads.tail == [] and len(reads.range) == 1
    await assert_same_as_uncached(ours, manager)


async def test_messages_cleared_elsewhere_never_come_back(manager: SessionManager) -> None:
    ours, theirs = memory_of(manager), memory_of(manager)
    await add_turns(ours, 20, seed=5)
    assert await seqs(ours)
    async with manager.session(KEY, message=False) as s:
        await theirs.clear_messages(s)
    assert await seqs(ours) == []
    await add_turns(theirs, 3, seed=6)
    after = await assert_same_as_uncached(ours, manager)
    record = await ours.record_of(KEY)
    assert after and min(after) > record.counters.dropped_through


async def test_history_replaced_by_an_older_copy_is_read_afresh(
    manager: SessionManager,
) -> None:
    memory = memory_of(manager)
    await add_turns(memory, 10, seed=7)
    backup = [line async for line in export_session(manager.store, str(KEY))]
    await add_turns(memory, 10, seed=8)
    assert (await seqs(memory))[-1] > 0
    await import_sessions(manager.store, backup, replace=True)
    restored = await memory.record_of(KEY)
    assert (await assert_same_as_uncached(memory, manager))[-1] == restored.counters.last_seq


async def test_a_failed_update_leaves_nothing_in_the_cache(manager: SessionManager) -> None:
    memory = memory_of(manager)
    await add_turns(memory, 10, seed=9)
    before = await seqs(memory)
    with pytest.raises(RuntimeError):
        async with manager.session(KEY) as s:
            await memory.add(s, "user", "this turn fails")
            await memory.build_context(s, BUDGET)  # sees the staged message
            raise RuntimeError("handler failed")
    assert await seqs(memory) == before
    await assert_same_as_uncached(memory, manager)


def test_the_cache_is_bounded() -> None:
    cache = TailCache(max_sessions=2, max_messages=3)
    messages = [Message(role="user", content=str(i), seq=i) for i in range(1, 6)]
    cache.put("a", messages, 1)
    entry = cache.get("a")
    assert entry is not None and [m.seq for m in entry.messages] == [3, 4, 5] and entry.low == 3
    cache.put("b", messages[:1], 1)
    cache.get("a")  # a is now the most recently used
    cache.put("c", messages[:1], 1)
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    off = TailCache(max_sessions=0)
    off.put("a", messages, 1)
    assert off.get("a") is None


async def test_the_cache_follows_the_budget_not_the_conversation(
    manager: SessionManager,
) -> None:
    memory = memory_of(manager)
    await add_turns(memory, 40, seed=10)
    for _ in range(3):
        await add_turns(memory, 20, seed=11)
        context = await memory.build_context(KEY, BUDGET)
    record = await memory.record_of(KEY)
    entry = memory._tails.get(record.id)
    page = max(8, min(256, BUDGET // 25))
    assert entry is not None
    # The pages the context read: what it kept, the turn that did not fit, within a page.
    assert len(entry.messages) <= len(context.messages) + 2 * page
    assert record.counters.last_seq > len(entry.messages) * 2


async def test_messages_this_process_clears_leave_its_cache(manager: SessionManager) -> None:
    memory = memory_of(manager)
    await add_turns(memory, 20, seed=12)
    assert await seqs(memory)
    async with manager.session(KEY) as s:
        await memory.clear_messages(s)
        await memory.add(s, "user", "a fresh start")
    after = await assert_same_as_uncached(memory, manager)
    record = await memory.record_of(KEY)
    assert after == [record.counters.last_seq]
