"""A local stand-in for the Telegram Bot API that both SDKs talk to in tests.

It serves ``/bot<token>/<method>`` on 127.0.0.1 (what python-telegram-bot's
``ApplicationBuilder().base_url(f"{url}/bot")`` and aiogram's
``TelegramAPIServer.from_base(url)`` call), answers in the Bot API format
(``{"ok": true, "result": ...}``) and records every call with its decoded parameters, so a test
asserts on what the bot sent. It also builds updates exactly as Telegram sends them (the
documented ``Update`` JSON shapes), numbered like Telegram's ``update_id``.

Run it on its own (for the multi-process tests) with ``python fake_telegram.py PORTFILE``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

BOT_ID = 123456789
TOKEN = f"{BOT_ID}:AAE-test-token-for-the-fake-server_0123"
BOT_USER = {
    "id": BOT_ID, "is_bot": True, "first_name": "Chatstate Test", "username": "chatstate_test_bot",
    "can_join_groups": True, "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    result: Any = None  # what the server answered

    @property
    def chat_id(self) -> int | str | None:
        return self.params.get("chat_id")

    @property
    def text(self) -> str | None:
        return self.params.get("text")

    @property
    def markup(self) -> dict[str, Any] | None:
        return self.params.get("reply_markup")

    @property
    def message_id(self) -> int:
        """The id of the message this call sent or edited."""
        assert isinstance(self.result, dict), f"{self.method} returned no message"
        return int(self.result["message_id"])


@dataclass
class FakeTelegram:
    """The fake server; `await start()` / `await stop()` or ``async with``."""

    calls: list[Call] = field(default_factory=list)
    fail_methods: set[str] = field(default_factory=set)  # answer these with an API error
    pending: list[dict[str, Any]] = field(default_factory=list)  # served by getUpdates
    port: int = 0
    _runner: web.AppRunner | None = None
    _message_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _changed: asyncio.Condition | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._changed = asyncio.Condition()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what the bot sent --------------------------------------------------------------------

    def of(self, *methods: str) -> list[Call]:
        return [c for c in self.calls if c.method in methods]

    def sent(self, chat_id: int | None = None) -> list[Call]:
        """sendMessage and editMessageText calls, optionally to one chat."""
        return [
            c for c in self.of("sendMessage", "editMessageText")
            if chat_id is None or c.chat_id == chat_id
        ]

    def texts(self, chat_id: int | None = None) -> list[str]:
        return [c.text or "" for c in self.sent(chat_id)]

    def clear(self) -> None:
        self.calls.clear()

    async def wait_for(self, count: int, *methods: str, within: float = 10.0) -> list[Call]:
        """Wait until at least `count` calls of `methods` were recorded (bounded)."""
        assert self._changed is not None
        wanted = methods or ("sendMessage", "editMessageText")

        def enough() -> bool:
            return len(self.of(*wanted)) >= count

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(enough), within)
        return self.of(*wanted)

    # -- the API ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        token = request.match_info["token"]
        params = await _params(request)
        call = Call(method, params)
        self.calls.append(call)
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()
        if token != TOKEN:
            return _error(401, "Unauthorized")
        if method in self.fail_methods:
            return _error(400, "Bad Request: chat not found")
        if method == "getUpdates":
            return web.json_response({"ok": True, "result": await self._updates(params)})
        call.result = self._result(method, params)
        return web.json_response({"ok": True, "result": call.result})

    async def _updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Long polling: queued updates from `offset` on (confirming the earlier ones), or an
        empty answer after a short wait."""
        offset = int(params.get("offset") or 0)
        self.pending = [u for u in self.pending if u["update_id"] >= offset]
        if not self.pending:
            await asyncio.sleep(0.05)
        limit = int(params.get("limit") or 100)
        return self.pending[:limit]

    def _result(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getMe":
            return BOT_USER
        if method in ("sendMessage", "editMessageText"):
            chat_id = params.get("chat_id")
            message_id = params.get("message_id") or next(self._message_ids)
            message: dict[str, Any] = {
                "message_id": message_id, "date": int(time.time()), "from": BOT_USER,
                "chat": _chat(chat_id), "text": params.get("text", ""),
            }
            if params.get("message_thread_id"):
                message["message_thread_id"] = params["message_thread_id"]
                message["is_topic_message"] = True
            markup = params.get("reply_markup")
            if isinstance(markup, dict) and "inline_keyboard" in markup:
                message["reply_markup"] = markup
            if method == "editMessageText":
                message["edit_date"] = int(time.time())
            return message
        return True  # answerCallbackQuery, setMyCommands, deleteWebhook, close, ...


async def _params(request: web.Request) -> dict[str, Any]:
    """Decode the parameters as Telegram does: query string, urlencoded or multipart form, or a
    JSON body; values that are JSON objects/arrays (reply_markup, ...) and numbers decoded."""
    raw: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        raw.update(body if isinstance(body, dict) else {})
    elif request.can_read_body:
        form = await request.post()
        raw.update({k: v for k, v in form.items() if isinstance(v, str)})
    return {k: _decode(v) for k, v in raw.items()}


def _decode(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:1] in ("{", "[") or text in ("true", "false", "null"):
        try:
            return json.loads(text)
        except ValueError:
            return value
    if text.lstrip("-").isdigit():
        return int(text)
    return value


def _chat(chat_id: Any) -> dict[str, Any]:
    if isinstance(chat_id, int) and chat_id < 0:
        return {"id": chat_id, "type": "supergroup", "title": "Test group", "is_forum": True}
    return {"id": chat_id, "type": "private", "first_name": "Ada"}


def _error(code: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": code, "description": description},
                             status=code)


# -- updates as Telegram sends them -----------------------------------------------------------

_update_ids = itertools.count(700_000_000)
_incoming_message_ids = itertools.count(1)


def user(user_id: int = 42, first_name: str = "Ada", language: str = "en") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "username": f"u{user_id}",
            "language_code": language}


