"""chatstate: conversation state for chat bots and LLM agents.

    from chatstate import SessionManager, SessionKey

    manager = SessionManager("sqlite:///chatstate.db")
    async with manager.session(SessionKey.user("telegram", 42)) as s:
        s.data["name"] = "Ada"

Only the core is imported here; optional backends and adapters are imported by their own
modules when used, so `import chatstate` never needs an extra.
"""

from __future__ import annotations

from .clock import Clock, FakeClock, SystemClock
from .engine import SessionBusy, SessionManager
from .errors import (
    ChatstateError,
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    InvalidDataError,
    InvalidKeyError,
    LeaseLost,
    LockTimeout,
    RecordTooLarge,
    SchemaError,
    SessionClosed,
    StoreUnavailable,
)
from .events import Event, EventBus
from .model import (
    Attachment,
    Button,
    HistoryChanges,
    Incoming,
    Message,
    Outgoing,
    Scope,
    SessionKey,
    SessionRecord,
    Status,
    Summary,
)
from .policy import Extension, LifecyclePolicy
from .session import Session
from .stores import SessionFilter, Store, open_store

__version__ = "0.1.0"

__all__ = [
    "Attachment",
    "Button",
    "ChatstateError",
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "CorruptRecordError",
    "Event",
    "EventBus",
    "Extension",
    "FakeClock",
    "HistoryChanges",
    "Incoming",
    "InvalidDataError",
    "InvalidKeyError",
    "LeaseLost",
    "LifecyclePolicy",
    "LockTimeout",
    "Message",
    "Outgoing",
    "RecordTooLarge",
    "SchemaError",
    "Scope",
    "Session",
    "SessionBusy",
    "SessionClosed",
    "SessionFilter",
    "SessionKey",
    "SessionManager",
    "SessionRecord",
    "Status",
    "Store",
    "StoreUnavailable",
    "Summary",
    "SystemClock",
    "__version__",
    "open_store",
]
