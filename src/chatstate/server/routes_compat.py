"""Routes that answer like the seed systems' own APIs, so their clients work unchanged.

Seed 001 (agent sessions, ``/api/sessions``). Its guide lists the query parameters and actions but
not the JSON, so the bodies follow its model (`agent-sessions.ts`) in its snake_case, wrapped the
way its route answers: ``{"success": true, "session": {...}}``, ``{"success": true, "sessions":
[...], "count": n}``, ``{"success": true, "stats": {...}}``; failures carry ``success: false``
and ``error`` (inside a problem+json body). A seed-001 session is the current session of the key
``agent:chat:<conversation_id>``; its interface and external ids are labels, its state variables
the session's data. Status ``closed`` is reported as the seed's ``inactive``.

Seed 003 (JunkJet, ``/chatbot/...``): exactly the shapes its guide shows. Its users are chat users
(``web:user:<userId>``), the same sessions as ``POST /v1/chat``; ``remainingTime`` and
``sessionAge`` are minutes as there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..memory import MEMORY_KEY
from ..model import Message, SessionKey, SessionRecord, Status
from ..policy import set_timeouts
from ..session import Session
from ..stores.base import SessionFilter
from .auth import Role
from .problems import Problem
from .routes_chat import chat_once, check_rate, client_address, resolve_user, set_user_cookie
from .runtime import Runtime
from .views import remaining

AGENT_PLATFORM = "agent"
_STATUS_001 = {"active": "active", "closed": "inactive", "expired": "expired"}
_RESERVED = (MEMORY_KEY, "_lifecycle")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def public_data(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _RESERVED}


def conversation_key(conversation_id: str | int) -> SessionKey:
    try:
        return SessionKey.chat(AGENT_PLATFORM, conversation_id)
    except ValueError as exc:
        raise Problem(400, f"conversation_id: {exc}") from None


# -- seed 001 -----------------------------------------------------------------------------------


class SessionsAction(BaseModel):
    """The body of ``POST /api/sessions``; which fields matter depends on `action`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    action: Literal[
        "create", "addMessage", "clearMessages", "updateState", "deactivate", "cleanup",
        "buildContext",
    ]
    sessionId: str | None = Field(None, alias="session_id", max_length=300)
    conversation_id: str | int | None = Field(None, alias="conversationId")
    interface_type: str | None = Field(None, max_length=32, pattern=r"^[a-z0-9][a-z0-9_.\-]*$")
    external_user_id: str | int | None = None
    external_chat_id: str | int | None = None
    token_limit: int | None = Field(None, ge=1, le=10_000_000)
    expires_in_ms: int | None = Field(None, ge=1000, le=365 * 86400 * 1000)
    role: Literal["system", "user", "assistant", "tool"] | None = None
    content: str | None = Field(None, max_length=32_000)
    metadata: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    maxMessages: int | None = Field(None, ge=1, le=1000)
    maxTokens: int | None = Field(None, ge=1, le=2_000_000)


def agent_session(record: SessionRecord, now: float) -> dict[str, Any]:
    labels = record.labels
    conversation = record.key.split(":", 2)[2] if record.key.count(":") >= 2 else record.key
    return {
        "id": record.id,
        "conversation_id": int(conversation) if conversation.isdigit() else conversation,
        "interface_type": labels.get("interface", record.platform),
        "external_user_id": labels.get("external_user_id"),
        "external_chat_id": labels.get("external_chat_id"),
        "status": _STATUS_001.get(record.status.value, record.status.value),
        "state": public_data(record.data),
        "message_count": record.counters.messages,
        "tool_call_count": record.counters.tool_calls,
        "error_count": record.counters.errors,
        "input_tokens": record.usage.input_tokens,
        "output_tokens": record.usage.output_tokens,
        "total_tokens": record.usage.input_tokens + record.usage.output_tokens,
        "token_limit": int(labels["token_limit"]) if labels.get("token_limit", "").isdigit()
        else None,
        "created_at": iso(record.created_at),
        "last_active_at": iso(record.last_activity),
        "expires_at": iso(record.expires_at),
        "remaining_seconds": remaining(record, now),
    }


def message_001(message: Message) -> dict[str, Any]:
    return {
        "role": message.role, "content": message.content, "timestamp": iso(message.created_at),
        "metadata": message.metadata, "tokens": message.tokens,
    }


