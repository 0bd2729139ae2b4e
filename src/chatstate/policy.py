"""Lifecycle policy: when a session expires, when the user is warned, how long closed sessions
are kept, what carries over into the next session. The engine applies it on every commit;
`lifecycle.py` acts on the due times it sets.

Timeouts are resolved per record, most specific first:

1. a per-session override (`set_timeouts(session, idle_timeout=...)`, kept in the record under
   the reserved data key ``"_lifecycle"``),
2. the timeouts of the flow the session is in (``flow.timeouts`` of a flow registered with
   `LifecyclePolicy.with_flows`),
3. the manager's policy.

A value of None in an override switches the feature off for that session (e.g. no warning).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

from .errors import ConfigurationError
from .model import SessionRecord, Status

LIFECYCLE_KEY = "_lifecycle"
"""Reserved key of `record.data` where per-session lifecycle settings and marks live."""

_OVERRIDABLE = ("idle_timeout", "max_age", "warn_before", "expiry_message", "warning_message")


@dataclass(frozen=True)
class Extension:
    """Give active users more time.

    Once a session has more than `after_messages` messages its idle timeout grows by
    `extra_seconds` (seed 003: +2 minutes after 5 messages). With `every_messages` the bonus is
    granted again for each further `every_messages` messages, never beyond `max_extra_seconds`.
    Several rules may be combined in a tuple (their bonuses add up), or any function of the
    message count may be given instead.
    """

    after_messages: int = 5
    extra_seconds: float = 120.0
    every_messages: int | None = None
    max_extra_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.after_messages < 0 or self.extra_seconds < 0:
            raise ConfigurationError(
                "Extension(after_messages, extra_seconds) must not be negative, got "
                f"{self.after_messages}, {self.extra_seconds}"
            )
        if self.every_messages is not None and self.every_messages <= 0:
            raise ConfigurationError(
                f"Extension.every_messages must be a positive count, got {self.every_messages}"
            )

    def extra(self, messages: int) -> float:
        """Seconds added to the idle timeout of a session that has had `messages` messages."""
        if messages <= self.after_messages:
            return 0.0
        grants = 1
        if self.every_messages is not None:
            grants += (messages - self.after_messages - 1) // self.every_messages
        total = grants * self.extra_seconds
        if self.max_extra_seconds is not None:
            total = min(total, self.max_extra_seconds)
        return total


ExtensionRule = Extension | Sequence[Extension] | Callable[[int], float]


class HasTimeouts(Protocol):
    """What the policy reads from a flow: its name and its `timeouts` (may be None)."""

    name: str
    timeouts: Any


@dataclass(frozen=True)
class Timeouts:
    """The timeouts that apply to one session right now (see `LifecyclePolicy.effective`)."""

    idle_timeout: float | None
    max_age: float | None
    warn_before: float | None
    expiry_message: str | None = None
    warning_message: str | None = None


@dataclass(frozen=True)
class LifecyclePolicy:
    idle_timeout: float | None = 30 * 60.0  # sliding: from the last activity
    max_age: float | None = 24 * 3600.0  # absolute: from creation
    warn_before: float | None = None  # warn this long before expiry; None = no warning
    extension: ExtensionRule | None = None
    retention: float | None = 7 * 24 * 3600.0  # purge closed/expired sessions after this
    carry_over: tuple[str, ...] = field(default=())  # data fields copied into the next session
    #: flow name -> an object with idle_timeout / warn_before / expiry_message (a FlowTimeouts)
    flows: Mapping[str, Any] = field(default_factory=dict)
    expiry_message: str | None = None  # default text handed to on_expire hooks
    warning_message: str | None = None  # default text handed to on_warning hooks

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "max_age", "warn_before", "retention"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0
                                      or math.isnan(value)):
                raise ConfigurationError(
                    f"LifecyclePolicy.{name} must be seconds >= 0 or None, got {value!r}"
                )
        if isinstance(self.carry_over, str):
            raise ConfigurationError(
                "LifecyclePolicy.carry_over is a tuple of data field names, e.g. ('language',)"
            )

    # -- configuration helpers --------------------------------------------------------------

    def with_flows(self, *flows: HasTimeouts) -> LifecyclePolicy:
        """A copy that applies each flow's `timeouts` while a session is inside that flow."""
        merged = dict(self.flows)
        for flow in flows:
            timeouts = getattr(flow, "timeouts", None)
            name = getattr(flow, "name", None)
            if not isinstance(name, str):
                raise ConfigurationError(f"{flow!r} has no flow name; pass Flow objects")
            if timeouts is not None:
                merged[name] = timeouts
        return replace(self, flows=merged)

    def replace(self, **changes: Any) -> LifecyclePolicy:
        return replace(self, **changes)

    # -- resolution -------------------------------------------------------------------------

    @cached_property
    def _own_timeouts(self) -> Timeouts:
        return Timeouts(**{name: getattr(self, name) for name in _OVERRIDABLE})

    def effective(self, record: SessionRecord) -> Timeouts:
        """The timeouts for `record`: session override, else its flow's, else this policy's."""
        if (record.flow is None or not self.flows) and LIFECYCLE_KEY not in record.data:
            return self._own_timeouts  # the common case: computed once per policy
        values: dict[str, Any] = {name: getattr(self, name) for name in _OVERRIDABLE}
        if record.flow is not None and self.flows:
            flow_timeouts = self.flows.get(record.flow.name)
            if flow_timeouts is not None:
                for name in _OVERRIDABLE:
                    value = getattr(flow_timeouts, name, None)
                    if value is not None:  # a flow only ever sets, never unsets
                        values[name] = value
        override = session_timeouts(record)
        for name in _OVERRIDABLE:
            if name in override:
                values[name] = override[name]
        return Timeouts(**values)

    def extra_seconds(self, messages: int) -> float:
        """The extension earned by a session with `messages` messages."""
        rule = self.extension
        if rule is None:
            return 0.0
        if isinstance(rule, Extension):
            return rule.extra(messages)
        if callable(rule):
            return max(0.0, float(rule(messages)))
        return sum(r.extra(messages) for r in rule)

    def deadline(
        self, record: SessionRecord, now: float, timeouts: Timeouts | None = None
    ) -> float | None:
        if timeouts is None:
            timeouts = self.effective(record)
        deadline: float | None = None
        if timeouts.idle_timeout is not None:
            idle = timeouts.idle_timeout
            if self.extension is not None:
                idle += self.extra_seconds(record.counters.messages)
            deadline = now + idle
        if timeouts.max_age is not None:
            cap = record.created_at + timeouts.max_age
            deadline = cap if deadline is None else min(deadline, cap)
        return deadline

    # -- what the engine calls --------------------------------------------------------------

    def touch(self, record: SessionRecord, now: float) -> float:
        """Activity happened at `now`: move the sliding deadline and the warning.

        Returns the seconds by which this message grew the session's extension (0.0 when it
        did not), so the engine can announce `session.extended`."""
        record.last_activity = now
        if record.status is not Status.ACTIVE:
            self.closed(record, now)
            return 0.0
        timeouts = self.effective(record)
        deadline = self.deadline(record, now, timeouts)
        record.expires_at = deadline
        warn = timeouts.warn_before
        if deadline is not None and warn is not None and deadline - warn > now:
            record.warn_at = deadline - warn
        else:
            record.warn_at = None
        if self.extension is None:
            return 0.0
        messages = record.counters.messages
        return max(0.0, self.extra_seconds(messages) - self.extra_seconds(messages - 1))

    def closed(self, record: SessionRecord, now: float) -> None:
        """The session ended: no more timers, only the purge after retention."""
        record.warn_at = None
        record.expires_at = None
        if record.purge_at is None:
            record.purge_at = None if self.retention is None else now + self.retention

    def is_expired(self, record: SessionRecord, now: float) -> bool:
        return (
            record.status is Status.ACTIVE
            and record.expires_at is not None
            and record.expires_at <= now
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> LifecyclePolicy:
        """Read CHATSTATE_SESSION_TIMEOUT_MINUTES (or seed 004's SESSION_TIMEOUT_MINUTES),
        CHATSTATE_WARN_BEFORE_MINUTES, CHATSTATE_MAX_AGE_HOURS, CHATSTATE_RETENTION_DAYS and
        CHATSTATE_EXTEND_MINUTES (with CHATSTATE_EXTEND_AFTER_MESSAGES, default 5)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}

        def number(*names: str) -> float | None:
            for name in names:
                raw = env.get(name)
                if raw is None or raw.strip() == "":
                    continue
                try:
                    value = float(raw)
                except ValueError:
                    raise ConfigurationError(f"{name}={raw!r} is not a number") from None
                if value < 0 or math.isnan(value):
                    raise ConfigurationError(f"{name}={raw!r} must not be negative")
                return value
            return None

        timeout = number("CHATSTATE_SESSION_TIMEOUT_MINUTES", "SESSION_TIMEOUT_MINUTES")
        if timeout is not None:
            values["idle_timeout"] = timeout * 60 or None
        if (v := number("CHATSTATE_WARN_BEFORE_MINUTES")) is not None:
            values["warn_before"] = v * 60 or None
        if (v := number("CHATSTATE_MAX_AGE_HOURS")) is not None:
            values["max_age"] = v * 3600 or None
        if (v := number("CHATSTATE_RETENTION_DAYS")) is not None:
            values["retention"] = v * 86400
        # Seed 003's "+2 minutes once a session has more than 5 messages".
        extend = number("CHATSTATE_EXTEND_MINUTES")
        if extend:
            after = number("CHATSTATE_EXTEND_AFTER_MESSAGES")
            values["extension"] = Extension(
                after_messages=5 if after is None else int(after), extra_seconds=extend * 60
            )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


# -- per-session settings and marks ------------------------------------------------------------


def lifecycle_data(record: SessionRecord, *, create: bool = False) -> dict[str, Any]:
    """The reserved ``record.data["_lifecycle"]`` dict (a fresh empty dict if absent and not
    `create`)."""
    section = record.data.get(LIFECYCLE_KEY)
    if isinstance(section, dict):
        return section
    section = {}
    if create:
        record.data[LIFECYCLE_KEY] = section
    return section


def session_timeouts(record: SessionRecord) -> dict[str, Any]:
    """The per-session timeout override of `record` (only the keys that were set)."""
    raw = lifecycle_data(record).get("timeouts")
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if k in _OVERRIDABLE}


_UNSET: Any = object()


def set_timeouts(
    target: Any,
    *,
    idle_timeout: float | None = _UNSET,
    max_age: float | None = _UNSET,
    warn_before: float | None = _UNSET,
    expiry_message: str | None = _UNSET,
    warning_message: str | None = _UNSET,
) -> None:
    """Override timeouts for one session (a `Session` or a `SessionRecord`); None switches a
    feature off. Takes effect at the session's next activity, i.e. when the update commits
    with ``message=True``: call it from a handler."""
    record: SessionRecord = getattr(target, "record", target)
    given = {
        "idle_timeout": idle_timeout, "max_age": max_age, "warn_before": warn_before,
        "expiry_message": expiry_message, "warning_message": warning_message,
    }
    section = lifecycle_data(record, create=True)
    current = dict(section.get("timeouts") or {})
    for name, value in given.items():
        if value is _UNSET:
            continue
        if name in ("idle_timeout", "max_age", "warn_before") and value is not None and (
            not isinstance(value, (int, float)) or value <= 0
        ):
            raise ConfigurationError(f"{name} must be positive seconds or None, got {value!r}")
        current[name] = value
    section["timeouts"] = current


def clear_timeouts(target: Any) -> None:
    """Drop the per-session override: the flow's or the manager's timeouts apply again."""
    record: SessionRecord = getattr(target, "record", target)
    lifecycle_data(record).pop("timeouts", None)

