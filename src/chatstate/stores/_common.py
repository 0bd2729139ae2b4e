"""Small helpers shared by the embedded stores: listing cursors, filters and head decoding."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from ..errors import ConfigurationError
from ..model import SessionRecord, Status
from .base import DUE_KINDS, SessionFilter

_ACTIVE = Status.ACTIVE.value


class RecordHead(msgspec.Struct, kw_only=True, gc=False):
    """The few fields of a stored record that indexes need, decoded without the rest
    (msgspec skips the other fields, so this is several times cheaper than a full decode)."""

    id: str
    key: str = ""
    version: int = 0
    status: str = "active"
    last_activity: float = 0.0
    expires_at: float | None = None
    warn_at: float | None = None
    purge_at: float | None = None

    def due_at(self, kind: str) -> float | None:
        """Same rule as `SessionRecord.due_at`."""
        if kind == "purge":
            return self.purge_at
        if self.status != _ACTIVE:
            return None
        return self.warn_at if kind == "warn" else self.expires_at


def head_decoder(format: str) -> Any:
    if format == "json":
        return msgspec.json.Decoder(RecordHead)
    return msgspec.msgpack.Decoder(RecordHead)


def check_kind(kind: str) -> None:
    if kind not in DUE_KINDS:
        raise ConfigurationError(f"unknown due kind {kind!r}; use one of {', '.join(DUE_KINDS)}")


def encode_cursor(last_activity: float, session_id: str) -> str:
    """An opaque position in the listing order (last_activity desc, then id asc)."""
    raw = msgspec.json.encode([last_activity, session_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = msgspec.json.decode(base64.urlsafe_b64decode(padded))
        last_activity, session_id = value
        if not isinstance(session_id, str) or not isinstance(last_activity, (int, float)):
            raise ValueError("bad cursor fields")
        return float(last_activity), session_id
    except (binascii.Error, msgspec.DecodeError, ValueError, TypeError):
        raise ConfigurationError(
            f"listing cursor {cursor!r} is not valid; pass back the next_cursor of a previous "
            "page unchanged (or None for the first page)"
        ) from None


def after_cursor(last_activity: float, session_id: str, cursor: tuple[float, str]) -> bool:
    """True when a record sorts after the cursor position."""
    return last_activity < cursor[0] or (last_activity == cursor[0] and session_id > cursor[1])


def prefix_upper_bound(prefix: str) -> str:
    """The smallest string greater than every string starting with `prefix` (for ranges)."""
    return prefix + "\U0010ffff"


def matches(record: SessionRecord, f: SessionFilter | None) -> bool:
    """Whether a record passes every field of the filter (for stores that filter in Python)."""
    if f is None:
        return True
    if f.status is not None and record.status.value != f.status:
        return False
    if f.platform is not None and record.platform != f.platform:
        return False
    if f.scope is not None and record.scope != f.scope:
        return False
    if f.flow is not None and (record.flow is None or record.flow.name != f.flow):
        return False
    if f.step is not None and (record.flow is None or record.flow.step != f.step):
        return False
    if f.updated_since is not None and record.last_activity < f.updated_since:
        return False
    if f.updated_before is not None and record.last_activity >= f.updated_before:
        return False
    return f.key_prefix is None or record.key.startswith(f.key_prefix)


def flow_step_name(flow: str, step: str | None) -> str:
    """The `SessionStats.by_flow_step` key of a flow position."""
    return f"{flow}:{step or ''}"


def record_tokens(record: SessionRecord) -> int:
    return record.usage.input_tokens + record.usage.output_tokens