def build_001(rt: Runtime, role: Any) -> APIRouter:
    router = APIRouter(tags=["seed 001 compatibility"])

    async def find(session_id: str | None) -> SessionRecord:
        if not session_id:
            raise Problem(400, "sessionId is required for this action")
        return await rt.find(session_id)

    async def full(record: SessionRecord) -> dict[str, Any]:
        out = agent_session(record, rt.clock.now())
        out["messages"] = [message_001(m) for m in await rt.memory.messages(record, 100)]
        out["summaries"] = [
            {"content": s.content, "start_seq": s.start_seq, "end_seq": s.end_seq,
             "created_at": iso(s.created_at)}
            for s in await rt.memory.summaries(record)
        ]
        return out

    @router.get("/api/sessions", **role(Role.READ))
    async def get_sessions(
        id: Annotated[str | None, Query(max_length=300)] = None,
        conversationId: Annotated[str | None, Query(max_length=200)] = None,
        stats: Annotated[bool, Query()] = False,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> Any:
        if stats:
            totals = await rt.store.stats(
                SessionFilter(platform=AGENT_PLATFORM), labels=("interface",)
            )
            return {"success": True, "stats": {
                "total_sessions": totals.total,
                "active_sessions": totals.by_status.get("active", 0),
                "total_messages": totals.messages,
                "total_tokens": totals.tokens,
                "avg_session_length": round(totals.messages / totals.total, 2)
                if totals.total else 0,
                "avg_session_duration_seconds": round(totals.avg_duration_seconds, 3),
                "sessions_by_interface": totals.by_label.get("interface", {}),
                "cacheSize": 0,  # chatstate keeps no per-process session cache
            }}
        if id is not None:
            return {"success": True, "session": await full(await rt.find(id))}
        if conversationId is not None:
            record = await rt.store.load(str(conversation_key(conversationId)))
            if record is None:
                raise Problem(404, f"no session for conversation {conversationId}")
            return {"success": True, "session": await full(record)}
        page = await rt.store.list(
            SessionFilter(status=Status.ACTIVE.value, platform=AGENT_PLATFORM), limit=limit
        )
        now = rt.clock.now()
        sessions = [agent_session(r, now) for r in page.items]
        return {"success": True, "sessions": sessions, "count": len(sessions)}

    @router.post("/api/sessions", **role(Role.ADMIN))
    async def post_sessions(body: SessionsAction) -> Any:
        action = body.action
        if action == "create":
            return {"success": True, "session": await create(body)}
        if action == "cleanup":
            return {"success": True, "cleaned": await cleanup()}
        record = await find(body.sessionId)
        if action == "addMessage":
            if body.role is None or body.content is None:
                raise Problem(400, "addMessage needs role and content")
            role_name, content = body.role, body.content

            def add(s: Session) -> Message:
                message = Message(role=role_name, content=content, metadata=body.metadata or {})
                if role_name == "tool":
                    message.tool_call_id = str((body.metadata or {}).get("tool_call_id", "tool"))
                rt.memory.stage(s, message)
                return message

            record, message = await rt.change(record, add)
            return {"success": True, "message": message_001(message),
                    "session": agent_session(record, rt.clock.now())}
        if action == "clearMessages":
            async def clear(s: Session) -> None:
                await rt.memory.clear_messages(s, keep_summaries=True)

            await rt.change(record, clear)
            return {"success": True}
        if action == "updateState":
            if body.state is None:
                raise Problem(400, "updateState needs state (an object of variables)")
            update = body.state
            record, _ = await rt.change(record, lambda s: s.data.update(update))
            return {"success": True, "session": agent_session(record, rt.clock.now())}
        if action == "deactivate":
            record, _ = await rt.change(record, lambda s: s.close("deactivated"))
            return {"success": True, "session": agent_session(record, rt.clock.now())}
        # buildContext
        return {"success": True, "context": await context(record, body)}

    async def create(body: SessionsAction) -> dict[str, Any]:
        if body.conversation_id is None:
            raise Problem(400, "create needs conversation_id")
        key = conversation_key(body.conversation_id)
        async with rt.manager.session(key, message=False) as s:
            if s.created:
                labels = {
                    "interface": body.interface_type or "api",
                    "external_user_id": body.external_user_id,
                    "external_chat_id": body.external_chat_id,
                    "token_limit": body.token_limit,
                }
                for name, value in labels.items():
                    if value is not None:
                        s.set_label(name, str(value))
                if body.expires_in_ms is not None:
                    set_timeouts(s, max_age=body.expires_in_ms / 1000)
        return await full(s.record)

    async def cleanup() -> dict[str, int]:
        """Run the lifecycle's due work now (expire overdue sessions, purge old ones)."""
        lifecycle = rt.lifecycle
        if lifecycle is None:
            return {"expired": 0, "purged": 0}
        for name in ("run_once", "tick", "step"):
            method = getattr(lifecycle, name, None)
            if callable(method):
                result = await method()
                if dataclasses.is_dataclass(result) and not isinstance(result, type):
                    result = dataclasses.asdict(result)
                if isinstance(result, dict):
                    return {
                        k: int(v) for k, v in result.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)
                    }
                return {"handled": int(result) if isinstance(result, int) else 0}
        return {"expired": 0, "purged": 0}

    async def context(record: SessionRecord, body: SessionsAction) -> dict[str, Any]:
        if body.maxTokens is not None:
            ctx = await rt.memory.build_context(record, body.maxTokens, allow_partial_turn=True)
            return {"messages": ctx.to_messages(), "total_tokens": ctx.tokens,
                    "summaries": len(ctx.summaries)}
        summaries = await rt.memory.summaries(record)
        messages = await rt.memory.messages(record, body.maxMessages or 20)
        out: list[dict[str, Any]] = [
            {"role": "system", "content": f"Previous conversation summary: {s.content}"}
            for s in summaries
        ]
        out += [{"role": m.role, "content": m.content} for m in messages]
        tokens = sum(s.tokens for s in summaries) + sum(m.tokens for m in messages)
        return {"messages": out, "total_tokens": tokens, "summaries": len(summaries)}

    @router.delete("/api/sessions", **role(Role.ADMIN))
    async def delete_session(id: Annotated[str, Query(max_length=300)]) -> Any:
        record = await rt.find(id)
        if await rt.is_current(record):
            await rt.manager.clear(record.key)
        else:
            await rt.store.delete(record.key, record.id)
        return {"success": True, "deleted": record.id}

    return router


