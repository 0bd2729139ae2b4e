"""The platform-neutral bot runtime that every adapter uses.

An adapter turns a platform update into an `Incoming`, asks a `BotRuntime` for the replies, and
renders the `Outgoing` messages in its platform's way. The runtime does the rest, the same way on
every platform:

    runtime = BotRuntime(manager, FlowRunner(...), key_for=scope_key("user"))
    result = await runtime.process(incoming)      # open -> handler -> commit
    for outgoing in result.replies:                # only replies of a committed update
        await platform_send(outgoing)

* **Keys.** `key_for` picks the session of an update (`scope_key("user" | "chat" |
  "user_in_chat" | "thread")` or any function of the `Incoming`).
* **Ordering.** Updates of one key run one at a time, in arrival order (the engine's per-key
  FIFO lock in-process, its lease across processes).
* **Busy policy.** ``busy="wait"`` queues behind the running update (up to the manager's
  `lock_timeout`); ``"drop"`` ignores an update that arrives while one of the same key is being
  handled; ``"reply"`` answers it with `texts.busy` ("still working on your last message").
* **Failures.** A handler that raises (or a `FlowRunner` whose step raised) changes nothing; the
  engine counts consecutive errors and resets the session after `max_consecutive_errors`, and
  the user is told so (`texts.error`, `texts.reset_after_errors`).
* **Degraded mode.** When the store is unreachable (`StoreUnavailable`) the user gets
  `texts.unavailable` instead of a crash, and nothing is half-written: a commit is one atomic
  write, and replies are released only after it succeeded.
* **Lifecycle notifications.** `LifecycleNotifier` turns a `Lifecycle`'s hooks (warning, expiry,
  closure, restore) into messages sent through a platform `Notifier`.
"""

from __future__ import annotations

import collections
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .. import events as ev
from ..engine import SessionBusy, SessionManager
from ..errors import ConfigurationError, LockTimeout, StoreUnavailable
from ..events import Event
from ..flows.base import as_outgoing
from ..locks import KeyLocks
from ..model import Incoming, Message, Outgoing, Scope, SessionKey
from ..session import Session

if TYPE_CHECKING:
    from ..lifecycle import Due, Lifecycle

log = logging.getLogger("chatstate.adapters")

BusyPolicy = Literal["wait", "drop", "reply"]
KeyChooser = Callable[[Incoming], SessionKey]
ReplyLike = Any  # str | Outgoing | list of them | None: what a handler may return

#: data field where the runtime remembers where to send notifications for a session
REPLY_TO_FIELD = "_reply_to"


# -- the handler --------------------------------------------------------------------------------


@runtime_checkable
class SessionHandler(Protocol):
    """What a bot is to the runtime. `FlowRunner` fits as is."""

    async def handle(self, session: Session, incoming: Incoming) -> Any: ...


HandlerLike = SessionHandler | Callable[[Session, Incoming], Awaitable[Any] | Any]


def as_handler(obj: HandlerLike) -> Callable[[Session, Incoming], Awaitable[list[Outgoing]]]:
    """Accept an object with `handle(session, incoming)` or a (sync or async) function."""
    fn = getattr(obj, "handle", None)
    target: Callable[..., Any] = fn if callable(fn) else obj  # type: ignore[assignment]
    if not callable(target):
        raise ConfigurationError(
            f"{obj!r} is not a bot handler: pass an object with "
            "'async def handle(session, incoming)' (a FlowRunner) or such a function"
        )

    async def call(session: Session, incoming: Incoming) -> list[Outgoing]:
        result = target(session, incoming)
        if inspect.isawaitable(result):
            result = await result
        return as_outgoing(result)

    return call


# -- keys and chats -----------------------------------------------------------------------------


