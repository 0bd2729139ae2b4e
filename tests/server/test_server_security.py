"""Auth on every route, local-only open mode, limits, problem documents, settings."""

from __future__ import annotations

import re

import httpx
import pytest
from server_helpers import service

from chatstate.errors import ConfigurationError
from chatstate.server import Settings, create_app
from chatstate.server.app import ROLE_EXTENSION
from chatstate.stores.base import Store

ADMIN = "admin-key-0123456789abcdef"
READ = "read-key-0123456789abcdef"
CHAT = "chat-key-0123456789abcdef"
KEYED = Settings(
    store_url="memory://", admin_keys=(ADMIN,), read_keys=(READ,), chat_key=CHAT, chat_burst=1000
)


def routes_with_roles() -> list[tuple[str, str, str]]:
    """(method, path, role) of every route in the OpenAPI schema, path parameters filled."""
    app = create_app(KEYED, lifecycle=None)
    schema = app.openapi()
    out = []
    for path, methods in schema["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x1", path)
        for method, operation in methods.items():
            out.append((method.upper(), concrete, operation[ROLE_EXTENSION]))
    return out


def test_every_route_declares_a_role() -> None:
    app = create_app(KEYED, lifecycle=None)
    for path, methods in app.openapi()["paths"].items():
        for method, operation in methods.items():
            assert operation.get(ROLE_EXTENSION) in ("public", "chat", "read", "admin"), (
                method, path,
            )


async def test_every_route_refuses_a_missing_or_weaker_key(memory_store: Store) -> None:
    weaker = {"admin": [READ, CHAT], "read": [CHAT], "chat": [READ], "public": []}
    async with service(memory_store, settings=KEYED) as svc:
        checked = 0
        for method, path, role in routes_with_roles():
            if role == "public":
                continue
            request = svc.client.build_request(method, path, json={})
            response = await svc.client.send(request)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"
            wrong = await svc.client.send(svc.client.build_request(
                method, path, json={}, headers={"Authorization": "Bearer not-a-key-at-all-123"}
            ))
            assert wrong.status_code == 401, (method, path)
            for key in weaker[role]:
                refused = await svc.client.send(svc.client.build_request(
                    method, path, json={}, headers={"X-API-Key": key}
                ))
                assert refused.status_code == 403, (method, path, key[:4], refused.text)
                assert "role" in refused.json()["detail"]
            checked += 1
        assert checked >= 20


