"""A process-local cache of each session's newest committed messages, decoded.

An agent builds a context on every turn, and each context is mostly the previous one plus the
last turn. Reading and decoding ~100 messages from the store every time makes the context cost
as much as the rest of the turn together; with this cache a turn reads only the messages
committed since the last one (usually 2-4, one small range read).

Why it is safe: a committed message never changes. Its (session id, seq) names it for good; a
session's history only grows at the top and loses messages at the bottom (`drop_messages_through`
records that in `counters.dropped_through`). So an entry is checked against the record it serves:

* messages at or below `counters.dropped_through` are trimmed off;
* the messages committed since the entry was filled are read (with the entry's newest one again,
  which must match, or the entry is dropped);
* a record whose newest seq is below the entry's (history replaced, e.g. a restore) drops it.

Sessions with forks are not cached (their history spans several sessions). Bounded: at most
`max_sessions` entries (least recently used first out), `max_messages` messages each.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..model import Message

DEFAULT_MAX_MESSAGES = 1024


@dataclass(frozen=True)
class TailEntry:
    """Every stored message of one session with `low <= seq`, oldest first (the newest is
    `messages[-1]`). Never mutated: an update builds a new entry."""

    messages: tuple[Message, ...]
    low: int

    @property
    def high(self) -> int:
        return self.messages[-1].seq


class TailCache:
    def __init__(self, max_sessions: int, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.max_sessions = max_sessions
        self.max_messages = max_messages
        self._entries: OrderedDict[str, TailEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> TailEntry | None:
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries.move_to_end(session_id)
        return entry

    def put(self, session_id: str, messages: Sequence[Message], low: int) -> None:
        """Remember `messages` (oldest first, every stored message from seq `low` up)."""
        if not messages or self.max_sessions <= 0:
            self._entries.pop(session_id, None)
            return
        if len(messages) > self.max_messages:
            messages = messages[-self.max_messages:]
            low = messages[0].seq
        self._entries[session_id] = TailEntry(tuple(messages), low)
        self._entries.move_to_end(session_id)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)

    def discard(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    def clear(self) -> None:
        self._entries.clear()


def same_message(a: Message, b: Message) -> bool:
    """The cheap identity check of a re-read message against the cached one."""
    return (
        a.seq == b.seq and a.created_at == b.created_at and a.role == b.role
        and a.content == b.content
    )
