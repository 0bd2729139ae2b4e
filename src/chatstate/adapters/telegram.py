"""Telegram with python-telegram-bot (v22): sessions, flows, rendering and notifications.

    from telegram.ext import ApplicationBuilder
    from chatstate import SessionManager
    from chatstate.adapters.telegram import TelegramAdapter

    manager = SessionManager("redis://localhost:6379/0")
    app = ApplicationBuilder().token(TOKEN).concurrent_updates(True).build()
    adapter = TelegramAdapter(manager, runner, scope="user")   # runner: a FlowRunner
    adapter.install(app)                                        # messages + button presses
    app.run_polling()

For every update the adapter turns the PTB `Update` into an `Incoming`, opens the session of the
key the bot chose (user, chat, user in chat, forum topic), runs the handler, commits, and renders
the `Outgoing` replies: inline keyboards (button `payload` -> `callback_data`), reply keyboards,
keyboard removal, and edits of the message whose button was pressed. Updates of one key are
handled one at a time and in order even with ``concurrent_updates``, and their replies leave in
that order.

* Plain PTB callbacks get a session with ``@adapter.with_session``:
  ``async def cb(update, context, session) -> replies``.
* `FlowConversation` runs flows from ``ConversationHandler``-style entry points.
* `adapter.lifecycle_notifier(bot)` sends warnings, expiries, closures and restore notices.
* For PTB's own ``context.user_data``/``chat_data``/conversation states on a chatstate store see
  `chatstate.adapters.telegram_persistence.ChatstatePersistence`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from ..engine import SessionManager
from ..errors import ConfigurationError
from ..model import Attachment, Incoming, Outgoing, Scope
from ..session import Session
from .base import (
    BotRuntime,
    BusyPolicy,
    ChatRef,
    HandlerLike,
    KeyChooser,
    LifecycleNotifier,
    NotificationTexts,
    Result,
    RuntimeTexts,
    split_text,
)

try:
    from telegram import (
        Bot,
        InlineKeyboardButton,
        InlineKeyboardMarkup,
        KeyboardButton,
        Message,
        ReplyKeyboardMarkup,
        ReplyKeyboardRemove,
        Update,
    )
    from telegram.ext import (
        Application,
        ApplicationHandlerStop,
        BaseHandler,
        CallbackContext,
        CallbackQueryHandler,
        MessageHandler,
        filters,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the python-telegram-bot adapter needs python-telegram-bot: "
        "pip install 'chatstate[telegram]'"
    ) from exc

log = logging.getLogger("chatstate.adapters.telegram")

PLATFORM = "telegram"
TEXT_LIMIT = 4096  # characters in one Telegram message
Markup = InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove
SessionCallback = Callable[[Update, Any, Session], Awaitable[Any]]


# -- Update -> Incoming ---------------------------------------------------------------------


def incoming_from_update(update: Update, platform: str = PLATFORM) -> Incoming | None:
    """The platform-neutral view of a PTB update (messages and button presses; None for
    anything else, e.g. edited messages, polls, chat member changes)."""
    user = update.effective_user
    chat = update.effective_chat
    query = update.callback_query
    if query is not None:
        if not isinstance(query.data, str):
            return None  # arbitrary callback data objects are PTB's, not a flow's payload
        message = query.message
        chat_id = chat.id if chat is not None else query.from_user.id
        thread = _thread_of(message) if isinstance(message, Message) else None
        return Incoming(
            platform=platform, user_id=str(query.from_user.id), chat_id=str(chat_id),
            payload=query.data, message_id=str(message.message_id) if message else None,
            thread_id=thread, user_name=query.from_user.full_name,
            language=query.from_user.language_code,
            timestamp=message.date.timestamp() if isinstance(message, Message) else 0.0,
        )
    message = update.message
    if message is None or chat is None:
        return None
    fields: dict[str, Any] = {
        "platform": platform,
        "user_id": str(user.id if user is not None else chat.id),
        "chat_id": str(chat.id),
        "message_id": str(message.message_id),
        "thread_id": _thread_of(message),
        "user_name": user.full_name if user is not None else None,
        "language": user.language_code if user is not None else None,
        "timestamp": message.date.timestamp(),
        "attachments": _attachments(message),
    }
    text = message.text or message.caption
    if text:
        return Incoming.from_text(text, **fields)
    return Incoming(**fields)


def _thread_of(message: Message) -> str | None:
    """Forum topics only: a reply thread in a normal group is not a separate conversation."""
    if message.is_topic_message and message.message_thread_id:
        return str(message.message_thread_id)
    return None


def _attachments(message: Message) -> list[Attachment]:
    out: list[Attachment] = []
    if message.photo:
        largest = message.photo[-1]
        out.append(Attachment(kind="photo", file_id=largest.file_id, size=largest.file_size))
    for kind in ("document", "audio", "voice", "video", "video_note", "sticker", "animation"):
        item = getattr(message, kind, None)
        if item is not None:
            out.append(Attachment(
                kind=kind, file_id=item.file_id, size=getattr(item, "file_size", None),
                name=getattr(item, "file_name", None), mime_type=getattr(item, "mime_type", None),
            ))
    if message.location is not None:
        out.append(Attachment(kind="location", name=f"{message.location.latitude},"
                                                    f"{message.location.longitude}"))
    if message.contact is not None:
        out.append(Attachment(kind="contact", name=message.contact.phone_number))
    return out


# -- Outgoing -> Bot API ----------------------------------------------------------------------


def reply_markup(outgoing: Outgoing) -> Markup | None:
    """Inline buttons (payload -> callback_data, or a URL), a reply keyboard, or its removal."""
    if outgoing.buttons:
        return InlineKeyboardMarkup([
            [
                InlineKeyboardButton(b.text, url=b.url) if b.url
                else InlineKeyboardButton(b.text, callback_data=b.payload or b.text)
                for b in row
            ]
            for row in outgoing.buttons
        ])
    if outgoing.keyboard:
        return ReplyKeyboardMarkup(
            [[KeyboardButton(text) for text in row] for row in outgoing.keyboard],
            resize_keyboard=True,
            one_time_keyboard=bool(outgoing.metadata.get("one_time_keyboard", False)),
        )
    if outgoing.remove_keyboard:
        return ReplyKeyboardRemove()
    return None


def _chat_id(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


async def send_outgoing(
    bot: Bot, chat: ChatRef, outgoing: Outgoing, *, edit_message_id: str | None = None
) -> Message | bool:
    """Send one reply. ``outgoing.edit`` replaces the text (and inline buttons) of
    `edit_message_id` (the message whose button was pressed); without one, or when a reply
    keyboard is involved (Telegram cannot edit those), it is sent as a new message."""
    markup = reply_markup(outgoing)
    chat_id = _chat_id(chat.chat_id)
    if (
        outgoing.edit and edit_message_id is not None
        and (markup is None or isinstance(markup, InlineKeyboardMarkup))
    ):
        return await bot.edit_message_text(
            outgoing.text, chat_id=chat_id, message_id=int(edit_message_id),
            reply_markup=markup, parse_mode=outgoing.parse_mode,
        )
    thread = int(chat.thread_id) if chat.thread_id else None
    parts = split_text(outgoing.text, TEXT_LIMIT) or [""]
    for part in parts[:-1]:  # over Telegram's limit: the keyboard goes with the last part
        await bot.send_message(chat_id, part, parse_mode=outgoing.parse_mode,
                               message_thread_id=thread)
    return await bot.send_message(
        chat_id, parts[-1], reply_markup=markup, parse_mode=outgoing.parse_mode,
        message_thread_id=thread,
    )


class TelegramNotifier:
    """A `Notifier` that sends lifecycle notifications with a PTB `Bot`."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def send(self, chat: ChatRef, outgoing: Outgoing) -> Any:
        return await send_outgoing(self.bot, chat, outgoing)


