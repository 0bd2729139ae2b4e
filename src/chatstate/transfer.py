"""Export and import sessions (record, history, summaries) as JSON Lines, through the store API.

One line per session::

    {"format": "chatstate.session/1", "record": {...}, "messages": [...], "summaries": [...]}

Exports are ordered oldest `last_activity` first, so that importing a file line by line leaves
the newest session of every key as its current one. Works on every store; the CLI's
`chatstate sessions export|import` and anything else that moves sessions between stores use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from .codec import Codec
from .errors import ChatstateError
from .model import HistoryChanges, Message, SessionRecord, Summary
from .stores.base import SessionFilter, Store

LINE_FORMAT = "chatstate.session/1"
HISTORY_PAGE = 500  # messages read per round trip while exporting


class ImportFormatError(ChatstateError, ValueError):
    """A line of an import file is not a chatstate session export."""


class ExportedSession(msgspec.Struct, kw_only=True):
    format: str = LINE_FORMAT
    record: msgspec.Raw  # decoded through a Codec, so older schema versions are migrated
    messages: list[Message] = []
    summaries: list[Summary] = []


_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(ExportedSession)
_json_codec = Codec(format="json")


async def session_refs(
    store: Store, filter: SessionFilter | None = None, *, page_size: int = 500
) -> list[tuple[float, str]]:
    """(last_activity, id) of every matching session, oldest first. Holds ids only, not
    records, so it stays small for large stores."""
    refs: list[tuple[float, str]] = []
    cursor: str | None = None
    while True:
        page = await store.list(filter, limit=page_size, cursor=cursor)
        refs.extend((r.last_activity, r.id) for r in page.items)
        cursor = page.next_cursor
        if not cursor or not page.items:
            break
    refs.sort()
    return refs


async def read_history(store: Store, record: SessionRecord) -> list[Message]:
    """Every stored message of a session, oldest first, read in pages from the newest back."""
    pages: list[list[Message]] = []
    before: int | None = None
    while True:
        page = await store.read_tail(record.ref, HISTORY_PAGE, before_seq=before)
        if not page:
            break
        pages.append(page)
        if len(page) < HISTORY_PAGE:
            break
        before = page[0].seq
    return [m for page in reversed(pages) for m in page]


async def export_session(store: Store, record: SessionRecord) -> bytes:
    """One JSON line (with its newline) for `record` and its history."""
    messages = await read_history(store, record)
    summaries = await store.list_summaries(record.ref)
    line = {
        "format": LINE_FORMAT,
        "record": record,
        "messages": messages,
        "summaries": summaries,
    }
    return _encoder.encode(line) + b"\n"


async def export_sessions(
    store: Store,
    filter: SessionFilter | None = None,
    *,
    on_total: Callable[[int], None] | None = None,
) -> AsyncIterator[bytes]:
    """Yield one JSON line per matching session, oldest activity first."""
    refs = await session_refs(store, filter)
    if on_total is not None:
        on_total(len(refs))
    for _, session_id in refs:
        record = await store.load_by_id(session_id)
        if record is not None:  # deleted while we were exporting
            yield await export_session(store, record)


def parse_line(line: bytes | str, lineno: int = 0) -> tuple[SessionRecord, HistoryChanges]:
    """Decode one export line into a record and the history to write with it."""
    where = f"line {lineno}: " if lineno else ""
    try:
        item = _line_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ImportFormatError(
            f"{where}not a chatstate session export ({exc}); expected one JSON object per "
            "line as written by `chatstate sessions export`"
        ) from None
    if item.format != LINE_FORMAT:
        raise ImportFormatError(f"{where}unknown export format {item.format!r}")
    try:
        record = _json_codec.decode(bytes(item.record), key="import")
    except ChatstateError as exc:
        raise ImportFormatError(f"{where}the session record is unusable: {exc}") from None
    return record, HistoryChanges(append=list(item.messages), summaries=list(item.summaries))


async def import_session(
    store: Store, record: SessionRecord, history: HistoryChanges, *, replace: bool = False
) -> bool:
    """Write an exported session as the current session of its key. A session whose id is
    already stored is skipped (False), or deleted and written again when `replace` is true."""
    existing = await store.load_by_id(record.id)
    if existing is not None:
        if not replace:
            return False
        await store.delete(existing.key, existing.id)
    current = await store.load(record.key)
    expected = current.version if current is not None else 0
    record.version = expected + 1
    await store.commit(record, expected=expected, history=history if history else None)
    return True


def record_to_json(record: SessionRecord) -> dict[str, Any]:
    """A plain dict of the record (for printing)."""
    out: dict[str, Any] = msgspec.to_builtins(record)
    return out
