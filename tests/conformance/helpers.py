"""Small builders shared by the conformance tests."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import msgspec
import pytest

from chatstate.model import HistoryChanges, Message, SessionRecord, Summary, new_record
from chatstate.stores.base import Store

T0 = 1_700_000_000.0


def unique_key(name: str = "u") -> str:
    """A canonical key no other test uses (stores may be shared between test runs)."""
    return f"test:user:{name}{uuid.uuid4().hex[:10]}"


def make(key: str, version: int = 1, **fields: Any) -> SessionRecord:
    created = fields.pop("created_at", T0)
    activity = fields.pop("last_activity", created)
    record = new_record(key, now=created, **fields)
    record.last_activity = activity
    record.version = version
    return record


def bump(record: SessionRecord, **fields: Any) -> SessionRecord:
    """A copy of `record` as the next commit would write it (version + 1)."""
    fields.setdefault("version", record.version + 1)
    return msgspec.structs.replace(record, **fields)


def messages(*texts: str, start: int = 1, role: str = "user") -> list[Message]:
    return [
        Message(role=role, content=text, seq=start + i, tokens=len(text.split()))
        for i, text in enumerate(texts)
    ]


def appended(*texts: str, start: int = 1) -> HistoryChanges:
    return HistoryChanges(append=messages(*texts, start=start))


def summary(start: int, end: int, text: str) -> Summary:
    return Summary(start_seq=start, end_seq=end, content=text)


async def put_raw(store: Store, key: str, raw: bytes) -> None:
    """Overwrite the stored bytes of the current record at `key` through the backend's
    documented maintenance hook `_put_raw(key, raw)` (sync or async)."""
    hook = getattr(store, "_put_raw", None)
    if hook is None:
        pytest.fail(f"{type(store).__name__} lacks the _put_raw(key, raw) test/maintenance hook")
    result = hook(key, raw)
    if inspect.isawaitable(result):
        await result