# -- the adapter ------------------------------------------------------------------------------


class TelegramAdapter:
    """Runs a chatstate handler (a `FlowRunner`, or ``async def handle(session, incoming)``)
    for python-telegram-bot updates."""

    def __init__(
        self,
        manager: SessionManager,
        handler: HandlerLike,
        *,
        scope: Scope | str = Scope.USER,
        key_for: KeyChooser | None = None,
        busy: BusyPolicy | None = None,
        texts: RuntimeTexts | None = None,
        platform: str = PLATFORM,
        answer_callbacks: bool = True,
        record_history: bool = False,
    ) -> None:
        from .base import scope_key

        self.manager = manager
        self.platform = platform
        self.answer_callbacks = answer_callbacks
        self.runtime = BotRuntime(
            manager, handler, key_for=key_for or scope_key(scope, platform), busy=busy,
            texts=texts, record_history=record_history,
        )

    @property
    def handler(self) -> HandlerLike:
        return self.runtime.handler

    async def __call__(self, update: Update, context: CallbackContext[Any, Any, Any, Any]) -> None:
        """A PTB handler callback."""
        await self.process(update, context.bot)

    async def process(
        self, update: Update, bot: Bot, *, handler: HandlerLike | None = None
    ) -> Result | None:
        """Handle one update and send the replies; None when the update is not for a bot
        (see `incoming_from_update`)."""
        incoming = incoming_from_update(update, self.platform)
        if incoming is None:
            return None
        query = update.callback_query
        if query is not None and self.answer_callbacks:
            try:  # stop the button's spinner first; a failure must not lose the update
                await bot.answer_callback_query(query.id)
            except Exception:
                log.warning("could not answer callback query %s", query.id, exc_info=True)
        where = ChatRef.from_incoming(incoming)
        edit_id = incoming.message_id if query is not None else None

        async def deliver(result: Result) -> None:
            for outgoing in result.replies:
                try:
                    await send_outgoing(bot, where, outgoing, edit_message_id=edit_id)
                except Exception:
                    # The session is committed; a reply Telegram refused (blocked bot, message
                    # not modified, ...) is logged, and the following replies still go out.
                    log.warning("could not send a reply to %s", where, exc_info=True)

        return await self.runtime.process(incoming, deliver=deliver, handler=handler)

    def handlers(self) -> list[BaseHandler[Update, Any, Any]]:
        """A handler for new messages and one for button presses, both calling this adapter."""
        return [
            MessageHandler(filters.UpdateType.MESSAGE, self),
            CallbackQueryHandler(self),
        ]

    def install(self, application: Application[Any, Any, Any, Any, Any, Any], group: int = 0
                ) -> None:
        application.add_handlers(self.handlers(), group=group)

    def with_session(
        self, fn: SessionCallback
    ) -> Callable[[Update, Any], Coroutine[Any, Any, None]]:
        """Wrap a PTB callback so it receives the open session as a third argument; its return
        value (str, Outgoing or a list) is sent after the commit."""

        async def callback(update: Update, context: Any) -> None:
            async def run(session: Session, incoming: Incoming) -> Any:
                return await fn(update, context, session)

            await self.process(update, context.bot, handler=run)

        return callback

    def notifier(self, bot: Bot) -> TelegramNotifier:
        return TelegramNotifier(bot)

    def lifecycle_notifier(
        self, bot: Bot, texts: NotificationTexts | None = None
    ) -> LifecycleNotifier:
        """Hooks for a `Lifecycle`: ``Lifecycle(manager, **adapter.lifecycle_notifier(bot)
        .hooks())``."""
        return LifecycleNotifier(self.notifier(bot), texts)


