"""The session record, keys and scopes, history entries, and platform-neutral messages.

Everything here is plain data (msgspec Structs): no I/O, no platform SDK.
"""

from __future__ import annotations

import enum
import re
import time
import uuid
from typing import Any, ClassVar, Literal, NamedTuple

import msgspec

from .errors import InvalidKeyError

SCHEMA_VERSION = 1
"""Version of the stored record layout; `codec` migrates older records on load."""


class Status(enum.StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"
    EXPIRED = "expired"


class Scope(enum.StrEnum):
    """What a session belongs to. The value is the scope's name in the canonical key."""

    USER = "user"  # one user, across every chat of the platform
    CHAT = "chat"  # one chat (group, channel, DM), shared by its members
    USER_IN_CHAT = "user_in_chat"  # one user inside one chat (aiogram's default)
    THREAD = "thread"  # one thread / forum topic of a chat
    GLOBAL_USER = "global_user"  # one person across platforms (platform "global")


# Which ids each scope takes, in canonical order.
SCOPE_IDS: dict[Scope, tuple[str, ...]] = {
    Scope.USER: ("user",),
    Scope.CHAT: ("chat",),
    Scope.USER_IN_CHAT: ("chat", "user"),
    Scope.THREAD: ("chat", "thread"),
    Scope.GLOBAL_USER: ("user",),
}

_PLATFORM_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,31}$")
# ':' separates parts of the key; '{' and '}' would break Redis Cluster hash tags.
_BAD_ID_RE = re.compile(r"[:{}\s\x00-\x1f\x7f]")
MAX_ID_LENGTH = 200


class SessionKey:
    """Names one session: platform, scope and the scope's ids.

    The canonical form is ``platform:scope:id[:id]``, e.g. ``telegram:user_in_chat:-100:42``.
    """

    __slots__ = ("_str", "ids", "platform", "scope")

    def __init__(self, platform: str, scope: Scope | str, *ids: str | int) -> None:
        if not isinstance(platform, str) or not _PLATFORM_RE.match(platform):
            raise InvalidKeyError(
                f"platform {platform!r} is not valid: use lowercase letters, digits, '_', '-', "
                "'.' (at most 32 characters), e.g. 'telegram'"
            )
        try:
            scope = Scope(scope)
        except ValueError:
            names = ", ".join(s.value for s in Scope)
            raise InvalidKeyError(f"unknown scope {scope!r}; use one of: {names}") from None
        wanted = SCOPE_IDS[scope]
        if len(ids) != len(wanted):
            raise InvalidKeyError(
                f"scope {scope.value!r} takes {len(wanted)} id(s) ({', '.join(wanted)}), "
                f"got {len(ids)}"
            )
        clean: list[str] = []
        for name, value in zip(wanted, ids, strict=True):
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise InvalidKeyError(f"{name} id must be a string or an integer, got {value!r}")
            text = str(value)
            if not text:
                raise InvalidKeyError(f"{name} id is empty")
            if len(text) > MAX_ID_LENGTH:
                raise InvalidKeyError(f"{name} id is longer than {MAX_ID_LENGTH} characters")
            if _BAD_ID_RE.search(text):
                raise InvalidKeyError(
                    f"{name} id {text!r} contains a separator (':', '{{', '}}') or whitespace"
                )
            clean.append(text)
        self.platform = platform
        self.scope = scope
        self.ids = tuple(clean)
        self._str = f"{platform}:{scope.value}:{':'.join(clean)}"

    # Convenience constructors, one per scope.
    @classmethod
    def user(cls, platform: str, user_id: str | int) -> SessionKey:
        return cls(platform, Scope.USER, user_id)

    @classmethod
    def chat(cls, platform: str, chat_id: str | int) -> SessionKey:
        return cls(platform, Scope.CHAT, chat_id)

    @classmethod
    def user_in_chat(cls, platform: str, chat_id: str | int, user_id: str | int) -> SessionKey:
        return cls(platform, Scope.USER_IN_CHAT, chat_id, user_id)

    @classmethod
    def thread(cls, platform: str, chat_id: str | int, thread_id: str | int) -> SessionKey:
        return cls(platform, Scope.THREAD, chat_id, thread_id)

    @classmethod
    def global_user(cls, user_id: str | int) -> SessionKey:
        return cls("global", Scope.GLOBAL_USER, user_id)

    @classmethod
    def parse(cls, text: str) -> SessionKey:
        """Parse the canonical string form back into a key."""
        if not isinstance(text, str):
            raise InvalidKeyError(f"a session key string is expected, got {type(text).__name__}")
        parts = text.split(":")
        if len(parts) < 3:
            raise InvalidKeyError(
                f"{text!r} is not a session key; expected 'platform:scope:id', "
                "e.g. 'telegram:user:42'"
            )
        return cls(parts[0], parts[1], *parts[2:])

    @classmethod
    def coerce(cls, value: SessionKey | str) -> SessionKey:
        return value if isinstance(value, SessionKey) else cls.parse(value)

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return f"SessionKey({self._str!r})"

    def __hash__(self) -> int:
        return hash(self._str)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SessionKey):
            return self._str == other._str
        return NotImplemented


