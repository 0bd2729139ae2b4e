"""Reading history: the memory layer's bookkeeping in the record, fork-aware reads, and turns.

History lives in the store (one row / entry per message, see `stores.base`); the record only
carries a small `MemoryState` under the reserved data key `MEMORY_KEY`: running token totals of
what is not yet summarised (so the summary threshold is an O(1) check), the open turn, the fork
chain and the summarisation claim.

A fork's own messages start after the fork point; everything up to it is read from the ancestors
(`ForkLink`), so forking copies no message.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import msgspec

from ..model import Message, SessionRecord, SessionRef, Summary
from ..stores.base import Store

MEMORY_KEY = "_chatstate_memory"
"""Reserved key in `SessionRecord.data` holding `MemoryState`. Keep it across resets."""


class ForkLink(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An ancestor's history up to `seq` belongs to this session (messages `after` < s <= `seq`
    are read from session `id`)."""

    key: str
    id: str
    seq: int
    after: int = 0  # the ancestor's own fork point (its messages start after it)
    count: int = 0  # messages the ancestor held in (after, seq] when forked


class SummaryClaim(msgspec.Struct, kw_only=True):
    """Marks a summarisation in progress so that no second one starts (across processes)."""

    token: str
    until: float


class MemoryState(msgspec.Struct, kw_only=True, omit_defaults=True):
    live_tokens: int = 0  # tokens of messages after the summaries (without format overhead)
    live_messages: int = 0  # messages after the summaries
    summary_end: int = 0  # newest seq covered by a summary (0: none)
    summary_tokens: int = 0
    turn: str | None = None  # turn id of the turn in progress
    forks: list[ForkLink] = []  # ancestors, oldest first
    claim: SummaryClaim | None = None


_to_builtins = msgspec.to_builtins


def get_state(record: SessionRecord) -> MemoryState | None:
    """The memory state stored in `record`, or None if it has none (or it was damaged)."""
    raw = record.data.get(MEMORY_KEY)
    if raw is None:
        return None
    try:
        return msgspec.convert(raw, MemoryState)
    except msgspec.ValidationError:
        return None


def put_state(record: SessionRecord, state: MemoryState) -> None:
    record.data[MEMORY_KEY] = _to_builtins(state)


def forks_of(record: SessionRecord) -> list[ForkLink]:
    state = get_state(record)
    return list(state.forks) if state is not None else []


# ---------------------------------------------------------------------------------------------
# Turns and tool-call groups


def starts_turn(older: Message | None, newer: Message) -> bool:
    """True when `newer` opens a new turn after `older`.

    A turn is a user message and everything that answers it (assistant messages, tool calls and
    their results). Explicit turn ids win when both messages have one; a tool result never
    starts anything, so a call and its result always stay in one turn.
    """
    if older is None:
        return True
    if newer.role == "tool":
        return False
    if older.turn_id is not None and newer.turn_id is not None:
        return older.turn_id != newer.turn_id
    return newer.role == "user"


def starts_group(older: Message | None, newer: Message) -> bool:
    """True when `newer` can be separated from `older` without splitting a tool call from its
    result (the smallest unit a context may keep)."""
    if older is None:
        return True
    return newer.role != "tool"


def split_turns(messages: Sequence[Message]) -> list[list[Message]]:
    """Consecutive messages (oldest first) cut into turns."""
    turns: list[list[Message]] = []
    previous: Message | None = None
    for message in messages:
        if not turns or starts_turn(previous, message):
            turns.append([])
        turns[-1].append(message)
        previous = message
    return turns


def split_groups(messages: Sequence[Message]) -> list[list[Message]]:
    groups: list[list[Message]] = []
    previous: Message | None = None
    for message in messages:
        if not groups or starts_group(previous, message):
            groups.append([])
        groups[-1].append(message)
        previous = message
    return groups


# ---------------------------------------------------------------------------------------------
# Fork-aware reads


class _Segment(msgspec.Struct, frozen=True):
    ref: SessionRef
    after: int  # messages of this segment have seq > after
    upto: int | None  # ... and seq <= upto (None: no upper bound, the session itself)


def _segments(record: SessionRecord) -> list[_Segment]:
    """The sessions whose messages make up `record`'s history, newest segment first."""
    segments: list[_Segment] = []
    forks = forks_of(record)
    own_after = forks[-1].seq if forks else 0
    segments.append(_Segment(record.ref, own_after, None))
    for link in reversed(forks):
        segments.append(_Segment(SessionRef(link.key, link.id), link.after, link.seq))
    return segments


