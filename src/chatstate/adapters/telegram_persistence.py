"""python-telegram-bot `BasePersistence` on any chatstate store: one line for an existing bot.

    from chatstate.adapters.telegram_persistence import ChatstatePersistence

    app = (ApplicationBuilder().token(TOKEN)
           .persistence(ChatstatePersistence("redis://localhost:6379/0", update_interval=5))
           .build())

``context.user_data``, ``chat_data``, ``bot_data``, arbitrary ``callback_data`` and
``ConversationHandler(..., persistent=True, name=...)`` states then live in the chatstate store:
durable (SQLite, Redis, PostgreSQL), shared by every instance of the bot, with optional TTL
(`policy`) and the store's atomic compare-and-set commits.

How PTB's data maps onto chatstate sessions (`platform` defaults to ``"ptb"``; give each bot
sharing a store its own, e.g. ``"ptb.shopbot"``):

=====================  ==============================================  ====================
PTB data               chatstate session key                           field of the data
=====================  ==============================================  ====================
user_data[user_id]     ``<platform>:user:<user_id>``                   ``user_data``
chat_data[chat_id]     ``<platform>:chat:<chat_id>``                   ``chat_data``
bot_data               ``<platform>:chat:bot_data``                    ``bot_data``
callback_data          ``<platform>:chat:callback_data``               ``callback_data``
conversation <name>    ``<platform>:chat:conversation.<quoted name>``  ``states``
=====================  ==============================================  ====================

Telegram chat and user ids are integers, so the named records cannot collide with them.

The contract, as PTB documents it:

* ``get_*`` load everything once at start-up; missing data is an empty dict (None for
  callback_data).
* ``update_*`` / ``drop_*`` write at once (every ``update_interval`` seconds PTB hands over
  what its handlers changed, and on ``Application.stop()``); each write is one atomic commit.
* ``refresh_*`` run before each handler: data that *another instance* wrote since this one last
  read or wrote it replaces the local copy (compared by the record's version), so several
  instances see each other's writes; local changes not yet flushed are kept otherwise. Two
  instances changing the same user's data between two flushes: the later flush wins (use a
  small ``update_interval`` for multi-instance bots).
* ``flush`` closes the store when this persistence opened it.

Values must be JSON data (dict keys become strings, tuples become lists), or Telegram objects
(stored with ``to_dict()`` and rebuilt with the current bot, as PTB recommends instead of
pickling bot instances). Anything else raises `InvalidDataError` naming the value.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any, cast

from ..engine import SessionManager
from ..errors import ConfigurationError, InvalidDataError
from ..model import SessionKey
from ..policy import LifecyclePolicy
from ..session import Session
from ..stores.base import SessionFilter, Store

try:
    import telegram
    from telegram import TelegramObject
    from telegram.ext import BasePersistence, PersistenceInput
    from telegram.ext._utils.types import CDCData, ConversationDict, ConversationKey
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "ChatstatePersistence needs python-telegram-bot: pip install 'chatstate[telegram]'"
    ) from exc

log = logging.getLogger("chatstate.adapters.telegram_persistence")

#: PTB's data never expires by itself; pass a policy to give it a TTL.
FOREVER = LifecyclePolicy(idle_timeout=None, max_age=None, retention=None)
_OBJECT = "__telegram_object__"


class ChatstatePersistence(BasePersistence[dict[Any, Any], dict[Any, Any], dict[Any, Any]]):
    """PTB persistence backed by a chatstate store (a `Store`, a store URL, or a
    `SessionManager` to share with the rest of the bot)."""

    def __init__(
        self,
        store_or_url: Store | str | SessionManager | None = None,
        *,
        store_data: PersistenceInput | None = None,
        update_interval: float = 60,
        platform: str = "ptb",
        policy: LifecyclePolicy | None = None,
    ) -> None:
        super().__init__(store_data=store_data, update_interval=update_interval)
        if isinstance(store_or_url, SessionManager):
            if policy is not None:
                raise ConfigurationError("pass the policy to the SessionManager you share")
            self.manager = store_or_url
            self._owns_manager = False
        else:
            self.manager = SessionManager(store_or_url, policy=policy or FOREVER)
            self._owns_manager = True
        SessionKey(platform, "chat", "bot_data")  # a bad platform name fails here, not later
        self.platform = platform
        self._seen: dict[str, int] = {}  # key -> record version this instance last read/wrote

    # -- keys -------------------------------------------------------------------------------

    def user_key(self, user_id: int) -> SessionKey:
        return SessionKey.user(self.platform, user_id)

    def chat_key(self, chat_id: int) -> SessionKey:
        return SessionKey.chat(self.platform, chat_id)

    def named_key(self, name: str) -> SessionKey:
        return SessionKey.chat(self.platform, name)

    def conversation_key(self, name: str) -> SessionKey:
        return self.named_key("conversation." + urllib.parse.quote(name, safe=""))

    # -- reading and writing ----------------------------------------------------------------

    async def _all(self, scope: str, field: str) -> dict[int, dict[Any, Any]]:
        await self.manager.open()
        out: dict[int, dict[Any, Any]] = {}
        wanted = SessionFilter(status="active", key_prefix=f"{self.platform}:{scope}:")
        cursor: str | None = None
        while True:
            page = await self.manager.store.list(wanted, limit=500, cursor=cursor)
            for record in page.items:
                ident = record.key.rsplit(":", 1)[1]
                if field in record.data and ident.lstrip("-").isdigit():
                    out[int(ident)] = self._decode(record.data[field])
                    self._seen[record.key] = record.version
            cursor = page.next_cursor
            if not cursor:
                return out

    async def _read(self, key: SessionKey, field: str) -> tuple[Any, int] | None:
        record = await self.manager.get(key)
        if record is None or field not in record.data:
            return None
        return record.data[field], record.version

    async def _write(self, key: SessionKey, field: str, value: Any) -> None:
        encoded = _encode(value, field)
        # A write counts as activity, so a policy's idle timeout slides with use.
        async with self.manager.session(key) as s:
            s.data[field] = encoded
        self._seen[str(key)] = s.record.version

    async def _refresh(self, key: SessionKey, field: str, target: dict[Any, Any]) -> None:
        """Replace `target` in place with the stored data when another instance changed it."""
        found = await self._read(key, field)
        if found is None:
            return
        value, version = found
        if version <= self._seen.get(str(key), 0):
            return  # nothing new: keep local changes that are not flushed yet
        target.clear()
        target.update(self._decode(value))
        self._seen[str(key)] = version

    def _decode(self, value: Any) -> Any:
        return _decode(value, self.bot)

    # -- user_data --------------------------------------------------------------------------

    async def get_user_data(self) -> dict[int, dict[Any, Any]]:
        return await self._all("user", "user_data")

    async def update_user_data(self, user_id: int, data: dict[Any, Any]) -> None:
        await self._write(self.user_key(user_id), "user_data", data)

    async def refresh_user_data(self, user_id: int, user_data: dict[Any, Any]) -> None:
        await self._refresh(self.user_key(user_id), "user_data", user_data)

    async def drop_user_data(self, user_id: int) -> None:
        await self.manager.clear(self.user_key(user_id))
        self._seen.pop(str(self.user_key(user_id)), None)

    # -- chat_data --------------------------------------------------------------------------

    async def get_chat_data(self) -> dict[int, dict[Any, Any]]:
        return await self._all("chat", "chat_data")

    async def update_chat_data(self, chat_id: int, data: dict[Any, Any]) -> None:
        await self._write(self.chat_key(chat_id), "chat_data", data)

    async def refresh_chat_data(self, chat_id: int, chat_data: dict[Any, Any]) -> None:
        await self._refresh(self.chat_key(chat_id), "chat_data", chat_data)

    async def drop_chat_data(self, chat_id: int) -> None:
        await self.manager.clear(self.chat_key(chat_id))
        self._seen.pop(str(self.chat_key(chat_id)), None)

    # -- bot_data ---------------------------------------------------------------------------

    async def get_bot_data(self) -> dict[Any, Any]:
        found = await self._read(self.named_key("bot_data"), "bot_data")
        if found is None:
            return {}
        self._seen[str(self.named_key("bot_data"))] = found[1]
        return cast(dict[Any, Any], self._decode(found[0]))

    async def update_bot_data(self, data: dict[Any, Any]) -> None:
        key = self.named_key("bot_data")
        found = await self._read(key, "bot_data")
        if found is not None and found[0] == _encode(data, "bot_data"):
            return  # PTB hands bot_data over on every run; unchanged data is not rewritten
        await self._write(key, "bot_data", data)

    async def refresh_bot_data(self, bot_data: dict[Any, Any]) -> None:
        await self._refresh(self.named_key("bot_data"), "bot_data", bot_data)

    # -- callback_data ----------------------------------------------------------------------

    async def get_callback_data(self) -> CDCData | None:
        found = await self._read(self.named_key("callback_data"), "callback_data")
        if found is None:
            return None
        keyboards, buttons = self._decode(found[0])
        return (
            [(str(uuid), float(at), dict(data)) for uuid, at, data in keyboards],
            {str(k): str(v) for k, v in buttons.items()},
        )

    async def update_callback_data(self, data: CDCData) -> None:
        keyboards, buttons = data
        value = [[[uuid, at, items] for uuid, at, items in keyboards], dict(buttons)]
        key = self.named_key("callback_data")
        found = await self._read(key, "callback_data")
        if found is not None and found[0] == _encode(value, "callback_data"):
            return
        await self._write(key, "callback_data", value)

    # -- conversations ----------------------------------------------------------------------

    async def get_conversations(self, name: str) -> ConversationDict:
        found = await self._read(self.conversation_key(name), "states")
        if found is None:
            return {}
        return {
            tuple(json.loads(key)): self._decode(state) for key, state in found[0].items()
        }

    async def update_conversation(
        self, name: str, key: ConversationKey, new_state: object | None
    ) -> None:
        encoded_key = json.dumps(list(key), separators=(",", ":"))
        state = None if new_state is None else _encode(new_state, f"state of {name!r}")

        def apply(session: Session) -> None:
            states = session.data.setdefault("states", {})
            if state is None:
                states.pop(encoded_key, None)
            else:
                states[encoded_key] = state

        # Conversations of one handler share a record: a read-modify-write that the engine
        # serialises (and retries on a conflicting commit from another instance).
        await self.manager.update(self.conversation_key(name), apply)

    # -- shutdown ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Every write is already committed; close the store if this persistence opened it."""
        if self._owns_manager:
            await self.manager.aclose()


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, TelegramObject):
        return {_OBJECT: type(value).__name__, "data": value.to_dict()}
    if isinstance(value, Mapping):
        return {_key(k, where): _encode(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, where) for v in value]
    raise InvalidDataError(
        f"{where}: {type(value).__name__} value {value!r:.60} cannot be stored by "
        "ChatstatePersistence; keep JSON data (dict, list, str, int, float, bool, None) or "
        "Telegram objects"
    )


def _key(key: Any, where: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (int, float, bool)):
        return json.dumps(key)
    raise InvalidDataError(f"{where}: dict key {key!r:.40} must be a string or a number")


def _decode(value: Any, bot: Any) -> Any:
    if isinstance(value, dict):
        name = value.get(_OBJECT)
        if isinstance(name, str) and set(value) == {_OBJECT, "data"}:
            cls = getattr(telegram, name, None)
            if isinstance(cls, type) and issubclass(cls, TelegramObject):
                return cls.de_json(value["data"], bot)
        return {k: _decode(v, bot) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, bot) for v in value]
    return value


__all__ = ["FOREVER", "ChatstatePersistence"]
