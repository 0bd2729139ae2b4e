"""The OpenAI Agents SDK `Session` protocol on chatstate's history.

    from agents import Agent, Runner
    from chatstate import SessionManager
    from chatstate.adapters.openai_agents import ChatstateAgentSession
    from chatstate.memory import Memory, MemoryConfig

    manager = SessionManager("redis://localhost:6379/0")
    memory = Memory(manager, config=MemoryConfig(token_limit=4000))
    session = ChatstateAgentSession(manager, "discord:chat:123", memory=memory,
                                    budget_tokens=3000)
    result = await Runner.run(agent, "What did I ask before?", session=session)

Every item the SDK saves becomes one chatstate history message (role, text, tool-call links and
token count, with the SDK's item kept verbatim in ``metadata["agents_item"]`` so it reads back
unchanged). So conversations live in any chatstate store, several processes can share them, tool
calls are counted, and `Memory`'s rolling summaries apply: once a summary covers older messages,
`get_items()` returns the summary (one ``system`` item) plus the messages after it, within
`budget_tokens` when given, keeping tool calls with their results.

Inside a chatstate update (a `BotRuntime` handler, or ``async with manager.session(key)``
published with `publish_session`) the items are staged on that open session and commit with the
update; otherwise each call is its own small update.

`get_items(limit)` returns the newest `limit` items exactly as saved (the SDK uses it to check
what it is about to `pop_item`); `pop_item()` hides the newest item (the store keeps history
append-only; popped sequence numbers are remembered in the record and skipped on every read).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..engine import SessionManager
from ..errors import ConfigurationError
from ..memory import Memory
from ..memory.context import SUMMARY_PREFIX
from ..model import Message, SessionKey
from ..session import Session
from .base import open_session

try:
    from agents.memory.session_settings import SessionSettings, resolve_session_limit
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the OpenAI Agents SDK session needs openai-agents: pip install 'chatstate[agents]'"
    ) from exc

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
else:
    TResponseInputItem = dict

log = logging.getLogger("chatstate.adapters.openai_agents")

ITEM_FIELD = "agents_item"  # message metadata: the SDK item, verbatim
STATE_FIELD = "_agents"  # record data: {"popped": [seq, ...]}
MAX_POPPED = 1000


# -- items <-> messages -------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text") or part.get("refusal")
                if text:
                    parts.append(str(text))
        return "\n".join(parts)
    return ""


def message_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """The chatstate history fields for one SDK item (role, content, tool-call links)."""
    kind = item.get("type")
    role = item.get("role")
    if kind in (None, "message") and role in ("user", "assistant", "system", "developer"):
        return {"role": "system" if role == "developer" else role,
                "content": _text_of(item.get("content"))}
    if kind == "function_call":
        call_id = str(item.get("call_id") or item.get("id") or "")
        return {"role": "assistant", "content": "", "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""},
        }]}
    if kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        return {"role": "tool", "content": text,
                "tool_call_id": str(item.get("call_id") or "unknown")}
    # reasoning, hosted tool calls, compaction items...: kept verbatim, no text of their own
    return {"role": "assistant", "content": ""}


def items_of(message: Message) -> list[dict[str, Any]]:
    """The SDK items a history message stands for (its saved item, or one built from the
    message when another part of chatstate wrote it)."""
    saved = message.metadata.get(ITEM_FIELD)
    if isinstance(saved, Mapping):
        return [copy.deepcopy(dict(saved))]
    if message.role == "tool":
        return [{"type": "function_call_output", "call_id": message.tool_call_id or "",
                 "output": message.text}]
    out: list[dict[str, Any]] = []
    if message.text or not message.tool_calls:
        out.append({"role": message.role, "content": message.text})
    for call in message.tool_calls or ():
        function = call.get("function") or {}
        out.append({"type": "function_call", "call_id": str(call.get("id") or ""),
                    "name": function.get("name") or "", "arguments": function.get("arguments")
                    or ""})
    return out


# -- the session --------------------------------------------------------------------------------


class ChatstateAgentSession:
    """An Agents SDK session whose items live in a chatstate session's history."""

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        manager: SessionManager,
        key: SessionKey | str,
        *,
        memory: Memory | None = None,
        budget_tokens: int | None = None,
        session_settings: SessionSettings | None = None,
        count_user_turns: bool = True,
    ) -> None:
        if budget_tokens is not None and budget_tokens <= 0:
            raise ConfigurationError("budget_tokens must be a positive number of tokens")
        self.manager = manager
        self.key = SessionKey.coerce(key)
        self.session_id = str(self.key)
        self.memory = memory or Memory(manager)
        self.budget_tokens = budget_tokens
        self.session_settings = session_settings
        self.count_user_turns = count_user_turns

    # -- access -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _open(self, *, message: bool = False) -> AsyncIterator[Session]:
        """The session opened by this task's update, or a short update of our own."""
        current = open_session(self.key)
        if current is not None:
            yield current
            return
        async with self.manager.session(self.key, message=message) as s:
            yield s

    async def _target(self) -> Session | str:
        current = open_session(self.key)
        if current is not None:
            return current
        return self.session_id

    @staticmethod
    def _popped(data: Mapping[str, Any]) -> set[int]:
        state = data.get(STATE_FIELD)
        if isinstance(state, Mapping):
            return {int(s) for s in state.get("popped") or ()}
        return set()

    async def _record_data(self) -> dict[str, Any] | None:
        current = open_session(self.key)
        if current is not None:
            return current.data
        record = await self.manager.get(self.key)
        return None if record is None else record.data

    # -- the protocol -----------------------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """With `limit`: the newest `limit` items as saved. Without: the conversation for the
        next model call (summary + messages after it, within `budget_tokens` if set)."""
        data = await self._record_data()
        if data is None:
            return []
        popped = self._popped(data)
        target = await self._target()
        wanted = resolve_session_limit(limit, self.session_settings)
        if wanted is not None:
            if wanted <= 0:
                return []
            messages = await self.memory.messages(target, wanted + len(popped))
            items = [i for m in messages if m.seq not in popped for i in items_of(m)]
            return items[-wanted:]  # type: ignore[return-value]
        summaries = await self.memory.summaries(target)
        covered = max((s.end_seq for s in summaries), default=0)
        if self.budget_tokens is not None:
            context = await self.memory.build_context(
                target, self.budget_tokens, allow_partial_turn=True
            )
            summaries, messages = context.summaries, context.messages
        else:
            messages = await self._all_after(target, covered)
        out: list[dict[str, Any]] = []
        if summaries:
            text = "\n\n".join(s.content for s in summaries)
            out.append({"role": "system", "content": SUMMARY_PREFIX + text})
        for message in messages:
            if message.seq not in popped:
                out.extend(items_of(message))
        return out  # type: ignore[return-value]

    async def _all_after(self, target: Session | str, after: int) -> list[Message]:
        out: list[Message] = []
        before: int | None = None
        while True:
            page = await self.memory.messages(target, 500, before_seq=before)
            fresh = [m for m in page if m.seq > after]
            out[:0] = fresh
            if len(page) < 500 or len(fresh) < len(page) or not page:
                return out
            before = page[0].seq

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        if not items:
            return
        user_turn = self.count_user_turns and any(
            isinstance(i, Mapping) and i.get("role") == "user" for i in items
        )
        async with self._open(message=user_turn) as s:
            for item in items:
                raw = dict(item)
                fields = message_fields(raw)
                await self.memory.add(
                    s, fields.pop("role"), fields.pop("content"),
                    metadata={ITEM_FIELD: _jsonable(raw)}, **fields,
                )

    async def pop_item(self) -> TResponseInputItem | None:
        async with self._open() as s:
            popped = self._popped(s.data)
            staged = s.history.append
            if staged:
                # Not committed yet: take it back out of this update.
                message = staged.pop()
                return items_of(message)[-1]  # type: ignore[return-value]
            messages = await self.memory.messages(s, 1 + len(popped))
            live = [m for m in messages if m.seq not in popped]
            if not live:
                return None
            newest = live[-1]
            marks = sorted(popped | {newest.seq})[-MAX_POPPED:]
            s.data[STATE_FIELD] = {"popped": marks}
            return items_of(newest)[-1]  # type: ignore[return-value]

    async def clear_session(self, *, keep_summaries: bool = False) -> None:
        async with self._open() as s:
            await self.memory.clear_messages(s, keep_summaries=keep_summaries)
            s.data.pop(STATE_FIELD, None)


def _jsonable(item: Mapping[str, Any]) -> dict[str, Any]:
    """The item as plain JSON data (the SDK may hand over pydantic objects inside)."""
    return json.loads(json.dumps(item, default=_default))


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(exclude_unset=True)
    raise TypeError(f"cannot store {type(value).__name__} in a session item")


__all__ = ["ITEM_FIELD", "ChatstateAgentSession", "items_of", "message_fields"]
