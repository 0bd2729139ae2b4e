"""Helpers for the service tests: an app on a given store, driven in-process through httpx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.stores.base import Store

try:
    from backends import BACKENDS  # tests/ on sys.path (pytest's rootdir insertion)
except ImportError:  # pragma: no cover - imported as a package
    from tests.backends import BACKENDS

# The API tests run on every one of these that is available (the brief: SQLite, Redis,
# PostgreSQL; memory as the quick reference).
API_BACKENDS = ["memory", "sqlite", "redis", "postgres"]


@contextlib.asynccontextmanager
async def memory_factory() -> AsyncIterator[Store]:
    from chatstate.stores.memory import MemoryStore

    store = MemoryStore()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def store_factory(name: str) -> Callable[[], AbstractAsyncContextManager[Store]]:
    return BACKENDS[name]


class Service:
    """An app on a store with a fake clock, and an httpx client for it."""

    def __init__(self, app: Any, client: httpx.AsyncClient, clock: FakeClock) -> None:
        self.app = app
        self.client = client
        self.clock = clock
        self.runtime = app.state.runtime
        self.manager: SessionManager = self.runtime.manager

    async def chat(self, message: str, user_id: str | None = "u1", **kw: Any) -> httpx.Response:
        body: dict[str, Any] = {"message": message}
        if user_id is not None:
            body["user_id"] = user_id
        return await self.client.post("/v1/chat", json=body, **kw)


@contextlib.asynccontextmanager
async def service(
    store: Store, *, settings: Any = None, headers: dict[str, str] | None = None, **app_kw: Any
) -> AsyncIterator[Service]:
    from chatstate.server import Settings, create_app

    clock = FakeClock(start=1_800_000_000.0)
    manager = SessionManager(store, clock=clock)
    app_kw.setdefault("lifecycle", None)
    app = create_app(
        settings or Settings(store_url="memory://", chat_burst=1000), manager=manager, **app_kw
    )
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1:8000", headers=headers or {}
        ) as client:
            yield Service(app, client, clock)
    # The store belongs to the fixture: reopen state is its business. The app closed the
    # manager (and with it the store) on shutdown.
