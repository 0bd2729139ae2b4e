"""Statistics of conversations (seed 001): per session and across the store.

Per-session figures come from the record (O(1)) plus one count of stored messages; global
figures are aggregated inside the store (`Store.stats`), never by loading every record.
"""

from __future__ import annotations

import msgspec

from ..model import SessionRecord
from ..stores.base import SessionFilter, Store
from .history import HistoryReader, get_state


class SessionMemoryStats(msgspec.Struct, kw_only=True):
    key: str
    session_id: str
    status: str
    messages: int  # stored history messages (a fork's inherited prefix included)
    turns: int  # incoming updates handled
    tool_calls: int
    tool_errors: int
    errors: int  # handler errors
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    total_tokens: int
    model_calls: int
    average_latency_ms: float
    summaries: int
    unsummarised_tokens: int | None  # None until counted
    duration_seconds: float
    created_at: float
    last_activity: float
    forked_from: str | None = None


class GlobalMemoryStats(msgspec.Struct, kw_only=True):
    sessions: int
    active_sessions: int
    messages: int
    tokens: int
    average_messages_per_session: float
    average_duration_seconds: float
    by_platform: dict[str, int]
    by_status: dict[str, int]


async def session_stats(reader: HistoryReader, record: SessionRecord) -> SessionMemoryStats:
    usage = record.usage
    state = get_state(record)
    summaries = await reader.summaries(record)
    messages = await reader.count(record)
    return SessionMemoryStats(
        key=record.key,
        session_id=record.id,
        status=record.status.value,
        messages=messages,
        turns=record.counters.messages,
        tool_calls=record.counters.tool_calls,
        tool_errors=usage.tool_errors,
        errors=record.counters.errors,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        total_tokens=usage.input_tokens + usage.output_tokens,
        model_calls=usage.model_calls,
        average_latency_ms=usage.latency_ms / usage.model_calls if usage.model_calls else 0.0,
        summaries=len(summaries),
        unsummarised_tokens=(
            state.live_tokens if state is not None and state.live_tokens >= 0 else None
        ),
        duration_seconds=max(0.0, record.last_activity - record.created_at),
        created_at=record.created_at,
        last_activity=record.last_activity,
        forked_from=record.labels.get("forked_from"),
    )


async def global_stats(store: Store, filter: SessionFilter | None = None) -> GlobalMemoryStats:
    """Totals over the store: sessions, messages, tokens, averages and sessions by platform."""
    stats = await store.stats(filter)
    total = stats.total
    return GlobalMemoryStats(
        sessions=total,
        active_sessions=stats.by_status.get("active", 0),
        messages=stats.messages,
        tokens=stats.tokens,
        average_messages_per_session=stats.messages / total if total else 0.0,
        average_duration_seconds=stats.avg_duration_seconds,
        by_platform=dict(stats.by_platform),
        by_status=dict(stats.by_status),
    )