# -- seed 003 -----------------------------------------------------------------------------------


class ChatbotQuery(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str = Field(..., min_length=1, max_length=32_000)
    userId: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@\-]+$"
    )


def minutes(seconds: float | None) -> int:
    return 0 if seconds is None else math.ceil(seconds / 60)


def session_info_003(user_id: str, record: SessionRecord | None, now: float) -> dict[str, Any]:
    return {
        "userId": user_id,
        "messageCount": record.counters.messages if record else 0,
        "remainingTime": minutes(remaining(record, now)) if record else 0,
    }


UserId = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9_.@\-]+$")]


def build_003(rt: Runtime, role: Any) -> APIRouter:
    router = APIRouter(tags=["seed 003 compatibility"])

    def key_of(user_id: str) -> str:
        return str(SessionKey.user(rt.settings.chat_platform, user_id))

    @router.post("/chatbot/chatbotquery", **role(Role.CHAT))
    async def chatbot_query(body: ChatbotQuery, request: Request) -> Any:
        user_id, new = resolve_user(rt, request, body.userId)
        check_rate(rt, f"ip:{client_address(request)}" if new else user_id)
        result = await chat_once(rt, user_id, body.message)
        text = "\n".join(r.text for r in result.replies if r.text)
        response = JSONResponse({
            "success": True,
            "message": text,
            "data": text,
            "sessionInfo": session_info_003(user_id, result.record, result.now),
        })
        if body.userId is None:
            set_user_cookie(rt, response, user_id)
        return response

    @router.get("/chatbot/session/{userId}", **role(Role.READ))
    async def get_session(userId: UserId) -> Any:
        record = await rt.store.load(key_of(userId))
        if record is None or record.status is not Status.ACTIVE:
            raise Problem(404, f"no active session for user {userId}")
        now = rt.clock.now()
        data = record.data
        return {
            "success": True,
            "userId": userId,
            "sessionInfo": session_info_003(userId, record, now),
            "session": {
                "userType": record.labels.get("user_type", data.get("userType")),
                "location": data.get("location"),
                "preferences": data.get("preferences", {}),
                "currentIntent": record.labels.get("intent", data.get("currentIntent")),
                "lastInteraction": iso(record.last_activity),
                "sessionStart": iso(record.created_at),
                "messageCount": record.counters.messages,
            },
        }

    @router.delete("/chatbot/session/{userId}", **role(Role.ADMIN))
    async def clear_session(userId: UserId) -> Any:
        deleted = await rt.manager.clear(key_of(userId))
        return {
            "success": True,
            "message": f"Session cleared for user {userId}" if deleted
            else f"No session to clear for user {userId}",
        }

    @router.get("/chatbot/sessions/analytics", **role(Role.READ))
    async def analytics(
        limit: Annotated[int, Query(ge=1, le=500, description="sessionDetails rows")] = 100,
    ) -> Any:
        platform = rt.settings.chat_platform
        active = SessionFilter(status=Status.ACTIVE.value, platform=platform)
        stats = await rt.store.stats(active, labels=("user_type", "intent"))
        page = await rt.store.list(active, limit=limit)
        now = rt.clock.now()
        details = [
            {
                "userId": r.key.split(":", 2)[2],
                "sessionAge": int((now - r.created_at) // 60),
                "messageCount": r.counters.messages,
                "userType": r.labels.get("user_type", r.data.get("userType")),
                "currentIntent": r.labels.get("intent", r.data.get("currentIntent")),
                "remainingTime": minutes(remaining(r, now)),
                "preferences": r.data.get("preferences", {}),
            }
            for r in page.items
        ]
        return {
            "totalActiveSessions": stats.total,
            # every chat session keeps its conversation history with it
            "totalConversationHistories": sum(1 for r in page.items if r.counters.last_seq)
            if page.next_cursor is None else stats.total,
            "sessionDetails": details,
            "summary": {
                "averageSessionLength": round(stats.avg_duration_seconds / 60, 1),
                "totalMessages": stats.messages,
                "userTypes": stats.by_label.get("user_type", {}),
                "topIntents": stats.by_label.get("intent", {}),
            },
        }

    return router
