"""Request and response bodies of the v1 API (pydantic: they become the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT = 32_000


class FlowOut(BaseModel):
    name: str
    version: int = 1
    step: str | None = None
    stack: list[str] = []
    attempts: int = 0
    entered_at: float = 0.0
    data: dict[str, Any] = {}


class SessionOut(BaseModel):
    id: str
    key: str
    platform: str
    scope: str
    status: str
    state: str | None = None
    data: dict[str, Any] = {}
    flow: FlowOut | None = None
    labels: dict[str, str] = {}
    counters: dict[str, int] = {}
    usage: dict[str, float] = {}
    created_at: float
    last_activity: float
    expires_at: float | None = None
    warn_at: float | None = None
    purge_at: float | None = None
    closed_at: float | None = None
    close_reason: str | None = None
    last_error: str | None = None
    version: int
    remaining_seconds: float | None = Field(
        None, description="seconds until the session expires (None when it does not)"
    )
    current: bool = Field(True, description="false for a finished session that was replaced")


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None = None


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(..., max_length=300, description="canonical key, e.g. web:user:42")
    state: str | None = Field(None, max_length=200)
    data: dict[str, Any] = {}
    labels: dict[str, str] = {}


class SessionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: str | None = Field(None, max_length=200)
    set_state: bool = Field(
        False, description="true to apply `state` even when it is null (clears the state)"
    )
    data: dict[str, Any] | None = Field(
        None, description="JSON merge patch of the data (null values delete keys)"
    )
    replace_data: bool = Field(False, description="replace the whole data instead of merging")
    labels: dict[str, str | None] | None = None


class MoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flow: str = Field(..., min_length=1, max_length=200)
    step: str | None = Field(None, max_length=200, description="default: the flow's first step")


class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("operator", min_length=1, max_length=100)


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(..., max_length=MAX_TEXT)
    name: str | None = Field(None, max_length=200)
    tool_call_id: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] = {}


class MessageOut(BaseModel):
    seq: int
    role: str
    content: Any
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = {}
    created_at: float = 0.0
    tokens: int = 0


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_before_seq: int | None = Field(
        None, description="pass as before_seq to get the previous (older) page"
    )


class SummaryOut(BaseModel):
    start_seq: int
    end_seq: int
    content: str
    tokens: int = 0
    created_at: float = 0.0


class ContextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(4000, ge=1, le=2_000_000)
    system: str | None = Field(None, max_length=MAX_TEXT)
    model: str | None = Field(None, max_length=100)


class ContextOut(BaseModel):
    messages: list[dict[str, Any]]
    tokens: int
    max_tokens: int
    summaries: int = 0
    left_out: int = 0


class ExportOut(BaseModel):
    session: SessionOut
    messages: list[MessageOut]
    summaries: list[SummaryOut]


class ClearOut(BaseModel):
    dropped_through_seq: int
    summaries_kept: int


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(..., min_length=1, max_length=MAX_TEXT)
    user_id: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@\-]+$",
        description="omit for an anonymous session (its id comes back as user_id and cookie)",
    )
    payload: str | None = Field(None, max_length=1000, description="data of a pressed button")


class ButtonOut(BaseModel):
    text: str
    payload: str | None = None
    url: str | None = None


class ReplyOut(BaseModel):
    text: str
    buttons: list[list[ButtonOut]] = []
    keyboard: list[list[str]] = []


class ChatSessionInfo(BaseModel):
    session_id: str
    key: str
    status: str
    state: str | None = None
    flow: str | None = None
    step: str | None = None
    message_count: int
    expires_at: float | None = None
    remaining_seconds: float | None = None


class ChatOut(BaseModel):
    user_id: str
    reply: str = Field(..., description="all reply texts joined by newlines")
    replies: list[ReplyOut]
    session: ChatSessionInfo


class Health(BaseModel):
    status: str
    detail: str | None = None
