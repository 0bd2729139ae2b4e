"""Platform adapters: Telegram (python-telegram-bot, aiogram), and the neutral runtime they share.

`chatstate.adapters.base` imports no platform SDK; each platform module imports its own SDK and
says which extra to install when it is missing (``pip install 'chatstate[telegram]'``).
"""

from .base import (
    REPLY_TO_FIELD,
    BotRuntime,
    ChatRef,
    LifecycleNotifier,
    NotificationTexts,
    Notifier,
    Result,
    RuntimeTexts,
    SessionHandler,
    chat_ref_of,
    open_session,
    scope_key,
)

__all__ = [
    "REPLY_TO_FIELD",
    "BotRuntime",
    "ChatRef",
    "LifecycleNotifier",
    "NotificationTexts",
    "Notifier",
    "Result",
    "RuntimeTexts",
    "SessionHandler",
    "chat_ref_of",
    "open_session",
    "scope_key",
]
