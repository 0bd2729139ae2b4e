"""Errors as `application/problem+json` (RFC 9457) with a message a person can act on.

Every error body carries `type`, `title`, `status` and `detail`, plus two extension members the
seed clients read: `success: false` and `error` (= detail). Library errors map to statuses here, so
routes just raise them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..errors import (
    ChatstateError,
    ConfigurationError,
    ConflictError,
    EncryptionError,
    FlowError,
    InvalidDataError,
    InvalidKeyError,
    LockTimeout,
    RecordTooLarge,
    SessionClosed,
    StoreUnavailable,
)

log = logging.getLogger("chatstate.server")

PROBLEM_TYPE = "application/problem+json"
_encoder = msgspec.json.Encoder()

_TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    428: "Precondition required",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self, status: int, detail: str, *, title: str | None = None,
        headers: dict[str, str] | None = None, **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int, detail: str, *, title: str | None = None, instance: str | None = None,
    headers: dict[str, str] | None = None, **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": f"https://chatstate.dev/problems/{status}",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    body["success"] = False
    body["error"] = detail
    return Response(
        _encoder.encode(body), status_code=status, media_type=PROBLEM_TYPE, headers=headers
    )


def status_for(exc: ChatstateError) -> tuple[int, dict[str, str]]:
    """The HTTP status (and headers) a library error maps to."""
    if isinstance(exc, LockTimeout):
        return 503, {"Retry-After": "1"}
    if isinstance(exc, ConflictError):
        return 409, {}
    if isinstance(exc, StoreUnavailable):
        return 503, {"Retry-After": "5"}
    if isinstance(exc, RecordTooLarge):
        return 413, {}
    if isinstance(exc, InvalidKeyError | InvalidDataError | FlowError):
        return 400, {}
    if isinstance(exc, SessionClosed):
        return 409, {}
    if isinstance(exc, EncryptionError | ConfigurationError):
        return 500, {}
    return 500, {}


def _validation_detail(errors: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    clean: list[dict[str, Any]] = []
    parts: list[str] = []
    for err in errors[:20]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid"))
        clean.append({"field": where, "message": msg})
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "the request is not valid", clean


async def _problem(request: Request, exc: Problem) -> Response:
    return problem_response(
        exc.status, exc.detail, title=exc.title, instance=request.url.path,
        headers=exc.headers, **exc.extra,
    )


async def _http(request: Request, exc: StarletteHTTPException) -> Response:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}; the API is described at /docs"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs"
    return problem_response(
        exc.status_code, detail, instance=request.url.path,
        headers=dict(exc.headers or {}),
    )


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    detail, errors = _validation_detail(list(exc.errors()))
    return problem_response(422, detail, instance=request.url.path, errors=errors)


async def _library(request: Request, exc: ChatstateError) -> Response:
    status, headers = status_for(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return problem_response(status, str(exc), instance=request.url.path, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        500,
        f"the server failed unexpectedly ({type(exc).__name__}); the details are in the "
        "server log. Retry, and report it if it keeps happening",
        instance=request.url.path,
    )


Handler = Callable[[Request, Any], Awaitable[Response]]

# Answered where they are raised (Starlette's ExceptionMiddleware); anything else reaches
# `_unexpected` through the outermost ServerErrorMiddleware.
HANDLERS: dict[type[Exception], Handler] = {
    Problem: _problem,
    StarletteHTTPException: _http,
    RequestValidationError: _invalid,
    ChatstateError: _library,
}


def handler_for(exc: BaseException) -> Handler | None:
    """The handler `install` registers for `exc`, looked up by class like Starlette does;
    None for an error that only the catch-all (500) handler answers."""
    for cls in type(exc).__mro__:
        handler = HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""
    for cls, handler in HANDLERS.items():
        app.add_exception_handler(cls, handler)
    app.add_exception_handler(Exception, _unexpected)