class FlowConversation(BaseHandler[Update, Any, None]):
    """Flows started from ``ConversationHandler``-style entry points.

        app.add_handler(FlowConversation(adapter, entry_points={
            "book": MessageHandler(filters.Regex("^📅 Book$"), noop),
        }), group=-1)
        app.add_handler(CommandHandler("help", help_cmd))     # the bot's other handlers

    An update matching an entry point starts that flow (leaving any other). While a user is
    inside a flow (or sends a command that starts one, an escape command, or presses a flow's
    button) every update goes to the flow and no other handler sees it
    (`ApplicationHandlerStop`); otherwise the update passes on to the bot's other handlers. Put
    it in a group of its own before them. The adapter's handler must be a `FlowRunner`.
    """

    def __init__(
        self,
        adapter: TelegramAdapter,
        entry_points: Mapping[str, BaseHandler[Update, Any, Any]] | None = None,
        *,
        stop_other_handlers: bool = True,
    ) -> None:
        super().__init__(self._unused, block=True)
        from ..flows import FlowRunner

        runner = adapter.handler
        if not isinstance(runner, FlowRunner):
            raise ConfigurationError(
                "FlowConversation needs a TelegramAdapter built on a FlowRunner"
            )
        for name in entry_points or {}:
            runner.get_flow(name)  # a typo fails now, not on the first user's message
        self.adapter = adapter
        self.runner = runner
        self.entry_points: dict[str, BaseHandler[Update, Any, Any]] = dict(entry_points or {})
        self.stop_other_handlers = stop_other_handlers

    @staticmethod
    async def _unused(update: Update, context: Any) -> None:  # pragma: no cover
        raise AssertionError("FlowConversation handles updates itself")

    def check_update(self, update: object) -> object:
        if not isinstance(update, Update):
            return None
        if update.message is None and update.callback_query is None:
            return None
        for name, handler in self.entry_points.items():
            checked = handler.check_update(update)
            if checked is not None and checked is not False:
                return ("entry", name)
        return ("continue", None)

    async def handle_update(
        self, update: Update, application: Application[Any, Any, Any, Any, Any, Any],
        check_result: object, context: Any,
    ) -> None:
        assert isinstance(check_result, tuple)
        kind: str = check_result[0]
        name: str = check_result[1] or ""
        if kind == "entry":
            async def start(session: Session, incoming: Incoming) -> list[Outgoing]:
                return await self.runner.start(session, name, incoming)

            await self.adapter.process(update, application.bot, handler=start)
        else:
            incoming = incoming_from_update(update, self.adapter.platform)
            if incoming is None or not await self._for_flows(incoming):
                return None  # not ours: the bot's other handlers see it
            await self.adapter.process(update, application.bot)
        if self.stop_other_handlers:
            raise ApplicationHandlerStop

    async def _for_flows(self, incoming: Incoming) -> bool:
        from ..flows.base import parse_payload
        from ..flows.runner import MENU_PREFIX
        from ..flows.suggest import fold

        if incoming.command and (
            fold(incoming.command) in self.runner.triggers
            or self.runner.commands.match(incoming) is not None
        ):
            return True
        if incoming.payload is not None and (
            incoming.payload.startswith(MENU_PREFIX) or parse_payload(incoming.payload)
        ):
            return True
        record = await self.adapter.manager.get(self.adapter.runtime.key_for(incoming))
        return record is not None and record.flow is not None


def updates_of(data: Sequence[Mapping[str, Any]], bot: Bot) -> list[Update]:
    """Decode Bot API update JSON (as Telegram sends it) into PTB updates."""
    out = []
    for item in data:
        update = Update.de_json(dict(item), bot)
        if update is not None:
            out.append(update)
    return out


__all__ = [
    "FlowConversation",
    "TelegramAdapter",
    "TelegramNotifier",
    "incoming_from_update",
    "reply_markup",
    "send_outgoing",
    "updates_of",
]
