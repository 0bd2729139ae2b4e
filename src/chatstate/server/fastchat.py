"""`POST /v1/chat` without FastAPI's per-request machinery, for the requests it can take whole.

The chat endpoint is the service's hot path, and on it FastAPI's routing (every route of the
app is tried in turn), dependency solving (the auth dependency and its two security schemes) and
pydantic validation cost more than the session update itself. This middleware sits inside the
body limit and CORS and answers a chat request directly when it is the common case:

* a JSON body (``Content-Type: application/json``) that decodes into the same fields, within
  the same limits, as `schemas.ChatIn` (checked by msgspec, then the same length and pattern
  rules);
* a key (or no key) that the chat role admits on its own (`Authenticator.admits`).

Everything else (bad JSON, a field out of bounds, an unknown field, a refused or missing key,
the open-local host check, another content type) goes on to the FastAPI route unchanged, with
the body replayed, so that errors keep their exact wording. Both paths answer through
`routes_chat.answer_chat`, and errors raised while answering get the handlers `problems.install`
registers, as they would on the route.
"""

from __future__ import annotations

import re
from collections import deque

import msgspec
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import problems
from .auth import Authenticator, Role
from .routes_chat import answer_chat
from .runtime import Runtime
from .schemas import MAX_TEXT

PATH = "/v1/chat"
_USER_ID = re.compile(r"[A-Za-z0-9_.@\-]{1,128}")  # ChatIn.user_id, matched whole
_MAX_PAYLOAD = 1000  # ChatIn.payload


class _ChatBody(msgspec.Struct, forbid_unknown_fields=True):
    """The fields of `schemas.ChatIn` (its limits are checked in `_valid`)."""

    message: str
    user_id: str | None = None
    payload: str | None = None


_decode = msgspec.json.Decoder(_ChatBody).decode


def _valid(body: _ChatBody) -> bool:
    if not 1 <= len(body.message) <= MAX_TEXT:
        return False
    if body.user_id is not None and _USER_ID.fullmatch(body.user_id) is None:
        return False
    return body.payload is None or len(body.payload) <= _MAX_PAYLOAD


_KEY_HEADERS = (b"authorization", b"x-api-key")


def _sends_key(scope: Scope) -> bool:
    return any(name in _KEY_HEADERS for name, _ in scope["headers"])


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":  # the first one, as Starlette reads it
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json"
    return False


class ChatFastPath:
    def __init__(self, app: ASGIApp, runtime: Runtime, auth: Authenticator) -> None:
        self.app = app
        self.runtime = runtime
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST"
            or scope.get("root_path") or not _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        consumed: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            consumed.append(message)
            if message["type"] != "http.request":  # the client left: the route decides
                await self._route(scope, receive, send, consumed)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            body = _decode(b"".join(chunks))
        except (msgspec.DecodeError, msgspec.ValidationError):
            body = None
        request = Request(scope, receive)
        # No key header at all is the common case: no need to run the security schemes.
        key = await self.auth.key_of(request) if _sends_key(scope) else None
        if body is None or not _valid(body) or not self.auth.admits(key, Role.CHAT):
            await self._route(scope, receive, send, consumed)
            return
        try:
            response = await answer_chat(
                self.runtime, request, body.message, body.user_id, body.payload
            )
        except Exception as exc:
            handler = problems.handler_for(exc)
            if handler is None:
                raise  # the app's catch-all answers it, as on the route
            response = await handler(request, exc)
        await response(scope, receive, send)

    async def _route(
        self, scope: Scope, receive: Receive, send: Send, consumed: list[Message]
    ) -> None:
        """Hand the request to the FastAPI route, replaying what was read of it."""
        pending = deque(consumed)

        async def replay() -> Message:
            if pending:
                return pending.popleft()
            return await receive()

        await self.app(scope, replay, send)
