"""Export and import of sessions with their history, summaries and ledger as JSON Lines.

One exported session is a run of lines, each a JSON object with a "type":

    {"type": "session", "format": "chatstate.session", "version": 1, "record": {...}}
    {"type": "message", "message": {...}}            one per message, oldest first
    {"type": "summary", "summary": {...}}            one per summary
    {"type": "ledger", "usage": {...}, "counters": {...}}
    {"type": "end", "messages": N, "summaries": M}   counts, checked on import

A file may hold several sessions one after the other. A fork is exported self-contained: its
inherited prefix is written out as its own messages. Export streams (range reads of 500 messages)
and import commits in chunks, so neither holds a long conversation in memory.

    async for line in export_session(store, "telegram:user:42"): out.write(line + "\\n")
    refs = await import_sessions(store, open("sessions.jsonl"))
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import msgspec

from ..errors import ChatstateError, InvalidExportError
from ..model import HistoryChanges, Message, SessionRecord, SessionRef, Status, Summary
from ..stores.base import Store
from .history import HistoryReader, get_state, put_state

FORMAT = "chatstate.session"
FORMAT_VERSION = 1
IMPORT_CHUNK = 500  # messages per commit on import (Redis scripts take bounded arguments)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _line(obj: dict[str, Any]) -> str:
    return _encode(obj).decode()


async def _resolve(store: Store, key_or_id: str | SessionRef) -> SessionRecord:
    if isinstance(key_or_id, SessionRef):
        record = await store.load_by_id(key_or_id.id)
    elif ":" in key_or_id:
        record = await store.load(key_or_id)
    else:
        record = await store.load_by_id(key_or_id)
    if record is None:
        raise LookupError(
            f"no session {key_or_id!r}: pass a session key (platform:scope:id) or a session id"
        )
    return record


async def export_session(
    store: Store, key_or_id: str | SessionRef, *, chunk: int = 500
) -> AsyncIterator[str]:
    """The session (current one at a key, or any by id) as JSON Lines, without newlines."""
    record = await _resolve(store, key_or_id)
    reader = HistoryReader(store)
    exported = msgspec.structs.replace(record, data=dict(record.data))
    state = get_state(exported)
    if state is not None and state.forks:
        # Self-contained: the inherited prefix is exported as this session's own messages.
        state.forks = []
        put_state(exported, state)
    yield _line({
        "type": "session", "format": FORMAT, "version": FORMAT_VERSION,
        "record": msgspec.to_builtins(exported),
    })
    messages = 0
    async for message in reader.iter_forward(record, chunk=chunk):
        messages += 1
        yield _line({"type": "message", "message": msgspec.to_builtins(message)})
    summaries = await reader.summaries(record)
    for summary in summaries:
        yield _line({"type": "summary", "summary": msgspec.to_builtins(summary)})
    yield _line({
        "type": "ledger",
        "usage": msgspec.to_builtins(record.usage),
        "counters": msgspec.to_builtins(record.counters),
    })
    yield _line({"type": "end", "messages": messages, "summaries": len(summaries)})


async def export_sessions(
    store: Store, keys_or_ids: Iterable[str | SessionRef]
) -> AsyncIterator[str]:
    for key_or_id in keys_or_ids:
        async for line in export_session(store, key_or_id):
            yield line


async def _lines(source: Iterable[str] | AsyncIterable[str]) -> AsyncIterator[str]:
    if isinstance(source, AsyncIterable):
        async for line in source:
            yield line
    else:
        for line in source:
            yield line


class _Pending:
    """One session being imported: committed chunk by chunk."""

    def __init__(self, record: SessionRecord, expected: int) -> None:
        self.record = record
        self.expected = expected
        self.messages: list[Message] = []
        self.summaries: list[Summary] = []
        self.count = 0
        self.first_commit = True

    async def flush(self, store: Store, *, final: bool) -> None:
        if not self.messages and not final and not self.first_commit:
            return
        record = self.record
        record.version = self.expected + 1
        history = HistoryChanges(
            append=self.messages, summaries=self.summaries if final else [],
        )
        await store.commit(record, expected=self.expected, history=history or None)
        self.expected = record.version
        self.count += len(self.messages)
        self.messages = []
        self.first_commit = False


async def import_sessions(
    store: Store,
    lines: Iterable[str] | AsyncIterable[str],
    *,
    replace: bool = False,
) -> list[SessionRef]:
    """Import every session in `lines` (JSON Lines written by `export_session`), keeping ids,
    sequence numbers, summaries and the ledger. An existing active session at the same key is
    an error unless `replace=True` (then it is deleted first, with its history)."""
    imported: list[SessionRef] = []
    pending: _Pending | None = None
    number = 0
    async for raw in _lines(lines):
        number += 1
        text = raw.strip()
        if not text:
            continue
        try:
            obj = _decode(text)
        except msgspec.DecodeError as exc:
            raise InvalidExportError(f"line {number} is not JSON: {exc}") from None
        kind = obj.get("type") if isinstance(obj, dict) else None
        try:
            if kind == "session":
                if pending is not None:
                    raise InvalidExportError(f"line {number}: a session starts before the "
                                             "previous one ended (missing 'end' line)")
                pending = await _start(store, obj, replace, number)
            elif pending is None:
                raise InvalidExportError(f"line {number}: {kind!r} line outside a session")
            elif kind == "message":
                message = msgspec.convert(obj["message"], Message)
                pending.messages.append(message)
                if len(pending.messages) >= IMPORT_CHUNK:
                    await pending.flush(store, final=False)
            elif kind == "summary":
                pending.summaries.append(msgspec.convert(obj["summary"], Summary))
            elif kind == "ledger":
                pass  # the ledger is part of the record; the line is for readers of the file
            elif kind == "end":
                expected_messages = obj.get("messages")
                total = pending.count + len(pending.messages)
                if expected_messages is not None and expected_messages != total:
                    raise InvalidExportError(
                        f"line {number}: the session lists {expected_messages} messages but "
                        f"{total} were read; the file is truncated or edited"
                    )
                await pending.flush(store, final=True)
                imported.append(pending.record.ref)
                pending = None
            else:
                raise InvalidExportError(f"line {number}: unknown line type {kind!r}")
        except (msgspec.ValidationError, KeyError, TypeError) as exc:
            raise InvalidExportError(f"line {number} is malformed: {exc}") from None
    if pending is not None:
        raise InvalidExportError("the file ends inside a session (no 'end' line): truncated?")
    return imported


async def _start(store: Store, obj: dict[str, Any], replace: bool, number: int) -> _Pending:
    if obj.get("format") != FORMAT:
        raise InvalidExportError(f"line {number}: not a chatstate session export")
    version = obj.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InvalidExportError(
            f"line {number}: export format version {version!r} is newer than this chatstate "
            f"reads ({FORMAT_VERSION}); upgrade chatstate"
        )
    record = msgspec.convert(obj["record"], SessionRecord)
    current = await store.load(record.key)
    expected = 0
    if current is not None:
        same = current.id == record.id
        if (current.status is Status.ACTIVE or same) and not replace:
            raise ChatstateError(
                f"{record.key} already has a session ({current.id}); pass replace=True "
                "(--replace) to overwrite it"
            )
        if replace and (current.status is Status.ACTIVE or same):
            await store.delete(record.key, current.id)
            current = await store.load(record.key)
        expected = current.version if current is not None else 0
    if await store.load_by_id(record.id) is not None:
        if not replace:
            raise ChatstateError(f"session id {record.id} already exists; pass replace=True")
        stale = await store.load_by_id(record.id)
        assert stale is not None
        await store.delete(stale.key, stale.id)
    return _Pending(record, expected)
