"""Lifecycle policy: when a session expires, when the user is warned, how long closed sessions
are kept. The engine applies it on every commit; `lifecycle.py` acts on the due times it sets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import ConfigurationError
from .model import SessionRecord, Status


@dataclass(frozen=True)
class Extension:
    """Give active users more time: once a session has more than `after_messages` messages,
    its idle timeout grows by `extra_seconds` (seed 003: +2 minutes after 5 messages)."""

    after_messages: int = 5
    extra_seconds: float = 120.0


@dataclass(frozen=True)
class LifecyclePolicy:
    idle_timeout: float | None = 30 * 60.0  # sliding: from the last activity
    max_age: float | None = 24 * 3600.0  # absolute: from creation
    warn_before: float | None = None  # warn this long before expiry; None = no warning
    extension: Extension | None = None
    retention: float | None = 7 * 24 * 3600.0  # purge closed/expired sessions after this
    carry_over: tuple[str, ...] = field(default=())  # data fields copied into the next session

    def deadline(self, record: SessionRecord, now: float) -> float | None:
        deadline: float | None = None
        if self.idle_timeout is not None:
            idle = self.idle_timeout
            ext = self.extension
            if ext is not None and record.counters.messages > ext.after_messages:
                idle += ext.extra_seconds
            deadline = now + idle
        if self.max_age is not None:
            cap = record.created_at + self.max_age
            deadline = cap if deadline is None else min(deadline, cap)
        return deadline

    def touch(self, record: SessionRecord, now: float) -> None:
        """Activity happened at `now`: move the sliding deadline and the warning."""
        record.last_activity = now
        if record.status is not Status.ACTIVE:
            self.closed(record, now)
            return
        deadline = self.deadline(record, now)
        record.expires_at = deadline
        warn = self.warn_before
        if deadline is not None and warn is not None and deadline - warn > now:
            record.warn_at = deadline - warn
        else:
            record.warn_at = None

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
        cls, environ: dict[str, str] | None = None, **overrides: object
    ) -> LifecyclePolicy:
        """Read CHATSTATE_SESSION_TIMEOUT_MINUTES (or seed 004's SESSION_TIMEOUT_MINUTES),
        CHATSTATE_WARN_BEFORE_MINUTES, CHATSTATE_MAX_AGE_HOURS and CHATSTATE_RETENTION_DAYS."""
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
                if value < 0:
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
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
