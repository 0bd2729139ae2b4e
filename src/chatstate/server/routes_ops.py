"""Health, readiness, metrics, analytics, flows and the dashboard's page."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..flows import diagram
from . import analytics
from .auth import Role
from .metrics import CONTENT_TYPE
from .problems import Problem
from .runtime import Runtime
from .schemas import Health

log = logging.getLogger("chatstate.server")

STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
# The page may load only what this server serves: no CDN, no inline script.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def static_file(name: str) -> bytes:
    return resources.files("chatstate.server").joinpath("static", name).read_bytes()


def build(rt: Runtime, role: Any) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", response_model=Health, tags=["health"], **role(Role.PUBLIC))
    async def healthz() -> Any:
        return {"status": "ok"}

    @router.get(
        "/readyz", response_model=Health, tags=["health"], **role(Role.PUBLIC),
        responses={503: {"description": "the store cannot be reached"}},
    )
    async def readyz() -> Any:
        if not rt.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await asyncio.wait_for(rt.store.ping(), timeout=5.0)
        except Exception as exc:  # any failure means "not ready"; the reason is logged
            log.warning("readiness check failed: %s", exc)
            return JSONResponse(
                {"status": "unavailable", "detail": f"store unreachable: {type(exc).__name__}"},
                status_code=503,
            )
        return {"status": "ok"}

    @router.get(
        "/metrics", tags=["health"], **role(Role.READ),
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
    )
    async def metrics() -> Response:
        return Response(await rt.metrics.render(rt.store), media_type=CONTENT_TYPE)

    @router.get("/v1/analytics", tags=["analytics"], **role(Role.READ))
    async def get_analytics(
        platform: Annotated[str | None, Query(max_length=32)] = None,
        hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24.0,
    ) -> Any:
        return await analytics.compute(
            rt.store, rt.clock.now(), platform=platform, hours=hours,
            width=rt.settings.series_bucket_seconds,
        )

    @router.get("/v1/flows", tags=["flows"], **role(Role.READ))
    async def flows() -> Any:
        return {"items": [
            {
                "name": f.name, "version": f.version, "title": f.title,
                "steps": f.states(), "initial": f.initial_step(), "diagram": diagram(f),
                "edges": [{"source": e.source, "target": e.target, "label": e.label}
                          for e in f.edges()],
            }
            for f in sorted(rt.flows.values(), key=lambda f: f.name)
        ]}

    @router.get("/v1/info", tags=["dashboard"], **role(Role.PUBLIC))
    async def info() -> Any:
        """What the dashboard needs to know before it has a key (nothing secret)."""
        s = rt.settings
        return {
            "auth": "open-local" if s.open_local else "keys",
            "chat_public": s.chat_key is None,
            "chat_platform": s.chat_platform,
            "bot": rt.bot.name,
            "flows": sorted(rt.flows),
            "lifecycle": rt.lifecycle is not None,
            "store": type(rt.store).__name__,
        }

    @router.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(static_file("index.html"), headers={
            "Content-Security-Policy": CSP, "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        })

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        suffix = name[name.rfind("."):] if "." in name else ""
        if "/" in name or ".." in name or suffix not in STATIC_TYPES:
            raise Problem(404, f"no static file {name!r}")
        try:
            body = static_file(name)
        except (FileNotFoundError, IsADirectoryError):
            raise Problem(404, f"no static file {name!r}") from None
        return Response(body, media_type=STATIC_TYPES[suffix], headers={
            "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
        })

    return router
