"""The chat fast path answers exactly like the FastAPI route, and hands it everything else."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from server_helpers import Service, memory_factory, service

from chatstate.server import Settings
from chatstate.server.fastchat import ChatFastPath

# FastAPI reads any application/*+json body as JSON; the fast path takes only application/json,
# so this content type drives the same request through the route.
ROUTE_ONLY = "application/x-chat+json"
SETTINGS = Settings(store_url="memory://", chat_burst=2, chat_rate_per_minute=6,
                    max_message_chars=50)


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths the fast path handed to the route."""
    seen: list[str] = []
    original = ChatFastPath._route

    async def spy(self: ChatFastPath, scope: Any, *args: Any) -> None:
        seen.append(scope["path"])
        await original(self, scope, *args)

    monkeypatch.setattr(ChatFastPath, "_route", spy)
    return seen


async def post(svc: Service, body: Any, content_type: str, **headers: str) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await svc.client.post(
        "/v1/chat", content=raw, headers={"content-type": content_type, **headers}
    )


def comparable(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in response.headers.items() if k not in ("set-cookie",)}
    body = response.json()
    if isinstance(body, dict) and isinstance(body.get("session"), dict):
        body["session"]["session_id"] = "-"  # random per store
    if isinstance(body, dict) and str(body.get("user_id", "")).startswith("anon-"):
        body["user_id"] = body["session"]["key"] = "anon"
        headers["content-length"] = "-"
    cookie = response.headers.get("set-cookie", "")
    return response.status_code, {**headers, "cookie-attrs": cookie.split(";", 1)[-1]}, body


REQUESTS: list[tuple[Any, dict[str, str]]] = [
    ({"message": "hello", "user_id": "ada"}, {}),
    ({"message": "Ada", "user_id": "ada"}, {}),
    ({"message": "again", "user_id": "ada"}, {}),  # third in a row: rate limited (429)
    ({"message": "hi"}, {}),  # anonymous: id and cookie come back
    ({"message": "x" * 51, "user_id": "bob"}, {}),  # over max_message_chars (413)
    ({"message": "hi", "user_id": "bad id!"}, {}),  # invalid field (422)
    ({"message": "hi", "user_id": "abc\n"}, {}),  # the pattern is matched whole
    ({"message": "", "user_id": "carl"}, {}),
    ({"message": "hi", "user_id": "carl", "extra": 1}, {}),  # unknown field
    ({"message": 5, "user_id": "carl"}, {}),
    (b'{"message": "hi", "user_id": "carl"', {}),  # not JSON
    ([1, 2], {}),
    ({"message": "hi", "user_id": "dora", "payload": "p" * 1001}, {}),
    ({"message": "hi", "user_id": "dora"}, {"authorization": "Bearer not-a-key-0123456789"}),
]


async def test_fast_path_and_route_answer_alike(routed: list[str]) -> None:
    async with memory_factory() as fast_store, memory_factory() as route_store:
        async with service(fast_store, settings=SETTINGS) as fast, \
                service(route_store, settings=SETTINGS) as slow:
            for body, headers in REQUESTS:
                a = await post(fast, body, "application/json", **headers)
                b = await post(slow, body, ROUTE_ONLY, **headers)
                assert comparable(a) == comparable(b), (body, a.text, b.text)
    # Only the requests the route words differently went there (besides the ROUTE_ONLY ones,
    # which the fast path never looks at).
    assert len(routed) == 9


async def test_the_common_request_never_reaches_the_route(routed: list[str]) -> None:
    async with memory_factory() as store, service(store) as svc:
        for i in range(3):
            answer = await svc.chat(f"message {i}", user_id="eve")
            assert answer.status_code == 200
        assert answer.json()["session"]["message_count"] == 3
        charset = await post(svc, {"message": "hi", "user_id": "eve"},
                             "application/json; charset=utf-8")
        assert charset.status_code == 200
        assert routed == []
        assert (await post(svc, {"message": "hi", "user_id": "eve"}, "text/plain")).status_code \
            == 422
        assert routed == []  # not JSON for FastAPI either: the fast path never looked at it