def scope_key(scope: Scope | str, platform: str | None = None) -> KeyChooser:
    """A key chooser for one scope: the session belongs to the user, the chat, the user in the
    chat, or the thread (forum topic; falls back to the chat outside threads)."""
    wanted = Scope(scope)
    if wanted is Scope.GLOBAL_USER:
        raise ConfigurationError(
            "global_user sessions span platforms: pass key_for=lambda i: "
            "SessionKey.global_user(<your id for the person>)"
        )

    def choose(incoming: Incoming) -> SessionKey:
        name = platform or incoming.platform
        user = incoming.user_id or incoming.chat_id
        chat = incoming.chat_id or incoming.user_id
        if not user:
            raise ConfigurationError("the update has neither a user nor a chat id to key it by")
        if wanted is Scope.USER:
            return SessionKey.user(name, user)
        if wanted is Scope.CHAT:
            return SessionKey.chat(name, chat)
        if wanted is Scope.USER_IN_CHAT:
            return SessionKey.user_in_chat(name, chat, user)
        if incoming.thread_id:
            return SessionKey.thread(name, chat, incoming.thread_id)
        return SessionKey.chat(name, chat)

    return choose


@dataclass(frozen=True)
class ChatRef:
    """Where to send a message on a platform: a chat, and a thread inside it."""

    platform: str
    chat_id: str
    thread_id: str | None = None

    def to_data(self) -> dict[str, str]:
        out = {"platform": self.platform, "chat": self.chat_id}
        if self.thread_id:
            out["thread"] = self.thread_id
        return out

    @classmethod
    def from_data(cls, data: Any) -> ChatRef | None:
        if not isinstance(data, Mapping) or not data.get("chat") or not data.get("platform"):
            return None
        thread = data.get("thread")
        return cls(str(data["platform"]), str(data["chat"]), str(thread) if thread else None)

    @classmethod
    def from_incoming(cls, incoming: Incoming) -> ChatRef:
        return cls(incoming.platform, incoming.chat_id or incoming.user_id, incoming.thread_id)

    @classmethod
    def from_key(cls, key: SessionKey | str) -> ChatRef:
        """Where a session's key says to write: the user's private chat, the chat, the thread."""
        k = SessionKey.coerce(key)
        if k.scope is Scope.THREAD:
            return cls(k.platform, k.ids[0], k.ids[1])
        return cls(k.platform, k.ids[0])


def chat_ref_of(session: Session) -> ChatRef:
    """Where notifications for `session` go: the chat of its last update, else its key's."""
    return ChatRef.from_data(session.data.get(REPLY_TO_FIELD)) or ChatRef.from_key(session.key)


# -- the runtime --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeTexts:
    busy: str = "⏳ Still working on your last message, one moment please."
    unavailable: str = (
        "Sorry, I can't reach my memory right now. Please send your message again in a minute."
    )
    error: str = "Sorry, something went wrong on my side. Please try again."
    reset_after_errors: str = (
        "Too many errors in a row, so I started over. Send /start to begin again."
    )


Outcome = Literal["ok", "busy", "dropped", "unavailable", "error", "reset"]


@dataclass
class Result:
    """What `BotRuntime.process` did with one update."""

    outcome: Outcome
    replies: list[Outgoing] = field(default_factory=list)
    key: SessionKey | None = None
    session_id: str | None = None
    state: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


Deliver = Callable[[Result], Awaitable[Any]]

class FlowStepFailed(Exception):
    """Raised inside the session block when the handler counted an error it had already
    handled (a `FlowRunner` step that raised bumps `counters.errors` and apologises): the engine
    then discards the update and counts a consecutive error, so repeated failures reset the
    session."""


_OPEN: contextvars.ContextVar[dict[str, Session] | None] = contextvars.ContextVar(
    "chatstate_open_sessions", default=None
)


def open_session(key: SessionKey | str) -> Session | None:
    """The session of `key` opened by this task (a runtime update or an aiogram isolation lock),
    if any: code running inside the update writes to it instead of opening the key again (which
    would wait for itself)."""
    sessions = _OPEN.get()
    session = None if sessions is None else sessions.get(str(key))
    # A task started during the update keeps a copy of the context after the update ended;
    # the session it sees there is committed and must not be written to any more.
    return session if session is not None and id(session) in _LIVE else None


_LIVE: set[int] = set()  # ids of the sessions inside a publish_session block right now


