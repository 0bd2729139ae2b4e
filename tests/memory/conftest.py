"""Fixtures of the memory tests: every registered store (tests/backends.BACKENDS)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ for `backends`

from backends import BACKENDS
from chatstate.stores.base import Store


@contextlib.asynccontextmanager
async def _memory_store() -> AsyncIterator[Store]:
    from chatstate.stores.memory import MemoryStore

    store = MemoryStore()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _factories() -> dict[str, object]:
    factories: dict[str, object] = dict(BACKENDS)
    factories.setdefault("memory", _memory_store)  # until the memory backend is registered
    # One Redis suffices for the memory layer (it uses only the store protocol); the Cluster
    # variant is covered by the store conformance suite.
    factories.pop("redis_cluster", None)
    return factories


STORE_NAMES = sorted(_factories())


@pytest.fixture(params=STORE_NAMES)
async def memory_store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    factory = _factories()[request.param]
    async with factory() as store:  # type: ignore[operator]
        yield store


@pytest.fixture
def store_factory(request: pytest.FixtureRequest) -> object:
    """The factory of the store the test runs on (for a second, empty store of the same kind)."""
    name = request.node.callspec.params["memory_store"]
    return _factories()[name]