class HistoryReader:
    """Reads a session's history from its store, merging forked prefixes. Never scans the whole
    conversation: every read is a tail or a range."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def read_tail(
        self, record: SessionRecord, limit: int, *, before_seq: int | None = None
    ) -> list[Message]:
        """The newest `limit` messages with seq < before_seq (if given), oldest first."""
        if limit <= 0:
            return []
        found: list[Message] = []
        for segment in _segments(record):
            if before_seq is not None and before_seq <= segment.after + 1:
                continue  # everything wanted is older than this segment
            before = before_seq
            if segment.upto is not None and (before is None or before > segment.upto + 1):
                before = segment.upto + 1
            page = await self.store.read_tail(segment.ref, limit - len(found), before_seq=before)
            page = [m for m in page if m.seq > segment.after]
            found = page + found
            if len(found) >= limit:
                break
        return found

    async def read_range(
        self, record: SessionRecord, start_seq: int, end_seq: int
    ) -> list[Message]:
        """Messages with start_seq <= seq <= end_seq, oldest first."""
        out: list[Message] = []
        for segment in reversed(_segments(record)):
            low = max(start_seq, segment.after + 1)
            high = end_seq if segment.upto is None else min(end_seq, segment.upto)
            if low <= high:
                out.extend(await self.store.read_range(segment.ref, low, high))
        return out

    async def iter_backwards(
        self, record: SessionRecord, *, page: int = 64, max_page: int = 1024,
        stop_at: int = 0,
    ) -> AsyncGenerator[Message, None]:
        """Messages newest first (see `pages_backwards`)."""
        pages = self.pages_backwards(record, page=page, max_page=max_page, stop_at=stop_at)
        try:
            async for chunk in pages:
                for message in chunk:
                    yield message
        finally:
            await pages.aclose()

    async def pages_backwards(
        self, record: SessionRecord, *, page: int = 64, max_page: int = 1024,
        stop_at: int = 0, before: int | None = None,
    ) -> AsyncGenerator[list[Message], None]:
        """Pages of messages, each newest first, in sizes that double from `page` up to
        `max_page`, stopping before seq `stop_at` (exclusive lower bound). The caller stops
        iterating when it has enough, so the cost follows what it needs, not the length of the
        history. (Whole pages, not single messages: one async step per page, not per message.)
        With `before`, only messages with a lower seq."""
        size = max(1, page)
        while True:
            chunk = await self.read_tail(record, size, before_seq=before)
            if not chunk:
                return
            full = len(chunk) == size
            chunk.reverse()
            if chunk[-1].seq <= stop_at:
                yield [m for m in chunk if m.seq > stop_at]
                return
            yield chunk
            if not full:
                return
            before = chunk[-1].seq
            if before <= stop_at + 1:
                return
            size = min(size * 2, max_page)

    async def iter_forward(
        self, record: SessionRecord, *, start_seq: int = 1, chunk: int = 500
    ) -> AsyncIterator[Message]:
        """Every message from `start_seq` on, oldest first, in range reads of `chunk` seqs."""
        last = record.counters.last_seq
        low = start_seq
        while low <= last:
            high = min(last, low + chunk - 1)
            for message in await self.read_range(record, low, high):
                yield message
            low = high + 1

    async def count(self, record: SessionRecord) -> int:
        """Messages stored for the session, including a fork's inherited prefix."""
        total = await self.store.count_messages(record.ref)
        return total + sum(link.count for link in forks_of(record))

    async def summaries(self, record: SessionRecord) -> list[Summary]:
        return await self.store.list_summaries(record.ref)

    async def search(self, record: SessionRecord, query: str, limit: int = 20) -> list[Message]:
        """Messages containing every word of `query`, newest first, across the fork chain."""
        found: list[Message] = []
        for segment in _segments(record):
            if len(found) >= limit:
                break
            hits = await self.store.search_messages(segment.ref, query, limit=limit * 2)
            for message in hits:
                if message.seq > segment.after and (
                    segment.upto is None or message.seq <= segment.upto
                ):
                    found.append(message)
        found.sort(key=lambda m: m.seq, reverse=True)
        return found[:limit]


def message_dict(message: Message) -> dict[str, Any]:
    """The message in the shape of OpenAI's chat API (role, content, name, tool fields)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = message.tool_calls
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out
