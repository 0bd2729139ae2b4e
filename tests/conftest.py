"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from backends import BACKENDS
from chatstate.stores.base import Store


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses the `store` fixture below once per registered backend."""
    if "store_name" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if "store_name" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return  # the test chose its backends itself
    metafunc.parametrize("store_name", sorted(BACKENDS))


@pytest.fixture
async def store(store_name: str) -> AsyncIterator[Store]:
    """A fresh, empty, opened store of the backend `store_name` (see tests/backends.py)."""
    async with BACKENDS[store_name]() as opened:
        yield opened


@pytest.fixture(scope="session", autouse=True)
def _stop_test_redis_cluster() -> Iterator[None]:
    """Stop the test-owned Redis Cluster (started lazily by tests/redis_servers.py) at the end
    of the session."""
    yield
    import sys

    module = sys.modules.get("redis_servers") or sys.modules.get("tests.redis_servers")
    if module is not None:
        module.stop_shared_cluster()
