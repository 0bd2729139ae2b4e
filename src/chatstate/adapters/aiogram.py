"""Telegram with aiogram 3: FSM storage, event isolation and a session middleware on chatstate.

    from aiogram import Dispatcher
    from chatstate import SessionManager
    from chatstate.adapters.aiogram import ChatstateStorage, ChatstateEventIsolation

    manager = SessionManager("redis://localhost:6379/0")
    dp = Dispatcher(storage=ChatstateStorage(manager),
                    events_isolation=ChatstateEventIsolation(manager))

`FSMContext` states and data then live in chatstate sessions: durable, shared by every
instance, with the manager's idle timeout / max age (TTL), lifecycle notifications, and updates
of one key handled one at a time across processes (the event isolation *is* the session: it
opens it, handlers' storage calls read and write the open session, and it commits once when the
update is done). `ChatstateMiddleware` gives handlers that session as ``session`` and sends
`Outgoing` replies they return once the update is committed; `flow_router(runner)` runs
chatstate flows on aiogram.

Mapping of aiogram's `StorageKey` to a chatstate `SessionKey` (explicit and one-to-one, so
neither bots nor destinies nor threads share a session by accident):

* platform ``<platform>.<bot_id>`` (``telegram.123456789``);
* scope ``user_in_chat``; chat id ``<chat_id>`` plus ``~t<thread_id>`` for a forum topic and
  ``~b<business_connection_id>`` (URL-quoted) for a business connection;
* user id ``<user_id>`` plus ``~d<destiny>`` (URL-quoted) when the destiny is not "default".

For example ``StorageKey(bot_id=1, chat_id=-100, user_id=42, thread_id=7, destiny="quiz")`` is
``telegram.1:user_in_chat:-100~t7:42~dquiz``. aiogram's FSM strategies (chat, global user,
topic, ...) decide which ids the key holds; the mapping keeps whatever they chose. With a custom
`KeyBuilder` the key is its ``build(key)`` string instead (URL-quoted, scope ``chat``).

FSM data is the session's ``data`` (the reserved chatstate fields ``_lifecycle`` and
``_reply_to`` are hidden from it and kept on `set_data`); the FSM state is the session's
``state``. Values must be JSON data (msgspec), as with aiogram's Redis storage.
"""

from __future__ import annotations

import copy
import logging
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast, overload

from ..engine import SessionManager
from ..errors import ConfigurationError
from ..flows.base import as_outgoing
from ..model import Attachment, Incoming, Outgoing, Scope, SessionKey, SessionRecord, Status
from ..policy import LIFECYCLE_KEY
from ..session import Session
from .base import (
    REPLY_TO_FIELD,
    BotRuntime,
    BusyPolicy,
    ChatRef,
    LifecycleNotifier,
    NotificationTexts,
    Result,
    RuntimeTexts,
    open_session,
    publish_session,
    split_text,
)

try:
    from aiogram import BaseMiddleware, Bot, F, Router
    from aiogram.exceptions import DataNotDictLikeError
    from aiogram.fsm.context import FSMContext
    from aiogram.fsm.state import State
    from aiogram.fsm.storage.base import (
        DEFAULT_DESTINY,
        BaseEventIsolation,
        BaseStorage,
        KeyBuilder,
        StateType,
        StorageKey,
    )
    from aiogram.types import (
        CallbackQuery,
        InlineKeyboardButton,
        InlineKeyboardMarkup,
        KeyboardButton,
        Message,
        ReplyKeyboardMarkup,
        ReplyKeyboardRemove,
        TelegramObject,
        Update,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the aiogram adapter needs aiogram 3: pip install 'chatstate[aiogram]'"
    ) from exc

log = logging.getLogger("chatstate.adapters.aiogram")

PLATFORM = "telegram"
TEXT_LIMIT = 4096  # characters in one Telegram message
HIDDEN = (LIFECYCLE_KEY, REPLY_TO_FIELD)  # chatstate's own fields inside session data
AFTER_COMMIT = "_chatstate_after_commit"  # session.temp: callbacks to run once committed


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def session_key_for(
    key: StorageKey, platform: str = PLATFORM, key_builder: KeyBuilder | None = None
) -> SessionKey:
    """The chatstate key of an aiogram `StorageKey` (see the module docstring)."""
    name = f"{platform}.{key.bot_id}"
    if key_builder is not None:
        return SessionKey(name, Scope.CHAT, _q(key_builder.build(key)))
    chat = str(key.chat_id)
    if key.thread_id is not None:
        chat += f"~t{key.thread_id}"
    if key.business_connection_id:
        chat += f"~b{_q(key.business_connection_id)}"
    user = str(key.user_id)
    if key.destiny != DEFAULT_DESTINY:
        user += f"~d{_q(key.destiny)}"
    return SessionKey(name, Scope.USER_IN_CHAT, chat, user)


