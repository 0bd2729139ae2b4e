"""`/v1/sessions`: list, look at and steer sessions (operators and tools)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from ..errors import ChatstateError, ConfigurationError
from ..memory import export_session
from ..model import Message, SessionKey
from ..session import Session
from ..stores.base import SessionFilter
from .analytics import position
from .auth import Role
from .problems import Problem
from .runtime import Runtime
from .schemas import (
    ClearOut,
    CloseIn,
    ContextIn,
    ContextOut,
    MessageIn,
    MessageOut,
    MessagePage,
    MoveIn,
    SessionCreate,
    SessionOut,
    SessionPage,
    SessionPatch,
)
from .views import message_view, session_view

Ref = Annotated[
    str, Path(description="a session id, or a session key (platform:scope:id) for its current "
              "session", max_length=300),
]


def parse_if_match(value: str | None) -> int | None:
    """`If-Match: "7"` (or W/"7", or 7) -> 7; `*` or absent -> None."""
    if value is None or value.strip() == "*":
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise Problem(
            400, f"If-Match must be the session version as an ETag, e.g. \"3\"; got {value!r}"
        )
    return int(text)


def parse_since(value: str | None) -> float | None:
    """Epoch seconds or an ISO 8601 timestamp."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(
            400, f"updated_since={value!r} is neither epoch seconds nor an ISO 8601 time"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def build(rt: Runtime, role: Any) -> APIRouter:
    """`role(Role.X)` gives the route arguments that enforce the role."""
    router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

    def etag(response: Response, version: int) -> None:
        response.headers["ETag"] = f'"{version}"'

    def view(record: Any, current: bool = True) -> dict[str, Any]:
        return session_view(record, rt.clock.now(), current=current)

    @router.get("", response_model=SessionPage, **role(Role.READ))
    async def list_sessions(
        status: Annotated[str | None, Query(pattern="^(active|closed|expired)$")] = None,
        platform: Annotated[str | None, Query(max_length=32)] = None,
        scope: Annotated[str | None, Query(max_length=32)] = None,
        flow: Annotated[str | None, Query(max_length=200)] = None,
        step: Annotated[str | None, Query(max_length=200)] = None,
        updated_since: Annotated[
            str | None, Query(description="epoch seconds or ISO 8601", max_length=40)
        ] = None,
        q: Annotated[
            str | None, Query(description="key prefix, e.g. 'web:user:' or 'telegram:'",
                              max_length=300)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
    ) -> Any:
        flt = SessionFilter(
            status=status, platform=platform, scope=scope, flow=flow, step=step,
            updated_since=parse_since(updated_since), key_prefix=q or None,
        )
        try:
            page = await rt.store.list(flt, limit=limit, cursor=cursor)
        except (ValueError, ConfigurationError):
            # the store's message names the cursor; keep the answer short and actionable
            raise Problem(
                400, "the cursor is not valid: pass back the next_cursor of a previous page "
                "unchanged, or leave it out to start from the first page",
            ) from None
        now = rt.clock.now()
        return {
            "items": [session_view(r, now) for r in page.items],
            "next_cursor": page.next_cursor,
        }

    @router.post("", response_model=SessionOut, status_code=201, **role(Role.ADMIN))
    async def create_session(body: SessionCreate, response: Response) -> Any:
        try:
            key = SessionKey.parse(body.key)
        except ValueError as exc:
            raise Problem(400, str(exc)) from None
        async with rt.manager.session(key, message=False) as s:
            if not s.created:
                raise Problem(
                    409, f"{key} already has an active session ({s.id}); change it with PATCH"
                )
            if body.state is not None:
                s.state = body.state
            s.data.update(body.data)
            for name, value in body.labels.items():
                s.set_label(name, value)
        etag(response, s.version)
        response.headers["Location"] = f"/v1/sessions/{s.id}"
        return view(s.record)

    @router.get("/{ref}", response_model=SessionOut, **role(Role.READ))
    async def get_session(ref: Ref, response: Response) -> Any:
        record = await rt.find(ref)
        etag(response, record.version)
        return view(record, await rt.is_current(record))

    @router.patch("/{ref}", response_model=SessionOut, **role(Role.ADMIN))
    async def patch(
        ref: Ref, body: SessionPatch, response: Response,
        if_match: Annotated[
            str | None, Header(max_length=40, description="the version, from the ETag")
        ] = None,
    ) -> Any:
        expected = parse_if_match(if_match)

        def apply(s: Session) -> None:
            if body.set_state or body.state is not None:
                s.state = body.state
            if body.data is not None:
                s.data = body.data if body.replace_data else merge_patch(s.data, body.data)
            for name, value in (body.labels or {}).items():
                s.set_label(name, value)

        record, _ = await rt.change(ref, apply, if_match=expected)
        etag(response, record.version)
        return view(record)

    @router.post("/{ref}/move", response_model=SessionOut, **role(Role.ADMIN))
    async def move(
        ref: Ref, body: MoveIn, response: Response,
        if_match: Annotated[str | None, Header(max_length=40)] = None,
    ) -> Any:
        before: dict[str, Any] = {}

        def apply(s: Session) -> None:
            before["flow"] = position(s.flow)
            target = rt.flow_position(s, body.flow, body.step)
            s.flow = target
            s.state = target.step

        record, _ = await rt.change(ref, apply, if_match=parse_if_match(if_match))
        await rt.funnel.step_changed(before.get("flow"), position(record.flow))
        etag(response, record.version)
        return view(record)

    @router.post("/{ref}/close", response_model=SessionOut, **role(Role.ADMIN))
    async def close(
        ref: Ref, body: CloseIn, response: Response,
        if_match: Annotated[str | None, Header(max_length=40)] = None,
    ) -> Any:
        record, _ = await rt.change(
            ref, lambda s: s.close(body.reason), if_match=parse_if_match(if_match)
        )
        etag(response, record.version)
        return view(record)

    @router.delete("/{ref}", status_code=204, **role(Role.ADMIN))
    async def delete(ref: Ref) -> Response:
        record = await rt.find(ref)
        if await rt.is_current(record):
            await rt.manager.clear(record.key)
        else:
            await rt.store.delete(record.key, record.id)
        return Response(status_code=204)

    @router.get("/{ref}/messages", response_model=MessagePage, **role(Role.READ))
    async def messages(
        ref: Ref,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before_seq: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> Any:
        record = await rt.find(ref)
        items = await rt.memory.messages(record, limit, before_seq=before_seq)
        older = items[0].seq if items and items[0].seq > 1 and len(items) == limit else None
        return {"items": [message_view(m) for m in items], "next_before_seq": older}

    @router.post(
        "/{ref}/messages", response_model=MessageOut, status_code=201, **role(Role.ADMIN)
    )
    async def append(ref: Ref, body: MessageIn) -> Any:
        if body.role == "tool" and not body.tool_call_id:
            raise Problem(400, "a tool message needs tool_call_id (the call it answers)")

        def add(s: Session) -> Message:
            message = Message(
                role=body.role, content=body.content, name=body.name,
                tool_call_id=body.tool_call_id, metadata=body.metadata,
            )
            rt.memory.stage(s, message)
            return message

        _, message = await rt.change(ref, add)
        return message_view(message)

    @router.post("/{ref}/context", response_model=ContextOut, **role(Role.READ))
    async def context(ref: Ref, body: ContextIn) -> Any:
        record = await rt.find(ref)
        try:
            ctx = await rt.memory.build_context(
                record, body.max_tokens, system=body.system, model=body.model,
                allow_partial_turn=True,
            )
        except ChatstateError as exc:
            raise Problem(400, str(exc)) from None
        return {
            "messages": ctx.to_messages(), "tokens": ctx.tokens, "max_tokens": body.max_tokens,
            "summaries": len(ctx.summaries),
            "left_out": ctx.left_out.messages or 0,
        }

    @router.post("/{ref}/clear-messages", response_model=ClearOut, **role(Role.ADMIN))
    async def clear_messages(ref: Ref) -> Any:
        async def clear(s: Session) -> int:
            await rt.memory.clear_messages(s, keep_summaries=True)
            return s.history.drop_messages_through or 0

        record, dropped_seq = await rt.change(ref, clear)
        dropped: int = dropped_seq
        summaries = await rt.memory.summaries(record)
        return {"dropped_through_seq": dropped, "summaries_kept": len(summaries)}

    @router.get(
        "/{ref}/export", **role(Role.READ),
        responses={200: {"content": {"application/x-ndjson": {}},
                         "description": "the session as JSON Lines (chatstate import format)"}},
    )
    async def export(ref: Ref) -> StreamingResponse:
        record = await rt.find(ref)

        async def lines() -> Any:
            async for line in export_session(rt.store, record.id):
                yield line + "\n"

        return StreamingResponse(
            lines(), media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="session-{record.id}.jsonl"'},
        )

    return router


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result
