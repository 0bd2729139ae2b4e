"""The usage ledger: what model calls and tools cost a session.

Running totals live in the record (`SessionRecord.usage`: input, output and cached tokens, model
calls, tool errors, latency; `counters.tool_calls`), so reading them is O(1) and they commit
atomically with the update that caused them. The per-turn record of a model call is kept on the
assistant message it produced (`Message.usage`), so it is stored in history, not in the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ..model import Message, SessionRecord
from ..session import Session


class CallUsage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one model call reported (normalised from OpenAI / Anthropic / Agents SDK shapes)."""

    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    latency_ms: float = 0.0
    estimated_input_tokens: int | None = None  # what chatstate counted for the same prompt

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def normalise_usage(usage: Mapping[str, Any] | CallUsage, **overrides: Any) -> CallUsage:
    """Read a provider's usage dict: OpenAI chat (prompt_tokens, completion_tokens,
    prompt_tokens_details.cached_tokens), OpenAI responses / Agents SDK (input_tokens,
    output_tokens, input_tokens_details.cached_tokens) or Anthropic (cache_read_input_tokens)."""
    if isinstance(usage, CallUsage):
        return msgspec.structs.replace(usage, **overrides) if overrides else usage
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = _int(usage.get("cached_tokens")) or _int(
        details.get("cached_tokens") if isinstance(details, Mapping) else 0
    ) or _int(usage.get("cache_read_input_tokens"))
    fields: dict[str, Any] = {
        "model": usage.get("model"),
        "input_tokens": _int(usage.get("input_tokens", usage.get("prompt_tokens"))),
        "output_tokens": _int(usage.get("output_tokens", usage.get("completion_tokens"))),
        "cached_tokens": cached,
        "latency_ms": float(usage.get("latency_ms") or 0.0),
    }
    estimated = usage.get("estimated_input_tokens")
    if estimated is not None:
        fields["estimated_input_tokens"] = _int(estimated)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return CallUsage(**fields)


def add_call(record: SessionRecord, call: CallUsage) -> None:
    """Add one model call to the record's running totals."""
    totals = record.usage
    totals.input_tokens += call.input_tokens
    totals.output_tokens += call.output_tokens
    totals.cached_tokens += call.cached_tokens
    totals.model_calls += 1
    totals.latency_ms += call.latency_ms


def record_model_call(
    session: Session,
    usage: Mapping[str, Any] | CallUsage,
    *,
    message: Message | None = None,
    **overrides: Any,
) -> CallUsage:
    """Record a model call: add it to the session's totals and keep it on `message` (by default
    the newest assistant message staged in this update) as the per-turn record."""
    call = normalise_usage(usage, **overrides)
    add_call(session.record, call)
    target = message
    if target is None:
        for staged in reversed(session.history.append):
            if staged.role == "assistant":
                target = staged
                break
    if target is not None:
        target.usage = msgspec.to_builtins(call)
    return call


def record_tool_call(session: Session, *, error: bool = False, count: int = 1) -> None:
    """Count tool calls that are not stored as history messages (stored ones count themselves)."""
    session.record.counters.tool_calls += count
    if error:
        session.record.usage.tool_errors += count


class UsageTotals(msgspec.Struct, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    latency_ms: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def average_latency_ms(self) -> float:
        return self.latency_ms / self.model_calls if self.model_calls else 0.0


def totals(record: SessionRecord) -> UsageTotals:
    """The session's running totals (O(1): read from the record)."""
    usage = record.usage
    return UsageTotals(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        model_calls=usage.model_calls,
        tool_calls=record.counters.tool_calls,
        tool_errors=usage.tool_errors,
        latency_ms=usage.latency_ms,
    )


def call_of(message: Message) -> CallUsage | None:
    """The per-turn usage record kept on a message, if any."""
    if not message.usage:
        return None
    return normalise_usage(message.usage)