def _visible(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in HIDDEN}


# -- storage and isolation --------------------------------------------------------------------


class ChatstateStorage(BaseStorage):
    """aiogram FSM storage on a chatstate `SessionManager` (or a store / store URL)."""

    def __init__(
        self,
        manager: SessionManager | str | None = None,
        *,
        platform: str = PLATFORM,
        key_builder: KeyBuilder | None = None,
    ) -> None:
        self._owns_manager = not isinstance(manager, SessionManager)
        self.manager = manager if isinstance(manager, SessionManager) else SessionManager(manager)
        self.platform = platform
        self.key_builder = key_builder

    def session_key(self, key: StorageKey) -> SessionKey:
        return session_key_for(key, self.platform, self.key_builder)

    async def _current(self, key: StorageKey) -> tuple[Session | None, SessionRecord | None]:
        """The open session of this update, or the stored record (None when there is no
        active, unexpired session)."""
        skey = self.session_key(key)
        session = open_session(skey)
        if session is not None:
            return session, session.record
        record = await self.manager.get(skey)
        if (
            record is None or record.status is not Status.ACTIVE
            or self.manager.policy.is_expired(record, self.manager.clock.now())
        ):
            return None, None
        return None, record

    async def _change(self, key: StorageKey, fn: Callable[[Session], None]) -> None:
        skey = self.session_key(key)
        session = open_session(skey)
        if session is not None:
            fn(session)
            return
        await self.manager.update(skey, fn, message=False)

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"an FSM state is a str or a State, not {value!r}")
        _, record = await self._current(key)
        if record is None and value is None:
            return  # nothing to clear: do not create a session for it

        def apply(session: Session) -> None:
            session.state = value

        await self._change(key, apply)

    async def get_state(self, key: StorageKey) -> str | None:
        _, record = await self._current(key)
        return None if record is None else record.state

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            raise DataNotDictLikeError(
                f"Data must be a dict or dict-like object, got {type(data).__name__}"
            )
        new = copy.deepcopy(data)
        _, record = await self._current(key)
        if record is None and not new:
            return

        def apply(session: Session) -> None:
            kept = {k: v for k, v in session.data.items() if k in HIDDEN}
            session.data = {**new, **kept}

        await self._change(key, apply)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        _, record = await self._current(key)
        return {} if record is None else copy.deepcopy(_visible(record.data))

    @overload
    async def get_value(self, storage_key: StorageKey, dict_key: str) -> Any | None: ...

    @overload
    async def get_value(self, storage_key: StorageKey, dict_key: str, default: Any) -> Any: ...

    async def get_value(
        self, storage_key: StorageKey, dict_key: str, default: Any | None = None
    ) -> Any | None:
        if dict_key in HIDDEN:
            return default
        _, record = await self._current(storage_key)
        if record is None:
            return default
        return copy.deepcopy(record.data.get(dict_key, default))

    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        """dict.update in one atomic step (one locked read-modify-write, not get + set)."""
        changes = copy.deepcopy(dict(data))
        result: dict[str, Any] = {}

        def apply(session: Session) -> None:
            session.data.update({k: v for k, v in changes.items() if k not in HIDDEN})
            result.clear()
            result.update(copy.deepcopy(_visible(session.data)))

        await self._change(key, apply)
        return result

    async def close(self) -> None:
        if self._owns_manager:
            await self.manager.aclose()


class ChatstateEventIsolation(BaseEventIsolation):
    """Runs each update of one key alone (in-process lock and cross-process lease) with its
    session open; the storage reads and writes that session, committed once at the end."""

    def __init__(self, storage: ChatstateStorage) -> None:
        self.storage = storage
        self.manager = storage.manager

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncGenerator[None, None]:
        after: list[Callable[[], Awaitable[Any]]] = []
        async with self.manager.session(self.storage.session_key(key)) as session:
            session.temp[AFTER_COMMIT] = after
            with publish_session(session):
                yield
        for callback in after:  # committed: replies may leave now
            await callback()

    async def close(self) -> None:
        pass


