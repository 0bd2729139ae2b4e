"""The chat API (`POST /v1/chat`), its event stream, and the dashboard's live event stream."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from ..events import Event
from ..model import Incoming, Message, Outgoing, SessionKey, SessionRecord
from .auth import Role
from .bots import as_outgoing
from .problems import Problem
from .runtime import Runtime
from .schemas import ChatIn, ChatOut
from .views import remaining

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.@\-]{1,128}$")
_json = msgspec.json.Encoder()


@dataclass
class ChatResult:
    user_id: str
    replies: list[Outgoing]
    record: SessionRecord | None
    now: float


def anonymous_id() -> str:
    return "anon-" + secrets.token_urlsafe(12)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def check_rate(rt: Runtime, who: str) -> None:
    wait = rt.limiter.take(who)
    if wait > 0:
        rt.metrics.chat_rate_limited.inc()
        seconds = max(1, int(wait + 0.999))
        raise Problem(
            429, f"too many messages; wait {seconds} s before sending the next one "
            f"(limit: {rt.settings.chat_rate_per_minute:g} per minute)",
            headers={"Retry-After": str(seconds)},
        )


async def chat_once(
    rt: Runtime, user_id: str, text: str, payload: str | None = None
) -> ChatResult:
    """One user message answered by the bot, in one session update."""
    start = time.perf_counter()
    platform = rt.settings.chat_platform
    key = rt.chat_key(user_id)
    now = rt.clock.now()
    incoming = Incoming.from_text(
        text, platform=platform, user_id=user_id, chat_id=user_id, timestamp=now
    )
    if payload is not None:
        incoming.payload = payload
    bot = rt.bot
    record: SessionRecord | None
    if bot.in_session(incoming):
        assert bot.session_reply is not None
        # Step funnel counters come from the flow runner's `flow.step.*` events.
        async with rt.manager.session(key) as s:
            rt.memory.stage(s, Message(role="user", content=text))
            replies = as_outgoing(await bot.session_reply(s, incoming))
            answers = [Message(role="assistant", content=r.text) for r in replies if r.text]
            if answers:
                rt.memory.stage(s, *answers)
            record = s.record
    else:
        assert bot.self_reply is not None
        replies = as_outgoing(await bot.self_reply(incoming))
        record = await rt.manager.get(key)
    rt.metrics.chat_seconds.observe(time.perf_counter() - start)
    rt.metrics.chat_answered.inc()
    return ChatResult(user_id, replies, record, rt.clock.now())



def session_info(result: ChatResult) -> dict[str, Any]:
    record = result.record
    if record is None:
        return {
            "session_id": "", "key": "", "status": "closed", "state": None, "flow": None,
            "step": None, "message_count": 0, "expires_at": None, "remaining_seconds": None,
        }
    return {
        "session_id": record.id,
        "key": record.key,
        "status": record.status.value,
        "state": record.state,
        "flow": record.flow.name if record.flow else None,
        "step": record.flow.step if record.flow else None,
        "message_count": record.counters.messages,
        "expires_at": record.expires_at,
        "remaining_seconds": remaining(record, result.now),
    }


def reply_view(reply: Outgoing) -> dict[str, Any]:
    return {
        "text": reply.text,
        "buttons": [
            [{"text": b.text, "payload": b.payload, "url": b.url} for b in row]
            for row in reply.buttons
        ],
        "keyboard": reply.keyboard,
    }


def resolve_user(rt: Runtime, request: Request, given: str | None) -> tuple[str, bool]:
    """The chat user: given in the body, else the cookie, else a new anonymous id."""
    if given:
        return given, False
    cookie = request.cookies.get(rt.settings.cookie_name)
    if cookie and USER_ID_RE.match(cookie):
        return cookie, False
    return anonymous_id(), True


def set_user_cookie(rt: Runtime, response: Response, user_id: str) -> None:
    response.set_cookie(
        rt.settings.cookie_name, user_id, max_age=30 * 86400, httponly=True, samesite="lax",
        secure=rt.settings.cookie_secure,
    )


def event_view(event: Event) -> dict[str, Any]:
    return {
        "name": event.name, "key": event.key, "session_id": event.session_id, "at": event.at,
        "data": {k: v for k, v in event.data.items() if isinstance(v, str | int | float | bool)},
    }


async def sse(rt: Runtime, queue: asyncio.Queue[Event], request: Request) -> AsyncIterator[bytes]:
    """Server-sent events from `queue`, with a heartbeat, until the client or server leaves."""
    yield b"retry: 3000\n\n"
    closing = rt.hub.closing
    while not closing.is_set():
        getter = asyncio.ensure_future(queue.get())
        stopper = asyncio.ensure_future(closing.wait())
        try:
            done, _ = await asyncio.wait({getter, stopper}, timeout=15.0,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (getter, stopper):
                if not task.done():
                    task.cancel()
        if getter in done:
            event = getter.result()
            yield b"event: " + event.name.encode() + b"\ndata: " + _json.encode(
                event_view(event)
            ) + b"\n\n"
        elif not done:
            if await request.is_disconnected():
                return
            yield b": keep-alive\n\n"


async def answer_chat(
    rt: Runtime, request: Request, message: str, given_user_id: str | None,
    payload: str | None,
) -> Response:
    """`POST /v1/chat` for a validated body, by the route or by its fast path."""
    user_id, new = resolve_user(rt, request, given_user_id)
    check_rate(rt, f"ip:{client_address(request)}" if new else user_id)
    if len(message) > rt.settings.max_message_chars:
        raise Problem(
            413, f"the message has {len(message)} characters; the limit is "
            f"{rt.settings.max_message_chars}",
        )
    result = await chat_once(rt, user_id, message, payload)
    replies = [reply_view(r) for r in result.replies]
    body = {
        "user_id": user_id,
        "reply": "\n".join(r.text for r in result.replies if r.text),
        "replies": replies,
        "session": session_info(result),
    }
    # Encoded directly: this is the hot path, and the shape is ChatOut by construction.
    response = Response(_json.encode(body), media_type="application/json")
    if given_user_id is None:
        set_user_cookie(rt, response, user_id)
    return response


def build(rt: Runtime, role: Any) -> APIRouter:
    router = APIRouter(tags=["chat"])

    # The common request is answered by `fastchat.ChatFastPath` before routing; this route
    # answers the rest (and describes the endpoint in the OpenAPI schema).
    @router.post("/v1/chat", response_model=ChatOut, **role(Role.CHAT))
    async def chat(body: ChatIn, request: Request) -> Any:
        return await answer_chat(rt, request, body.message, body.user_id, body.payload)

    @router.get(
        "/v1/chat/events", **role(Role.CHAT),
        responses={200: {"content": {"text/event-stream": {}},
                         "description": "the chat user's session events (timeouts, closing)"}},
    )
    async def chat_events(
        request: Request,
        user_id: Annotated[str | None, Query(max_length=128, pattern=USER_ID_RE.pattern)] = None,
    ) -> StreamingResponse:
        uid = user_id or request.cookies.get(rt.settings.cookie_name)
        if not uid or not USER_ID_RE.match(uid):
            raise Problem(400, "pass user_id (or send a message first to get a session cookie)")
        key = str(SessionKey.user(rt.settings.chat_platform, uid))
        queue = rt.hub.subscribe(key)

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for chunk in sse(rt, queue, request):
                    yield chunk
            finally:
                rt.hub.unsubscribe(queue, key)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @router.get(
        "/v1/events", tags=["dashboard"], **role(Role.READ),
        responses={200: {"content": {"text/event-stream": {}},
                         "description": "every session event, live (for the dashboard)"}},
    )
    async def all_events(request: Request) -> StreamingResponse:
        queue = rt.hub.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for chunk in sse(rt, queue, request):
                    yield chunk
            finally:
                rt.hub.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    return router