@contextmanager
def publish_session(session: Session) -> Iterator[None]:
    """Make `session` visible to `open_session` for the duration of the block (this task and
    the tasks it starts, while the block lasts)."""
    current = _OPEN.get() or {}
    token = _OPEN.set({**current, str(session.key): session})
    _LIVE.add(id(session))
    try:
        yield
    finally:
        _LIVE.discard(id(session))
        _OPEN.reset(token)


class BotRuntime:
    """Runs a handler for updates of any platform: one session per key, in order, committed
    before the replies leave."""

    def __init__(
        self,
        manager: SessionManager,
        handler: HandlerLike,
        *,
        key_for: KeyChooser | Scope | str = Scope.USER,
        busy: BusyPolicy | None = None,
        texts: RuntimeTexts | None = None,
        record_history: bool = False,
        remember_chat: bool = True,
    ) -> None:
        self.manager = manager
        self.handler = handler
        self._call = as_handler(handler)
        self.key_for: KeyChooser = key_for if callable(key_for) else scope_key(key_for)
        self.busy: BusyPolicy = busy or manager.busy
        if self.busy not in ("wait", "drop", "reply"):
            raise ConfigurationError(f"busy={self.busy!r}: use 'wait', 'drop' or 'reply'")
        self.texts = texts or RuntimeTexts()
        self.record_history = record_history
        self.remember_chat = remember_chat
        self._order = KeyLocks()  # arrival order per key, held until the replies left
        manager.events.on(ev.SESSION_RESET, _note_reset)

    async def process(
        self,
        incoming: Incoming,
        *,
        deliver: Deliver | None = None,
        handler: HandlerLike | None = None,
        key: SessionKey | None = None,
    ) -> Result:
        """Handle one update: open its session, run the handler (or `handler` for this update
        only, e.g. an entry point starting a flow), commit, then `deliver(result)`. `key`
        overrides `key_for` when the adapter knows more than the `Incoming` says (e.g. the
        Discord guild of a member-scoped session).

        Updates of one key are taken in arrival order and `deliver` runs before the next one
        starts, so replies leave in order too (the session itself is already committed and
        released by then)."""
        key = key if key is not None else self.key_for(incoming)
        ks = str(key)
        if self.busy != "wait" and self._order.locked(ks):
            result = self._busy(key)
        elif not await self._order.acquire(ks, self.manager.lock_timeout):
            result = self._busy(key)
        else:
            try:
                call = self._call if handler is None else as_handler(handler)
                result = await self._process(key, incoming, call)
                if deliver is not None:
                    await deliver(result)
            finally:
                self._order.release(ks)
            return result
        if deliver is not None:
            await deliver(result)
        return result

    async def _process(
        self, key: SessionKey, incoming: Incoming,
        call: Callable[[Session, Incoming], Awaitable[list[Outgoing]]],
    ) -> Result:
        _RESETS.set(set())  # this task's view: sessions the engine reset after errors
        replies: list[Outgoing] = []
        session_id: str | None = None
        state: str | None = None
        try:
            async with self.manager.session(key) as s:
                session_id = s.id
                errors_before = s.record.counters.errors
                if self.remember_chat:
                    where = ChatRef.from_incoming(incoming).to_data()
                    if s.data.get(REPLY_TO_FIELD) != where:
                        s.data[REPLY_TO_FIELD] = where
                if self.record_history:
                    s.append(Message(role="user", content=_user_text(incoming)))
                with publish_session(s):
                    replies = await call(s, incoming)
                if s.record.counters.errors > errors_before:
                    raise FlowStepFailed(s.record.last_error or "a flow step failed")
                if self.record_history:
                    for reply in replies:
                        if reply.text:
                            s.append(Message(role="assistant", content=reply.text))
                state = s.state
        except StoreUnavailable as exc:
            log.warning("store unavailable while handling %s: %s", key, exc)
            return Result("unavailable", [Outgoing(text=self.texts.unavailable)], key, session_id)
        except (SessionBusy, LockTimeout):
            log.info("session %s stayed busy; update %s", key, self.busy)
            return self._busy(key)
        except FlowStepFailed:
            return self._after_error(key, session_id, replies)
        except Exception:
            log.exception("bot handler failed for %s", key)
            return self._after_error(key, session_id, [Outgoing(text=self.texts.error)])
        return Result("ok", replies, key, session_id, state)

    def _busy(self, key: SessionKey) -> Result:
        if self.busy == "drop":
            return Result("dropped", [], key)
        return Result("busy", [Outgoing(text=self.texts.busy)], key)

    def _after_error(
        self, key: SessionKey, session_id: str | None, replies: list[Outgoing]
    ) -> Result:
        """The engine recorded the error; tell the user whether it reset the session."""
        resets = _RESETS.get()
        if session_id is not None and resets is not None and session_id in resets:
            return Result(
                "reset", [Outgoing(text=self.texts.reset_after_errors, remove_keyboard=True)],
                key, session_id,
            )
        return Result("error", replies or [Outgoing(text=self.texts.error)], key, session_id)


