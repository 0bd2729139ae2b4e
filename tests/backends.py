"""Store factories for the conformance suite and every test that runs "on every store".

Each factory is an async context manager yielding a fresh, empty, opened store with its own
namespace (key prefix / database schema / temp file) and cleaning up afterwards. Tests that need
a server call `require_service`, which skips locally when the server is down but FAILS under
CI=true: a missing service must never hide behind a skip there.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from chatstate.stores.base import Store

StoreFactory = Callable[[], AbstractAsyncContextManager[Store]]
BACKENDS: dict[str, StoreFactory] = {}

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("CHATSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("CHATSTATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def service_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if service_up(host, port):
        return
    message = f"{name} is not reachable on {host}:{port} (see ../shared/SERVICES.md to start it)"
    if IN_CI:
        pytest.fail(message + " -- under CI=true this is an error, not a skip")
    pytest.skip(message)


def backend(name: str) -> Callable[[StoreFactory], StoreFactory]:
    def register(factory: StoreFactory) -> StoreFactory:
        BACKENDS[name] = factory
        return factory

    return register


async def _noop() -> AsyncIterator[None]:  # pragma: no cover - keeps the typing import used
    yield None
