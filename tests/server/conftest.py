"""Fixtures for the service tests (helpers in server_helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from server_helpers import API_BACKENDS, Service, memory_factory, service, store_factory

from chatstate.stores.base import Store


@pytest.fixture(params=API_BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with store_factory(request.param)() as opened:
        yield opened


@pytest.fixture
async def memory_store() -> AsyncIterator[Store]:
    async with memory_factory() as opened:
        yield opened


@pytest.fixture
async def svc(store: Store) -> AsyncIterator[Service]:
    async with service(store) as s:
        yield s


@pytest.fixture
async def msvc(memory_store: Store) -> AsyncIterator[Service]:
    async with service(memory_store) as s:
        yield s