# -- Update -> Incoming, Outgoing -> Bot API ----------------------------------------------------


def incoming_from_update(update: Update, platform: str = PLATFORM) -> Incoming | None:
    """The platform-neutral view of an aiogram update (messages and button presses)."""
    query = update.callback_query
    if query is not None:
        if query.data is None:
            return None
        message = query.message
        chat_id = message.chat.id if message is not None else query.from_user.id
        thread = None
        if isinstance(message, Message) and message.is_topic_message:
            thread = str(message.message_thread_id)
        return Incoming(
            platform=platform, user_id=str(query.from_user.id), chat_id=str(chat_id),
            payload=query.data, message_id=str(message.message_id) if message else None,
            thread_id=thread, user_name=query.from_user.full_name,
            language=query.from_user.language_code,
        )
    message = update.message
    if message is None:
        return None
    user = message.from_user
    fields: dict[str, Any] = {
        "platform": platform,
        "user_id": str(user.id if user is not None else message.chat.id),
        "chat_id": str(message.chat.id),
        "message_id": str(message.message_id),
        "thread_id": str(message.message_thread_id) if message.is_topic_message else None,
        "user_name": user.full_name if user is not None else None,
        "language": user.language_code if user is not None else None,
        "timestamp": message.date.timestamp(),
        "attachments": _attachments(message),
    }
    text = message.text or message.caption
    return Incoming.from_text(text, **fields) if text else Incoming(**fields)


def _attachments(message: Message) -> list[Attachment]:
    out: list[Attachment] = []
    if message.photo:
        out.append(Attachment(kind="photo", file_id=message.photo[-1].file_id))
    for kind in ("document", "audio", "voice", "video", "video_note", "sticker", "animation"):
        item = getattr(message, kind, None)
        if item is not None:
            out.append(Attachment(kind=kind, file_id=item.file_id,
                                  name=getattr(item, "file_name", None)))
    return out


def reply_markup(
    outgoing: Outgoing,
) -> InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove | None:
    if outgoing.buttons:
        return InlineKeyboardMarkup(inline_keyboard=[
            [
                InlineKeyboardButton(text=b.text, url=b.url) if b.url
                else InlineKeyboardButton(text=b.text, callback_data=b.payload or b.text)
                for b in row
            ]
            for row in outgoing.buttons
        ])
    if outgoing.keyboard:
        return ReplyKeyboardMarkup(
            keyboard=[[KeyboardButton(text=t) for t in row] for row in outgoing.keyboard],
            resize_keyboard=True,
            one_time_keyboard=bool(outgoing.metadata.get("one_time_keyboard", False)),
        )
    if outgoing.remove_keyboard:
        return ReplyKeyboardRemove(remove_keyboard=True)
    return None


