"""A local OpenAI-compatible Chat Completions server with a deterministic "model".

``POST /v1/chat/completions`` answers in the documented ``chat.completion`` shape, with usage.
The model: when tools are offered and the newest user message asks about the weather it calls
``get_weather``; after a tool result it reports it; otherwise it says how many user messages
it can see in its input and repeats the newest one. Every request body is recorded, so a test
sees exactly what history the agent sent.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def reply_for(messages: list[dict[str, Any]], tools: list[Any]) -> dict[str, Any]:
    """The assistant message the fake model answers `messages` with."""
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return {"role": "assistant", "content": f"Tool says: {last.get('content')}"}
    users = [m for m in messages if m.get("role") == "user"]
    text = users[-1].get("content") if users else ""
    if isinstance(text, list):
        text = " ".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    text = str(text or "")
    match = re.search(r"weather in (\w+)", text, re.I)
    if match and any((t.get("function") or {}).get("name") == "get_weather" for t in tools):
        return {"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{match.group(1).lower()}", "type": "function",
            "function": {"name": "get_weather",
                         "arguments": json.dumps({"city": match.group(1)})},
        }]}
    if text.lower().startswith("fail"):
        raise ValueError("the fake model was asked to fail")
    summaries = sum(1 for m in messages if m.get("role") == "system"
                    and "Summary of the earlier conversation" in str(m.get("content")))
    extra = f", {summaries} summary" if summaries else ""
    return {"role": "assistant",
            "content": f"[{len(users)} user messages{extra}] you said: {text}"}


@dataclass
class FakeOpenAI:
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        try:
            message = reply_for(body.get("messages") or [], body.get("tools") or [])
        except ValueError as exc:
            return web.json_response({"error": {"message": str(exc), "type": "server_error",
                                                "code": None}}, status=400)
        prompt = sum(len(json.dumps(m)) // 4 for m in body.get("messages") or [])
        completion = len(json.dumps(message)) // 4
        return web.json_response({
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": 0,
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        })
