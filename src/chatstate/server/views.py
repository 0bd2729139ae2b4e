"""Plain-dict views of records and messages for JSON responses."""

from __future__ import annotations

from typing import Any

import msgspec

from ..model import Message, SessionRecord, Status, Summary


def remaining(record: SessionRecord, now: float) -> float | None:
    if record.status is not Status.ACTIVE or record.expires_at is None:
        return None
    return round(max(0.0, record.expires_at - now), 3)


def session_view(record: SessionRecord, now: float, *, current: bool = True) -> dict[str, Any]:
    flow = None
    if record.flow is not None:
        f = record.flow
        flow = {
            "name": f.name, "version": f.version, "step": f.step, "stack": list(f.stack),
            "attempts": f.attempts, "entered_at": f.entered_at, "data": dict(f.data),
        }
    return {
        "id": record.id,
        "key": record.key,
        "platform": record.platform,
        "scope": record.scope,
        "status": record.status.value,
        "state": record.state,
        "data": record.data,
        "flow": flow,
        "labels": record.labels,
        "counters": msgspec.to_builtins(record.counters) or {},
        "usage": msgspec.to_builtins(record.usage) or {},
        "created_at": record.created_at,
        "last_activity": record.last_activity,
        "expires_at": record.expires_at,
        "warn_at": record.warn_at,
        "purge_at": record.purge_at,
        "closed_at": record.closed_at,
        "close_reason": record.close_reason,
        "last_error": record.last_error,
        "version": record.version,
        "remaining_seconds": remaining(record, now),
        "current": current,
    }


def message_view(message: Message) -> dict[str, Any]:
    return {
        "seq": message.seq,
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "tool_call_id": message.tool_call_id,
        "tool_calls": message.tool_calls,
        "metadata": message.metadata,
        "created_at": message.created_at,
        "tokens": message.tokens,
    }


def summary_view(summary: Summary) -> dict[str, Any]:
    return {
        "start_seq": summary.start_seq,
        "end_seq": summary.end_seq,
        "content": summary.content,
        "tokens": summary.tokens,
        "created_at": summary.created_at,
    }
