"""The context builder: system prompt + summaries + the newest whole turns under a token budget.

It reads history newest first, a page at a time, and stops as soon as the budget is full, so its
cost follows the budget, not the length of the conversation. A turn (a user message and all that
answers it) is kept whole or not at all, which also keeps every tool call with its result; the
result says how many tokens it holds and what it left out.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ContextOverflow
from ..model import Message, Summary
from .history import message_dict, split_groups
from .tokens import TokenCounter

SUMMARY_PREFIX = "Summary of the earlier conversation:\n"


@dataclass(frozen=True)
class LeftOut:
    """What the context does not contain.

    Messages `first_seq`..`last_seq` (inclusive) are neither in the context nor covered by an
    included summary; `messages` is how many of them are stored, when known.
    """

    messages: int | None = 0
    first_seq: int | None = None
    last_seq: int | None = None
    summaries: int = 0  # summaries that did not fit

    @property
    def anything(self) -> bool:
        return bool(self.messages or self.summaries or self.first_seq is not None)


@dataclass
class Context:
    """A ready-to-send LLM context."""

    system: str | None
    summaries: list[Summary]
    messages: list[Message]  # oldest first
    tokens: int  # prompt tokens as counted, chat-format overhead included
    budget_tokens: int
    reserve_for_output: int
    left_out: LeftOut = field(default_factory=LeftOut)
    partial_turn: bool = False  # the newest turn alone exceeded the budget and was cut by group
    encoding: str = ""

    @property
    def available(self) -> int:
        """Tokens left for the model's answer beyond `reserve_for_output`."""
        return self.budget_tokens - self.reserve_for_output - self.tokens

    def to_messages(self) -> list[dict[str, Any]]:
        """The context as OpenAI-style chat messages: system prompt, summaries, history."""
        out: list[dict[str, Any]] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        for summary in self.summaries:
            out.append({"role": "system", "content": SUMMARY_PREFIX + summary.content})
        out.extend(message_dict(m) for m in self.messages)
        return out


def summary_cost(counter: TokenCounter, summaries: Iterable[Summary]) -> int:
    return sum(counter.count_text_message("system", SUMMARY_PREFIX + s.content) for s in summaries)


async def assemble(
    newest_first: AsyncGenerator[Sequence[Message], None],
    *,
    counter: TokenCounter,
    budget_tokens: int,
    system: str | None = None,
    summaries: Sequence[Summary] = (),
    reserve_for_output: int = 0,
    allow_partial_turn: bool = False,
    pending_messages: int | None = None,
) -> Context:
    """Build a context from pages of messages given newest first (already limited to those
    after the summaries). `pending_messages`, when known, is how many such messages exist, to
    report how many were left out. The iterator is closed as soon as the budget is full."""
    if budget_tokens <= 0:
        raise ContextOverflow(1, budget_tokens, "any context")
    priming = counter.chat_format.reply_priming
    system_tokens = counter.count_text_message("system", system) if system else 0
    available = budget_tokens - reserve_for_output - priming - system_tokens
    if available < 0:
        raise ContextOverflow(
            system_tokens + priming, budget_tokens - reserve_for_output,
            "the system prompt",
        )
    builder = _Builder(counter, available, list(summaries), allow_partial_turn)
    # The loop below runs for every message of every context, so the turn boundary
    # (`history.starts_turn`) and the prompt cost (`counter.count_message`) are inlined.
    per_message, per_name = counter.chat_format.per_message, counter.chat_format.per_name
    content_tokens = counter.content_tokens
    try:
        pending: list[Message] = []  # the turn being read, newest first
        cost = 0  # its prompt tokens
        full = False
        async for page in newest_first:
            for m in page:
                if pending:
                    newer = pending[-1]
                    if newer.role != "tool" and (
                        newer.turn_id != m.turn_id
                        if newer.turn_id is not None and m.turn_id is not None
                        else newer.role == "user"
                    ):
                        if not builder.take(pending, cost):
                            full = True
                            break
                        pending = []
                        cost = 0
                pending.append(m)
                tokens = m.tokens
                cost += (tokens if tokens > 0 else content_tokens(m)) + per_message + (
                    per_name if m.name else 0
                )
            if full:
                break
        else:
            if pending:
                builder.take(pending, cost)
    finally:
        await newest_first.aclose()  # stop paging the store as soon as the budget is full
    builder.settle_summaries()
    kept = builder.kept
    left = builder.left_out(pending_messages, kept)
    tokens = system_tokens + priming + builder.used
    return Context(
        system=system,
        summaries=builder.included_summaries,
        messages=kept,
        tokens=tokens,
        budget_tokens=budget_tokens,
        reserve_for_output=reserve_for_output,
        left_out=left,
        partial_turn=builder.partial,
        encoding=counter.name,
    )


