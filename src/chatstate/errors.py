"""Typed errors. Each one says what went wrong and what to do about it."""

from __future__ import annotations


class ChatstateError(Exception):
    """Base class of every error raised by chatstate."""


class ConfigurationError(ChatstateError):
    """A setting, URL or argument is wrong; the message names it and the accepted values."""


class InvalidKeyError(ChatstateError, ValueError):
    """A session key is malformed (unknown scope, empty id, separator inside an id)."""


class ConflictError(ChatstateError):
    """A commit lost a compare-and-set race: the stored version is not the one loaded.

    Nothing was written. Reload and apply the change again (the engine does this for
    handlers marked safe to retry).
    """

    def __init__(self, key: str, expected: int, actual: int | None = None) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        found = "no record" if actual is None else f"version {actual}"
        super().__init__(
            f"session {key!r} changed concurrently: expected version {expected}, found {found}; "
            "reload the session and apply the change again"
        )


class LeaseLost(ConflictError):
    """The writer's lease expired and another process took the session over."""

    def __init__(self, key: str, token: int) -> None:
        self.token = token
        ChatstateError.__init__(
            self,
            f"lease on session {key!r} (token {token}) expired and was taken over; the newer "
            "data was kept. Renew the lease more often or raise lease_seconds",
        )
        self.key = key
        self.expected = -1
        self.actual = None


class LockTimeout(ChatstateError):
    """The session stayed busy (another update held it) longer than the allowed wait."""

    def __init__(self, key: str, waited: float) -> None:
        self.key = key
        self.waited = waited
        super().__init__(
            f"session {key!r} is busy with another update; gave up after {waited:.2f}s "
            "(raise lock_timeout or use the 'busy' policy to reply to the user)"
        )


class StoreUnavailable(ChatstateError):
    """The backend could not be reached or did not answer in time. Nothing was half-written."""


class SessionClosed(ChatstateError):
    """The session was closed or expired; open a new one for the next conversation."""


class CorruptRecordError(ChatstateError):
    """A stored record could not be decoded or repaired. The engine quarantines it."""

    def __init__(self, key: str, raw: bytes, reason: str) -> None:
        self.key = key
        self.raw = raw
        self.reason = reason
        super().__init__(f"stored session {key!r} is unreadable ({reason}); it will be quarantined")


class RecordTooLarge(ChatstateError, ValueError):
    """The encoded record exceeds the configured limit; nothing was written."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"session {key!r} encodes to {size} bytes, over the limit of {limit}; keep large "
            "payloads (files, long texts) outside the session or raise max_record_bytes"
        )


class InvalidDataError(ChatstateError, TypeError):
    """Data put into a session cannot be stored as JSON."""


class SchemaError(ChatstateError):
    """The database was not created by chatstate or is newer than this code."""


class FlowError(ChatstateError):
    """A flow was declared or driven wrongly."""


class TransitionError(FlowError):
    """A state machine was asked for a transition it does not declare; nothing changed."""


class EncryptionError(ChatstateError):
    """Encrypted data could not be decrypted: the key is wrong or missing."""


class ContextOverflow(ChatstateError, ValueError):
    """What must go into an LLM context (system prompt, newest turn) exceeds its token budget."""

    def __init__(self, needed: int, available: int, what: str) -> None:
        self.needed = needed
        self.available = available
        super().__init__(
            f"{what} needs {needed} tokens but only {available} fit in the budget; raise "
            "budget_tokens, lower reserve_for_output, shorten it, or pass "
            "allow_partial_turn=True to keep only the newest whole tool-call groups"
        )


class SummaryError(ChatstateError):
    """A summariser failed or returned something unusable; the history was left untouched."""


class InvalidMessageError(ChatstateError, ValueError):
    """A history message is malformed (unknown role, tool result without its call id, ...)."""


class InvalidExportError(ChatstateError, ValueError):
    """An export file (JSON Lines) is malformed or from a newer format version."""


class PlatformAPIError(ChatstateError):
    """A chat platform's API refused a call (WhatsApp Graph API, Discord REST, ...)."""

    def __init__(self, platform: str, status: int, detail: str) -> None:
        super().__init__(f"{platform} API answered {status}: {detail}")
        self.platform = platform
        self.status = status
        self.detail = detail