_RESETS: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "chatstate_runtime_resets", default=None
)


def _note_reset(event: Event) -> None:
    """Engine event hook: remember, for the task that handled it, that a session was reset
    because of consecutive errors (emitted in the same task as the failing update)."""
    resets = _RESETS.get()
    if resets is not None and event.session_id and event.data.get("reason") == "errors":
        resets.add(event.session_id)


def _user_text(incoming: Incoming) -> str:
    if incoming.text:
        return incoming.text
    if incoming.payload is not None:
        return f"[button] {incoming.payload}"
    if incoming.attachments:
        return f"[{incoming.attachments[0].kind}]"
    return ""


# -- the terminal as a platform ------------------------------------------------------------


def render_text(outgoing: Outgoing) -> str:
    """A reply as plain text: buttons as ``[label]``, a reply keyboard as ``(label)``."""
    lines = [outgoing.text] if outgoing.text else []
    for row in outgoing.buttons:
        lines.append("  ".join(f"[{b.text}]" for b in row))
    for keys in outgoing.keyboard:
        lines.append("  ".join(f"({label})" for label in keys))
    return "\n".join(lines)


async def run_terminal(
    runtime: BotRuntime,
    read_line: Callable[[], Awaitable[str | None]],
    write: Callable[[str], Any],
    *,
    user_id: str = "local",
    platform: str = "cli",
) -> int:
    """Chat with `runtime`'s bot offline, one line per message (no platform, no network). A
    line that is a button's label presses it. Returns the number of messages handled."""
    buttons: dict[str, str] = {}
    handled = 0
    while True:
        line = await read_line()
        if line is None:
            return handled
        text = line.strip()
        if not text:
            continue
        if text in buttons:
            incoming = Incoming.button(buttons[text], platform=platform, user_id=user_id,
                                       chat_id=user_id)
        else:
            incoming = Incoming.from_text(text, platform=platform, user_id=user_id,
                                          chat_id=user_id)
        result = await runtime.process(incoming)
        handled += 1
        buttons = {b.text: b.payload for o in result.replies for row in o.buttons for b in row
                   if b.payload is not None}
        for outgoing in result.replies:
            write(render_text(outgoing))


def split_text(text: str, limit: int) -> list[str]:
    """Split `text` into parts of at most `limit` characters, at a paragraph, line or word
    boundary when one is in the second half of the window (platforms cap message length:
    Discord 2000, WhatsApp 4096, Telegram 4096)."""
    if limit < 1:
        raise ConfigurationError(f"split_text needs a positive limit, got {limit}")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind("\n\n"), window.rfind("\n"), window.rfind(" "))
        if cut < limit // 2:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts


# -- notifications ------------------------------------------------------------------------------


@runtime_checkable
class Notifier(Protocol):
    """Sends one message to a chat outside any user update (lifecycle notifications)."""

    async def send(self, chat: ChatRef, outgoing: Outgoing) -> Any: ...