def text_update(
    text: str, *, user_id: int = 42, chat_id: int | None = None, thread_id: int | None = None,
    language: str = "en",
) -> dict[str, Any]:
    """An Update with a text message (a command gets its bot_command entity, as Telegram adds)."""
    chat_id = user_id if chat_id is None else chat_id
    message: dict[str, Any] = {
        "message_id": next(_incoming_message_ids), "date": int(time.time()),
        "from": user(user_id, language=language), "chat": _chat_of(chat_id, user_id),
        "text": text,
    }
    if text.startswith("/"):
        length = len(text.split()[0])
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    if thread_id is not None:
        message["message_thread_id"] = thread_id
        message["is_topic_message"] = True
    return {"update_id": next(_update_ids), "message": message}


def callback_update(
    data: str, *, user_id: int = 42, chat_id: int | None = None, message_id: int = 1000,
    message_text: str = "question",
) -> dict[str, Any]:
    """An Update with a callback_query from an inline button on a bot message."""
    chat_id = user_id if chat_id is None else chat_id
    return {
        "update_id": next(_update_ids),
        "callback_query": {
            "id": str(next(_update_ids)), "from": user(user_id),
            "chat_instance": f"ci{chat_id}", "data": data,
            "message": {
                "message_id": message_id, "date": int(time.time()), "from": BOT_USER,
                "chat": _chat_of(chat_id, user_id), "text": message_text,
            },
        },
    }


def _chat_of(chat_id: int, user_id: int) -> dict[str, Any]:
    if chat_id == user_id:
        return {"id": chat_id, "type": "private", "first_name": "Ada", "username": f"u{user_id}"}
    return {"id": chat_id, "type": "supergroup", "title": "Test group", "is_forum": True}


def buttons(call: Call) -> list[list[str]]:
    """The texts of an inline keyboard sent with `call`."""
    markup = call.markup or {}
    return [[b["text"] for b in row] for row in markup.get("inline_keyboard", [])]


def payloads(call: Call) -> dict[str, str]:
    """Button text -> callback_data of an inline keyboard sent with `call`."""
    markup = call.markup or {}
    return {b["text"]: b["callback_data"] for row in markup.get("inline_keyboard", [])
            for b in row if "callback_data" in b}


async def _serve_forever(port_file: str) -> None:
    fake = await FakeTelegram().start()
    Path(port_file).write_text(str(fake.port))  # noqa: ASYNC240 - once, at start-up
    await asyncio.Event().wait()


if __name__ == "__main__":  # pragma: no cover - used by the multi-process tests
    asyncio.run(_serve_forever(sys.argv[1]))
