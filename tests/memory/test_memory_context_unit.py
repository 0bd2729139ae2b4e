"""The context builder on plain message lists: budgets, whole turns, tool-call groups, summaries
and what it reports as left out."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Sequence

import pytest
from memory_synth import conversation

from chatstate.errors import ContextOverflow
from chatstate.memory.context import SUMMARY_PREFIX, Context, assemble
from chatstate.memory.history import split_groups, split_turns, starts_turn
from chatstate.memory.tokens import TokenCounter
from chatstate.model import Message, Summary

COUNTER = TokenCounter("heuristic")  # unit tests need no real encoding


class Source:
    """Newest-first pages of messages from a list (4 a page, as a store hands them over),
    recording how many messages were read."""

    def __init__(self, messages: Sequence[Message]) -> None:
        self.messages = messages
        self.read = 0
        self.closed = False

    async def __call__(self) -> AsyncGenerator[list[Message], None]:
        newest_first = list(reversed(self.messages))
        try:
            for start in range(0, len(newest_first), 4):
                page = newest_first[start:start + 4]
                self.read += len(page)
                yield page
        finally:
            self.closed = True


async def build(messages: Sequence[Message], budget: int, **kw: object) -> tuple[Context, Source]:
    source = Source(messages)
    context = await assemble(source(), counter=COUNTER, budget_tokens=budget, **kw)  # type: ignore[arg-type]
    return context, source


def check_invariants(context: Context, history: Sequence[Message]) -> None:
    kept = context.messages
    # Never over budget, and the reported total is right.
    assert context.tokens <= context.budget_tokens - context.reserve_for_output
    expected = (
        COUNTER.count_messages(kept)
        + (COUNTER.count_text_message("system", context.system) if context.system else 0)
        + sum(COUNTER.count_text_message("system", SUMMARY_PREFIX + s.content)
              for s in context.summaries)
    )
    assert context.tokens == expected
    if not kept:
        return
    # A contiguous run of the newest messages...
    assert [m.seq for m in kept] == [m.seq for m in history[-len(kept):]]
    # ...starting at a turn boundary, so no turn is cut.
    before = {m.seq: m for m in history}.get(kept[0].seq - 1)
    assert starts_turn(before, kept[0])
    # Every tool result has its call and every call its results.
    ids_called = {c["id"] for m in kept if m.tool_calls for c in m.tool_calls}
    ids_answered = {m.tool_call_id for m in kept if m.role == "tool"}
    assert ids_called == ids_answered


def test_turns_and_groups_split_where_they_should() -> None:
    history = conversation(40, seed=1, tool_rate=0.5)
    turns = split_turns(history)
    assert len(turns) == 40
    assert all(turn[0].role == "user" for turn in turns)
    for group in split_groups(history):
        calls = {c["id"] for m in group if m.tool_calls for c in m.tool_calls}
        results = {m.tool_call_id for m in group if m.role == "tool"}
        assert calls == results


def test_explicit_turn_ids_win_over_roles() -> None:
    a = Message(role="user", content="a", turn_id="1")
    b = Message(role="user", content="b (same turn)", turn_id="1")
    c = Message(role="assistant", content="c", turn_id="2")
    assert not starts_turn(a, b)
    assert starts_turn(b, c)
    tool = Message(role="tool", content="r", tool_call_id="x", turn_id="3")
    assert not starts_turn(c, tool)  # a tool result never leaves its call


@pytest.mark.parametrize("seed", range(6))
async def test_random_budgets_keep_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    history = conversation(rng.randint(20, 120), seed=seed, tool_rate=0.4)
    for _ in range(25):
        budget = rng.randint(150, 6000)
        reserve = rng.choice([0, 50, 100])
        try:
            context, source = await build(history, budget, reserve_for_output=reserve,
                                          system="You are a helpful travel agent.")
        except ContextOverflow:
            newest = split_turns(history)[-1]
            assert COUNTER.count_messages(newest) > budget - reserve - 20
            continue
        check_invariants(context, history)
        assert source.closed
        # Newest turns first: the newest turn is always there.
        assert context.messages[-1].seq == history[-1].seq
        # Greedy: the next older turn would not have fitted.
        if context.left_out.first_seq is not None:
            turns = split_turns(history[: len(history) - len(context.messages)])
            extra = COUNTER.count_messages(turns[-1], prime_reply=False)
            assert context.tokens + extra > budget - reserve


@pytest.mark.parametrize("seed", range(4))
async def test_explicit_turn_ids_decide_where_a_context_may_start(seed: int) -> None:
    """Turn ids that disagree with the roles (two user messages in one turn, an assistant
    message opening one, some messages without an id): the builder cuts turns exactly where
    `starts_turn` does, whatever the budget."""
    rng = random.Random(seed)
    history: list[Message] = []
    turn = 0
    for seq in range(1, 81):
        if rng.random() < 0.3:
            turn += 1
        role = rng.choice(["user", "assistant", "assistant"])
        turn_id = None if rng.random() < 0.2 else str(turn)
        history.append(Message(role=role, content=f"message {seq} " * rng.randint(1, 12),
                               seq=seq, turn_id=turn_id))
    for _ in range(20):
        budget = rng.randint(200, 3000)
        try:
            context, _ = await build(history, budget)
        except ContextOverflow:
            continue
        check_invariants(context, history)
        if context.left_out.first_seq is not None:  # greedy: the next older turn did not fit
            turns = split_turns(history[: len(history) - len(context.messages)])
            extra = COUNTER.count_messages(turns[-1], prime_reply=False)
            assert context.tokens + extra > budget


async def test_reading_stops_when_the_budget_is_full() -> None:
    history = conversation(2000, seed=3)
    context, source = await build(history, 1000)
    # It read the messages it kept, plus the one turn that did not fit, not the whole history.
    assert source.read <= len(context.messages) + 8
    assert source.read < len(history) / 20


async def test_a_big_enough_budget_keeps_everything() -> None:
    history = conversation(10, seed=4)
    context, _ = await build(history, 100_000)
    assert [m.seq for m in context.messages] == [m.seq for m in history]
    assert not context.left_out.anything


async def test_left_out_reports_the_gap() -> None:
    history = conversation(50, seed=5)
    context, _ = await build(history, 500, pending_messages=len(history))
    left = context.left_out
    assert left.first_seq == 1
    assert left.last_seq == context.messages[0].seq - 1
    assert left.messages == len(history) - len(context.messages)


async def test_newest_turn_larger_than_the_budget_raises_or_is_cut_by_group() -> None:
    big = [Message(role="user", content="question " * 10, seq=1),
           Message(role="assistant", tool_calls=[{"id": "c1", "type": "function",
                                                  "function": {"name": "f", "arguments": "{}"}}],
                   seq=2),
           Message(role="tool", content="data " * 400, tool_call_id="c1", seq=3),
           Message(role="assistant", content="answer " * 30, seq=4)]
    with pytest.raises(ContextOverflow, match="newest turn"):
        await build(big, 200)
    context, _ = await build(big, 200, allow_partial_turn=True)
    assert context.partial_turn
    assert [m.seq for m in context.messages] == [4]  # the call+result group did not fit whole
    assert context.tokens <= 200
    room = COUNTER.count_messages(big[1:]) + 1  # the last two groups, not the user message
    assert room < COUNTER.count_messages(big)
    context, _ = await build(big, room, allow_partial_turn=True)
    assert [m.seq for m in context.messages] == [2, 3, 4]
    assert context.left_out.last_seq == 1


async def test_system_prompt_too_big_raises() -> None:
    with pytest.raises(ContextOverflow, match="system prompt"):
        await build([], 50, system="rules " * 200)


async def test_summaries_come_right_after_the_newest_turn() -> None:
    history = conversation(30, seed=6)
    summary = Summary(start_seq=1, end_seq=0, content="The user planned a trip to Lisbon.")
    covered_history = history  # messages after the summary
    context, _ = await build(covered_history, 2000, summaries=[summary], system="sys")
    assert context.summaries == [summary]
    rendered = context.to_messages()
    assert rendered[0] == {"role": "system", "content": "sys"}
    assert rendered[1]["content"].startswith(SUMMARY_PREFIX)
    check_invariants(context, history)
    # With room for the newest turn only, the summary is left out and reported.
    newest = split_turns(history)[-1]
    tight = COUNTER.count_messages(newest) + 1
    context, _ = await build(history, tight, summaries=[summary])
    assert context.summaries == [] and context.left_out.summaries == 1


async def test_tool_messages_render_in_openai_shape() -> None:
    history = conversation(5, seed=7, tool_rate=1.0)
    context, _ = await build(history, 100_000)
    rendered = context.to_messages()
    calls = [m for m in rendered if "tool_calls" in m]
    results = [m for m in rendered if m["role"] == "tool"]
    assert calls and results and all("tool_call_id" in r for r in results)