class _Builder:
    """Admits turns newest first while they fit, and the summaries right after the newest
    turn (they stand for everything older, so they outrank older turns)."""

    def __init__(
        self, counter: TokenCounter, available: int, summaries: list[Summary], partial: bool
    ) -> None:
        self.counter = counter
        self.available = available
        self.summaries = summaries
        self.allow_partial = partial
        self.used = 0
        self.turns: list[list[Message]] = []  # newest first, each newest first too
        self.included_summaries: list[Summary] = []
        self.summaries_settled = not summaries
        self.partial = False
        self.stopped_at: int | None = None  # newest seq of the first turn that did not fit

    def take(self, turn_newest_first: list[Message], cost: int) -> bool:
        """Admit one whole turn of `cost` prompt tokens; False when it does not fit (reading
        stops there)."""
        turn = turn_newest_first
        if not self.turns and not self.partial:
            if cost > self.available:
                if not self.allow_partial:
                    raise ContextOverflow(cost, self.available, "the newest turn")
                self._take_partial(turn[::-1])
                return False
            self.used += cost
            self.turns.append(turn)
            self.settle_summaries()
            return True
        if self.used + cost > self.available:
            self.stopped_at = turn[0].seq
            return False
        self.used += cost
        self.turns.append(turn)
        return True

    def _take_partial(self, turn: list[Message]) -> None:
        """Keep the newest whole tool-call groups of a turn (oldest first) larger than the
        budget."""
        kept: list[list[Message]] = []
        for group in reversed(split_groups(turn)):
            cost = sum(self.counter.count_message(m) for m in group)
            if self.used + cost > self.available:
                break
            self.used += cost
            kept.append(group)
        self.partial = True
        messages = [m for group in reversed(kept) for m in group]
        if messages:
            self.turns.append(messages[::-1])
        dropped = [m for m in turn if not messages or m.seq < messages[0].seq]
        self.stopped_at = dropped[-1].seq if dropped else None
        self.summaries_settled = True  # no room for them either

    def settle_summaries(self) -> None:
        if self.summaries_settled:
            return
        self.summaries_settled = True
        cost = summary_cost(self.counter, self.summaries)
        if self.used + cost <= self.available:
            self.used += cost
            self.included_summaries = list(self.summaries)

    @property
    def kept(self) -> list[Message]:
        """The admitted messages, oldest first."""
        return [m for turn in reversed(self.turns) for m in reversed(turn)]

    def left_out(self, pending_messages: int | None, kept: list[Message]) -> LeftOut:
        omitted_summaries = len(self.summaries) - len(self.included_summaries)
        if self.stopped_at is None:
            return LeftOut(messages=0, summaries=omitted_summaries)
        covered = max((s.end_seq for s in self.summaries), default=0)
        count = None if pending_messages is None else max(0, pending_messages - len(kept))
        return LeftOut(
            messages=count,
            first_seq=covered + 1,
            last_seq=self.stopped_at if not kept else kept[0].seq - 1,
            summaries=omitted_summaries,
        )
