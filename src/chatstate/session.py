"""`Session`: what a handler holds while it handles one update.

It wraps the loaded `SessionRecord`, a `temp` dict that is never stored, and the history changes
staged for this update. The engine commits everything in one atomic write when the handler
returns, and throws it all away when the handler raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .model import (
    Counters,
    FlowPosition,
    HistoryChanges,
    Message,
    SessionKey,
    SessionRecord,
    Status,
    Summary,
    Usage,
)

if TYPE_CHECKING:
    from .engine import SessionManager


# Data keys the library keeps for itself (memory fork links, lifecycle overrides): a reset of
# the conversation keeps them because they describe the session, not the operation.
RESERVED_DATA_PREFIXES = ("_chatstate", "_lifecycle")


class Session:
    __slots__ = (
        "_after_commit", "_history", "_key", "created", "manager", "record", "temp",
    )

    def __init__(
        self,
        record: SessionRecord,
        *,
        key: SessionKey,
        manager: SessionManager | None = None,
        created: bool = False,
    ) -> None:
        self.record = record
        self._key = key
        self.manager = manager
        self.created = created  # True when this update created the session
        self.temp: dict[str, Any] = {}  # scratch for this update only; never persisted
        # Staged history, made on first use: most updates stage none (the engine reads
        # `_history` to tell without building one).
        self._history: HistoryChanges | None = None
        self._after_commit: list[Callable[[], object]] | None = None

    # -- identity and status ----------------------------------------------------------------

    @property
    def key(self) -> SessionKey:
        return self._key

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def status(self) -> Status:
        return self.record.status

    @property
    def is_active(self) -> bool:
        return self.record.status is Status.ACTIVE

    # -- state and data ---------------------------------------------------------------------

    @property
    def state(self) -> str | None:
        return self.record.state

    @state.setter
    def state(self, value: str | None) -> None:
        self.record.state = value

    @property
    def data(self) -> dict[str, Any]:
        return self.record.data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        self.record.data = dict(value)

    @property
    def flow(self) -> FlowPosition | None:
        return self.record.flow

    @flow.setter
    def flow(self, value: FlowPosition | None) -> None:
        self.record.flow = value

    @property
    def labels(self) -> dict[str, str]:
        return self.record.labels

    def set_label(self, name: str, value: str | None) -> None:
        """Set a small indexed fact (e.g. user_type, intent) that analytics can group by."""
        if value is None:
            self.record.labels.pop(name, None)
        else:
            self.record.labels[name] = str(value)

    @property
    def counters(self) -> Counters:
        return self.record.counters

    @property
    def usage(self) -> Usage:
        return self.record.usage

    @property
    def created_at(self) -> float:
        return self.record.created_at

    @property
    def last_activity(self) -> float:
        return self.record.last_activity

    @property
    def expires_at(self) -> float | None:
        return self.record.expires_at

    def on_commit(self, callback: Callable[[], object]) -> None:
        """Call `callback()` once this update's commit has succeeded (never if the handler
        fails or the commit is refused), like Django's `transaction.on_commit`: the place
        for side effects that must only follow state that was really stored. An exception
        in a callback is logged; the commit stands."""
        if self._after_commit is None:
            self._after_commit = []
        self._after_commit.append(callback)

    # -- history ----------------------------------------------------------------------------

    @property
    def history(self) -> HistoryChanges:
        """The history changes staged by this update (committed with it)."""
        history = self._history
        if history is None:
            history = self._history = HistoryChanges()
        return history

    @history.setter
    def history(self, value: HistoryChanges) -> None:
        self._history = value

    def append(self, *messages: Message) -> list[Message]:
        """Stage messages for this session's history; they get sequence numbers now and are
        written with the commit (or not at all if the handler fails)."""
        counters = self.record.counters
        now = self.manager.clock.now() if self.manager is not None else 0.0
        for message in messages:
            counters.last_seq += 1
            message.seq = counters.last_seq
            if not message.created_at:
                message.created_at = now
            self.history.append.append(message)
        return list(messages)

    def add_summary(self, summary: Summary) -> None:
        self.history.summaries.append(summary)

    def drop_messages_through(self, seq: int) -> None:
        """Delete stored messages with seq <= `seq` when the update commits."""
        current = self.history.drop_messages_through or 0
        self.history.drop_messages_through = max(current, seq)
        # The record says so too: readers holding messages in memory (the context tail
        # cache, other processes') learn from it which ones are gone.
        counters = self.record.counters
        counters.dropped_through = max(counters.dropped_through, seq)

    def drop_summaries(self) -> None:
        self.history.drop_summaries = True

    # -- ending -----------------------------------------------------------------------------

    def close(self, reason: str = "completed") -> None:
        """Close the session when this update commits; the next update starts a new one."""
        record = self.record
        if record.status is not Status.ACTIVE:
            return
        record.status = Status.CLOSED
        record.close_reason = reason
        record.closed_at = self.manager.clock.now() if self.manager is not None else 0.0
        record.warn_at = None
        record.expires_at = None

    @property
    def closing(self) -> bool:
        return self.record.status is not Status.ACTIVE

    def reset(self, keep: Iterable[str] = ()) -> None:
        """Clear the operation state (state, flow, data) but keep the id, creation time and
        the data fields named in `keep` (plus the manager's `keep_on_reset`)."""
        keep_all = set(keep)
        if self.manager is not None:
            keep_all.update(self.manager.keep_on_reset)
        kept = {
            k: v for k, v in self.record.data.items()
            if k in keep_all or k.startswith(RESERVED_DATA_PREFIXES)
        }
        defaults = self.manager.default_data() if self.manager is not None else {}
        self.record.data = {**defaults, **kept}
        self.record.state = None
        self.record.flow = None
        self.record.counters.consecutive_errors = 0
        self.temp.clear()

    def to_dict(self) -> dict[str, Any]:
        from msgspec import to_builtins

        out: dict[str, Any] = to_builtins(self.record)
        return out

    def __repr__(self) -> str:
        return f"<Session {self._key} id={self.id} v{self.version} {self.status.value}>"