async def test_keys_grant_their_roles(memory_store: Store) -> None:
    async with service(memory_store, settings=KEYED) as svc:
        chat = await svc.client.post(
            "/v1/chat", json={"message": "hi", "user_id": "k"},
            headers={"Authorization": f"Bearer {CHAT}"},
        )
        assert chat.status_code == 200
        read = await svc.client.get("/v1/sessions", headers={"X-API-Key": READ})
        assert read.status_code == 200 and len(read.json()["items"]) == 1
        sid = read.json()["items"][0]["id"]
        close = await svc.client.post(
            f"/v1/sessions/{sid}/close", json={}, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert close.status_code == 200
        # public routes need nothing
        assert (await svc.client.get("/healthz")).status_code == 200
        assert (await svc.client.get("/")).status_code == 200
        assert (await svc.client.get("/v1/info")).json()["auth"] == "keys"


async def test_keys_are_never_logged(memory_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with service(memory_store, settings=KEYED) as svc:
        await svc.client.get("/v1/sessions", headers={"X-API-Key": READ})
        await svc.client.get("/v1/sessions", headers={"X-API-Key": "wrong-key-0123456789"})
    assert READ not in caplog.text and "wrong-key" not in caplog.text
    assert READ not in repr(KEYED) and ADMIN not in repr(KEYED)


async def test_open_local_mode_refuses_other_hosts_and_cross_site_posts(
    memory_store: Store,
) -> None:
    async with service(memory_store) as svc:
        assert (await svc.client.get("/v1/sessions")).status_code == 200
        rebinding = await svc.client.get("/v1/sessions", headers={"Host": "attacker.example"})
        assert rebinding.status_code == 403 and "localhost" in rebinding.json()["detail"]
        cross = await svc.client.post(
            "/v1/sessions", json={"key": "web:user:1"}, headers={"Origin": "https://evil.example"}
        )
        assert cross.status_code == 403
        same = await svc.client.post(
            "/v1/sessions", json={"key": "web:user:1"}, headers={"Origin": "http://127.0.0.1:8000"}
        )
        assert same.status_code == 201


def test_settings_refuse_an_open_server_on_the_network() -> None:
    with pytest.raises(ConfigurationError, match="CHATSTATE_API_KEYS_ADMIN"):
        Settings.from_env({"CHATSTATE_HOST": "0.0.0.0"})
    with pytest.raises(ConfigurationError, match="at least 16"):
        Settings.from_env({"CHATSTATE_API_KEYS_ADMIN": "short"})
    with pytest.raises(ConfigurationError, match="CHATSTATE_PORT"):
        Settings.from_env({"CHATSTATE_PORT": "eighty"})
    settings = Settings.from_env({
        "CHATSTATE_HOST": "0.0.0.0", "CHATSTATE_API_KEYS_ADMIN": f"{ADMIN}, other-key-0123456789",
        "CHATSTATE_CHAT_RATE_PER_MINUTE": "5", "CHATSTATE_LIFECYCLE": "off",
    })
    assert settings.admin_keys == (ADMIN, "other-key-0123456789")
    assert not settings.open_local and not settings.lifecycle
    assert settings.chat_rate_per_minute == 5.0
    assert Settings.from_env({}).store_url == "sqlite:///chatstate.db"


async def test_rate_limit_body_limit_and_problem_documents(memory_store: Store) -> None:
    settings = Settings(store_url="memory://", chat_burst=2, chat_rate_per_minute=6,
                        max_body_bytes=2048)
    async with service(memory_store, settings=settings) as svc:
        assert (await svc.chat("a", user_id="r")).status_code == 200
        assert (await svc.chat("b", user_id="r")).status_code == 200
        limited = await svc.chat("c", user_id="r")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "10"
        assert "wait 10 s" in limited.json()["detail"]
        assert (await svc.chat("other user", user_id="s")).status_code == 200
        svc.clock.advance(10)
        assert (await svc.chat("c", user_id="r")).status_code == 200

        big = await svc.client.post("/v1/chat", json={"message": "x" * 5000, "user_id": "t"})
        assert big.status_code == 413 and "CHATSTATE_MAX_BODY_BYTES" in big.json()["detail"]

        invalid = await svc.client.post("/v1/chat", json={"user_id": "bad id!"})
        assert invalid.status_code == 422
        assert invalid.headers["content-type"] == "application/problem+json"
        fields = {e["field"] for e in invalid.json()["errors"]}
        assert fields == {"message", "user_id"}


async def test_cors_is_off_by_default(memory_store: Store) -> None:
    async with service(memory_store) as svc:
        r = await svc.client.options(
            "/v1/chat", headers={"Origin": "http://127.0.0.1:3000",
                                 "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in r.headers


async def test_dashboard_assets_are_local_and_locked_down(memory_store: Store) -> None:
    async with service(memory_store) as svc:
        page = await svc.client.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "http" not in re.sub(r'href="#[^"]*"', "", page.text.split("<body>")[0]).replace(
            'http-equiv', ''
        )
        for name in ("app.js", "app.css", "icon.svg"):
            asset = await svc.client.get(f"/static/{name}")
            assert asset.status_code == 200 and b"https://" not in asset.content
        assert (await svc.client.get("/static/..%2Fapp.py")).status_code == 404
        assert (await svc.client.get("/static/settings.py")).status_code == 404


def test_create_app_without_a_running_loop_uses_settings_store() -> None:
    app = create_app(Settings(store_url="memory://"), lifecycle=None)
    assert type(app.state.runtime.store).__name__ == "MemoryStore"
    assert isinstance(httpx.ASGITransport(app=app), httpx.ASGITransport)
