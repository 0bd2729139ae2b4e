"""`create_app(settings)`: the ASGI application."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..crypto import Encryptor, enable_encryption
from ..engine import SessionManager
from ..errors import ConfigurationError
from ..policy import LifecyclePolicy
from ..stores.url import open_store
from . import problems, routes_chat, routes_compat, routes_ops, routes_sessions
from .auth import Authenticator, Role
from .bots import Bot, load_bot, make_bot
from .fastchat import ChatFastPath
from .runtime import FlowsArg, Runtime
from .settings import Settings

log = logging.getLogger("chatstate.server")

ROLE_EXTENSION = "x-required-role"


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuses request bodies over `limit` bytes (by Content-Length, and while reading)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problems.problem_response(
            413, f"the request body is larger than {self.limit} bytes; send less "
            "(the limit is CHATSTATE_MAX_BODY_BYTES)", instance=scope.get("path"),
        )
        await response(scope, receive, send)


def _default_lifecycle(manager: SessionManager) -> Any:
    try:
        from ..lifecycle import Lifecycle  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        log.warning("chatstate.lifecycle is not available: timeouts fire only on next access")
        return None
    return Lifecycle(manager)


def create_app(
    settings: Settings | None = None,
    *,
    manager: SessionManager | None = None,
    bot: Any = None,
    flows: FlowsArg = None,
    lifecycle: Any = "auto",
) -> FastAPI:
    """The chatstate service.

    `settings` default to `Settings.from_env()`. Pass `manager` to serve an existing one (its
    store is used as is), `bot` for the chat (a function or object, see `server.bots`; default:
    `settings.bot`, else the demo bot), `flows` (a FlowRunner, or flows) for moving sessions and
    for diagrams, and `lifecycle` (an object with start()/stop(); "auto" builds
    `chatstate.lifecycle.Lifecycle` when `settings.lifecycle`, None runs none).
    """
    settings = settings or Settings.from_env()
    settings.check()
    if manager is None:
        store = open_store(settings.store_url)
        if settings.encryption_keys:
            enable_encryption(store, Encryptor(settings.encryption_keys))
        policy = LifecyclePolicy.from_env()
        if settings.bot is None and bot is None:  # the demo bot remembers a name across sessions
            policy = dataclasses.replace(policy, carry_over=("name",))
        manager = SessionManager(store, policy=policy)
    elif settings.encryption_keys and manager.store.codec.encryptor is None:
        enable_encryption(manager.store, Encryptor(settings.encryption_keys))
    if bot is None and settings.bot is None:
        from ..demo import DemoBot

        demo = DemoBot(manager)  # with its feedback flow: the dashboard can show and move it
        bot = demo
        flows = demo.flows if flows is None else flows
    the_bot: Bot = make_bot(bot, manager) if bot is not None else load_bot(settings.bot, manager)
    if lifecycle == "auto":
        lifecycle = _default_lifecycle(manager) if settings.lifecycle else None
    rt = Runtime(settings, manager, the_bot, flows, lifecycle=lifecycle)
    auth = Authenticator(settings)
    if settings.open_local:
        log.warning(
            "no API keys configured: the API and dashboard accept requests without a key, for "
            "localhost only (bound to %s). Set CHATSTATE_API_KEYS_ADMIN to require keys",
            settings.host,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        log.info("chatstate serving on store %s with bot %s", type(rt.store).__name__, the_bot.name)
        try:
            yield
        finally:
            await rt.stop()

    app = FastAPI(
        title="chatstate",
        version=_version(),
        description=(
            "Conversation state for chat bots: sessions, chat, analytics, metrics. "
            "Send an API key as `Authorization: Bearer <key>` (read or admin role; the chat "
            "key or none for the chat). Errors are application/problem+json."
        ),
        lifespan=lifespan,
    )
    app.state.runtime = rt
    problems.install(app)

    dependencies = {r: auth.dependency(r) for r in Role}

    def role(r: Role) -> dict[str, Any]:
        if r not in dependencies:  # pragma: no cover - every Role has one
            raise ConfigurationError(f"unknown role {r}")
        return {
            "dependencies": [Depends(dependencies[r])],
            "openapi_extra": {ROLE_EXTENSION: r.value},
        }

    app.include_router(routes_ops.build(rt, role))
    app.include_router(routes_sessions.build(rt, role))
    app.include_router(routes_chat.build(rt, role))
    app.include_router(routes_compat.build_001(rt, role))
    app.include_router(routes_compat.build_003(rt, role))
    # Innermost first: the chat fast path runs inside the body limit (and CORS).
    app.add_middleware(ChatFastPath, runtime=rt, auth=auth)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "If-Match"],
            expose_headers=["ETag"], allow_credentials=True,
        )
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("chatstate")
    except Exception:  # not installed (running from a checkout)
        return "0"