@dataclass(frozen=True)
class NotificationTexts:
    """Texts of lifecycle notifications. `{minutes}` in `warning` is the time left. A flow's or
    the policy's own warning/expiry message, when set, wins over these."""

    warning: str | None = (
        "⚠️ Your session will expire in {minutes} minute(s) due to inactivity. "
        "Send any message to keep it active."
    )
    expired: str | None = "⌛ Your session expired. Send /start to begin again."
    restored: str | None = (
        "🔄 The bot was restarted. Your session has been restored: continue where you left off "
        "or send /cancel to start over."
    )
    #: close reason -> text; closes made by the bot itself (completed, goodbye) already replied,
    #: so only reasons listed here are announced. "timeout" is the `expired` text.
    closed: Mapping[str, str] = field(default_factory=lambda: {
        "admin": "This conversation was closed by an operator.",
        "deactivated": "This conversation was closed by an operator.",
    })


class LifecycleNotifier:
    """The hooks that turn lifecycle events into platform messages.

        notifier = TelegramNotifier(app.bot)
        lifecycle = Lifecycle(manager, **LifecycleNotifier(notifier).hooks())

    or ``LifecycleNotifier(notifier).attach(lifecycle)`` for an existing runner. The lifecycle
    delivers at least once; the ids of delivered notifications are remembered (bounded), so a
    redelivery in this process is not sent twice.
    """

    def __init__(
        self, notifier: Notifier, texts: NotificationTexts | None = None, *, remember: int = 10_000
    ) -> None:
        if not isinstance(notifier, Notifier):
            raise ConfigurationError(
                f"{notifier!r} is not a Notifier: it needs 'async def send(chat, outgoing)'"
            )
        self.notifier = notifier
        self.texts = texts or NotificationTexts()
        self._sent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remember = remember
        self.failures = 0

    def hooks(self) -> dict[str, Any]:
        return {
            "on_warning": self.on_warning, "on_expire": self.on_expire,
            "on_close": self.on_close, "on_restore": self.on_restore,
        }

    def attach(self, lifecycle: Lifecycle) -> Lifecycle:
        """Install these hooks on an existing `Lifecycle` (replacing the ones it had)."""
        from ..lifecycle import _Hook

        for name, hook in self.hooks().items():
            setattr(lifecycle, name, _Hook(hook))
        return lifecycle

    async def on_warning(self, session: Session, due: Due) -> None:
        template = due.message or self.texts.warning
        if template:
            minutes = max(1, round((due.remaining or 0.0) / 60))
            await self._send(session, due.id, template.replace("{minutes}", str(minutes)))

    async def on_expire(self, session: Session, due: Due) -> None:
        await self._send(session, due.id, due.message or self.texts.expired)

    async def on_close(self, session: Session, reason: str, due: Due | None = None) -> None:
        if reason == "timeout":
            return  # on_expire said it
        text = self.texts.closed.get(reason)
        await self._send(session, f"{session.id}:close:{reason}", text)

    async def on_restore(self, session: Session, due: Due) -> None:
        await self._send(session, due.id, self.texts.restored)

    async def _send(self, session: Session, notice_id: str, text: str | None) -> None:
        if not text or notice_id in self._sent:
            return
        try:
            await self.notifier.send(chat_ref_of(session), Outgoing(text=text))
        except Exception:
            # The lifecycle transition still happens; a user who blocked the bot must not stop
            # the runner.
            self.failures += 1
            log.warning("could not notify session %s", session.key, exc_info=True)
            return
        self._sent[notice_id] = None
        while len(self._sent) > self._remember:
            self._sent.popitem(last=False)


__all__ = [
    "REPLY_TO_FIELD",
    "BotRuntime",
    "BusyPolicy",
    "ChatRef",
    "FlowStepFailed",
    "KeyChooser",
    "LifecycleNotifier",
    "NotificationTexts",
    "Notifier",
    "Result",
    "RuntimeTexts",
    "SessionHandler",
    "as_handler",
    "chat_ref_of",
    "open_session",
    "publish_session",
    "render_text",
    "run_terminal",
    "scope_key",
    "split_text",
]