def new_session_id() -> str:
    return uuid.uuid4().hex


class SessionRef(NamedTuple):
    """The canonical key and the stable id of one session (a key has one current session)."""

    key: str
    id: str


# ---------------------------------------------------------------------------
# The record


class FlowPosition(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where a session is inside a flow. `parent` holds the caller of a nested sub-flow."""

    name: str
    version: int = 1
    step: str | None = None
    stack: list[str] = []  # steps to go /back to, newest last, bounded by the flow
    attempts: int = 0  # failed inputs at the current step
    entered_at: float = 0.0  # when the current step was entered
    data: dict[str, Any] = {}  # answers collected by this flow
    parent: FlowPosition | None = None


class Counters(msgspec.Struct, kw_only=True, omit_defaults=True):
    messages: int = 0  # incoming updates handled
    tool_calls: int = 0
    errors: int = 0  # handler errors, all time
    consecutive_errors: int = 0  # reset by a successful update
    last_seq: int = 0  # sequence number of the newest history message
    dropped_through: int = 0  # history messages with seq <= this were deleted


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Running totals of LLM usage for the session; per-turn figures live on history messages."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    model_calls: int = 0
    tool_errors: int = 0
    latency_ms: float = 0.0


class SessionRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One session, stored atomically as one unit. `temp` is never stored."""

    id: str
    key: str
    status: Status = Status.ACTIVE
    state: str | None = None
    data: dict[str, Any] = {}
    flow: FlowPosition | None = None
    counters: Counters = msgspec.field(default_factory=Counters)
    usage: Usage = msgspec.field(default_factory=Usage)
    labels: dict[str, str] = {}  # small indexed facts for analytics (user_type, intent, ...)
    created_at: float = 0.0
    last_activity: float = 0.0
    expires_at: float | None = None
    warn_at: float | None = None
    purge_at: float | None = None
    closed_at: float | None = None
    close_reason: str | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    version: int = 0
    schema_version: int = SCHEMA_VERSION

    DUE_KINDS: ClassVar[tuple[str, ...]] = ("warn", "expire", "purge")

    @property
    def ref(self) -> SessionRef:
        return SessionRef(self.key, self.id)

    @property
    def platform(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def scope(self) -> str:
        return self.key.split(":", 2)[1]

    def due_at(self, kind: str) -> float | None:
        """The time at which the due index should fire `kind` for this record, if any."""
        if kind == "purge":
            return self.purge_at
        if self.status is not Status.ACTIVE:
            return None
        if kind == "warn":
            return self.warn_at
        if kind == "expire":
            return self.expires_at
        raise ValueError(f"unknown due kind {kind!r}; use one of {self.DUE_KINDS}")


def new_record(key: SessionKey | str, now: float | None = None, **fields: Any) -> SessionRecord:
    """A complete new record for `key` (version 0: not stored yet)."""
    at = time.time() if now is None else now
    return SessionRecord(
        id=new_session_id(), key=str(key), created_at=at, last_activity=at, **fields
    )


# ---------------------------------------------------------------------------
# History


Role = Literal["system", "user", "assistant", "tool"]


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One history entry. `seq` is assigned when the message is committed (1, 2, 3, ...)."""

    role: str
    content: str | list[dict[str, Any]] = ""
    seq: int = 0
    name: str | None = None
    tool_call_id: str | None = None  # on a tool result: the call it answers
    tool_calls: list[dict[str, Any]] | None = None  # on an assistant message: calls it makes
    turn_id: str | None = None
    metadata: dict[str, Any] = {}
    created_at: float = 0.0
    tokens: int = 0
    usage: dict[str, Any] | None = None  # the model call's reported usage for this turn

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return " ".join(str(p.get("text", "")) for p in self.content if isinstance(p, dict))


class Summary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A summary of history messages `start_seq`..`end_seq` (inclusive)."""

    start_seq: int
    end_seq: int
    content: str
    tokens: int = 0
    created_at: float = 0.0
    metadata: dict[str, Any] = {}


class HistoryChanges(msgspec.Struct, kw_only=True):
    """History writes that commit atomically with the record (so a retried update never
    appends twice and a failed one appends nothing)."""

    append: list[Message] = []
    summaries: list[Summary] = []
    drop_messages_through: int | None = None  # delete messages with seq <= this
    drop_summaries: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.append
            or self.summaries
            or self.drop_messages_through is not None
            or self.drop_summaries
        )


# ---------------------------------------------------------------------------
# Platform-neutral messages (adapters translate; flows never import an SDK)


class Attachment(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: str  # photo, document, sticker, audio, voice, video, location, contact, other
    file_id: str | None = None
    url: str | None = None
    name: str | None = None
    mime_type: str | None = None
    size: int | None = None


_COMMAND_RE = re.compile(r"^/([A-Za-z0-9_]{1,64})(?:@[A-Za-z0-9_]+)?(?:\s+(.*))?$", re.S)


class Incoming(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One update from a user, whatever the platform."""

    platform: str = "cli"
    user_id: str = ""
    chat_id: str = ""
    text: str | None = None
    command: str | None = None  # "start" for "/start", lowercase, no slash
    args: list[str] = []
    payload: str | None = None  # data of a pressed button
    attachments: list[Attachment] = []
    timestamp: float = 0.0
    message_id: str | None = None
    thread_id: str | None = None
    user_name: str | None = None
    language: str | None = None

    @classmethod
    def from_text(cls, text: str, **fields: Any) -> Incoming:
        """Build an update from typed text, splitting ``/command args`` out of it."""
        match = _COMMAND_RE.match(text.strip()) if text else None
        if match:
            rest = (match.group(2) or "").strip()
            return cls(
                text=text, command=match.group(1).lower(), args=rest.split() if rest else [],
                **fields,
            )
        return cls(text=text, **fields)

    @classmethod
    def button(cls, payload: str, **fields: Any) -> Incoming:
        return cls(payload=payload, **fields)


class Button(msgspec.Struct, kw_only=True, omit_defaults=True):
    text: str
    payload: str | None = None  # sent back as Incoming.payload when pressed
    url: str | None = None


class Outgoing(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One reply. Adapters render buttons and keyboards in their platform's way."""

    text: str = ""
    buttons: list[list[Button]] = []  # inline buttons, rows of columns
    keyboard: list[list[str]] = []  # reply keyboard, rows of columns
    remove_keyboard: bool = False
    edit: bool = False  # replace the previous bot message instead of sending a new one
    parse_mode: str | None = None
    metadata: dict[str, Any] = {}