def _chat_id(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


async def send_outgoing(
    bot: Bot, chat: ChatRef, outgoing: Outgoing, *, edit_message_id: str | None = None
) -> Any:
    """Send one reply; ``edit`` replaces the message whose button was pressed."""
    markup = reply_markup(outgoing)
    chat_id = _chat_id(chat.chat_id)
    if (
        outgoing.edit and edit_message_id is not None
        and (markup is None or isinstance(markup, InlineKeyboardMarkup))
    ):
        return await bot.edit_message_text(
            text=outgoing.text, chat_id=chat_id, message_id=int(edit_message_id),
            reply_markup=markup,
            parse_mode=outgoing.parse_mode,
        )
    thread = int(chat.thread_id) if chat.thread_id else None
    parts = split_text(outgoing.text, TEXT_LIMIT) or [""]
    for part in parts[:-1]:  # over Telegram's limit: the keyboard goes with the last part
        await bot.send_message(chat_id=chat_id, text=part, parse_mode=outgoing.parse_mode,
                               message_thread_id=thread)
    return await bot.send_message(
        chat_id=chat_id, text=parts[-1], reply_markup=markup, parse_mode=outgoing.parse_mode,
        message_thread_id=thread,
    )


class AiogramNotifier:
    """A `Notifier` that sends lifecycle notifications with an aiogram `Bot`."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def send(self, chat: ChatRef, outgoing: Outgoing) -> Any:
        return await send_outgoing(self.bot, chat, outgoing)


def lifecycle_notifier(bot: Bot, texts: NotificationTexts | None = None) -> LifecycleNotifier:
    return LifecycleNotifier(AiogramNotifier(bot), texts)


# -- the middleware -----------------------------------------------------------------------------


class ChatstateMiddleware(BaseMiddleware):
    """Outer middleware for ``dp.update``: handlers get ``session`` (a chatstate `Session`)
    and ``incoming``; `Outgoing` replies they return are sent after the commit.

    With `ChatstateEventIsolation` the session is the one the isolation opened for the FSM key;
    otherwise the middleware opens it itself with the runtime's busy policy, and a store outage
    answers with the fallback text instead of an exception."""

    def __init__(
        self,
        manager: SessionManager,
        *,
        platform: str = PLATFORM,
        scope: Scope | str | None = None,
        busy: BusyPolicy | None = None,
        texts: RuntimeTexts | None = None,
    ) -> None:
        self.manager = manager
        self.platform = platform
        self.scope = scope
        self.busy = busy
        self.texts = texts

    def key_for(self, incoming: Incoming, data: Mapping[str, Any]) -> SessionKey:
        state = data.get("state")
        if self.scope is None and isinstance(state, FSMContext):
            return session_key_for(state.key, self.platform)  # the FSM's own session
        from .base import scope_key

        bot = data.get("bot")
        platform = f"{self.platform}.{bot.id}" if isinstance(bot, Bot) else self.platform
        return scope_key(self.scope or Scope.USER_IN_CHAT, platform)(incoming)

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Update):
            return await handler(event, data)
        incoming = incoming_from_update(event, self.platform)
        if incoming is None:
            return await handler(event, data)
        bot = cast(Bot, data["bot"])
        key = self.key_for(incoming, data)
        where = ChatRef.from_incoming(incoming)
        edit_id = incoming.message_id if event.callback_query is not None else None
        if event.callback_query is not None:
            try:
                await bot.answer_callback_query(callback_query_id=event.callback_query.id)
            except Exception:
                log.warning("could not answer callback query", exc_info=True)
        data["incoming"] = incoming
        outcome: list[Any] = []

        async def run(session: Session, _: Incoming) -> list[Outgoing]:
            data["session"] = session
            result = await handler(event, data)
            outcome.append(result)
            return _replies(result)

        async def deliver(result: Result) -> None:
            for outgoing in result.replies:
                try:
                    await send_outgoing(bot, where, outgoing, edit_message_id=edit_id)
                except Exception:
                    log.warning("could not send a reply to %s", where, exc_info=True)

        shared = open_session(key)
        if shared is not None:  # the event isolation holds it and commits it after us
            replies = await run(shared, incoming)
            after = shared.temp.get(AFTER_COMMIT)
            if replies and isinstance(after, list):
                after.append(lambda: deliver(Result("ok", replies, key)))
            return outcome[0]
        runtime = BotRuntime(self.manager, run, key_for=lambda _: key, busy=self.busy,
                             texts=self.texts)
        await runtime.process(incoming, deliver=deliver)
        return outcome[0] if outcome else None


def _replies(result: Any) -> list[Outgoing]:
    """Replies a handler returned (Outgoing or a list of them); aiogram's own results (None,
    UNHANDLED, a method call) are not replies."""
    if isinstance(result, Outgoing):
        return [result]
    if isinstance(result, list) and result and all(isinstance(r, Outgoing) for r in result):
        return as_outgoing(result)
    return []


def flow_router(runner: Any, *, name: str = "chatstate_flows") -> Router:
    """A router whose handlers run a `FlowRunner` on messages and button presses (use with
    `ChatstateMiddleware`, which provides the session and sends the replies)."""
    router = Router(name=name)

    async def handle(event: Message | CallbackQuery, session: Session,
                     incoming: Incoming) -> list[Outgoing]:
        return cast(list[Outgoing], await runner.handle(session, incoming))

    router.message.register(handle)
    router.callback_query.register(handle, F.data)
    return router


__all__ = [
    "AiogramNotifier",
    "ChatstateEventIsolation",
    "ChatstateMiddleware",
    "ChatstateStorage",
    "flow_router",
    "incoming_from_update",
    "lifecycle_notifier",
    "reply_markup",
    "send_outgoing",
    "session_key_for",
]
