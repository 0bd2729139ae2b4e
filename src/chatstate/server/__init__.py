"""The chatstate service: HTTP API, chat, analytics, metrics and a dashboard.

    chatstate serve                       # http://127.0.0.1:8000 on sqlite:///chatstate.db
    app = create_app(Settings.from_env())  # any ASGI server

Why FastAPI (on Starlette, served by uvicorn): the API is described by an OpenAPI schema that
FastAPI derives from the typed route signatures, so the interactive docs at /docs, the clients
generated from it and the schemathesis fuzzing in the tests all follow the code without a
hand-kept spec; its request validation turns into our problem+json errors in one place. Bare
Starlette would be a little faster per request, but the hot path (`POST /v1/chat`) is dominated by
the store round trips, and `benchmarks/bench_server.py` measures it against a bare endpoint of the
same framework.

Modules: settings (environment), auth (roles, keys), problems (errors), runtime (shared state and
session operations), routes_* (v1 sessions, chat and events, seed compatibility, health/metrics/
analytics/dashboard), analytics, metrics, bots (pluggable bot), cli (`serve`, `stats`), and the
dashboard in static/.
"""

from __future__ import annotations

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
