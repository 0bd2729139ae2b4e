"""Shared pytest fixtures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from backends import (
    BACKENDS,
    IN_CI,
    drop_postgres_schema,
    redis_on_fake_clock,
    require_postgres,
)
from chatstate.stores.base import Store


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true no test may skip: a skip there means a missing service, binary or extra
    (Redis, PostgreSQL, chromium, the tokens extra) and would hide what it was meant to test."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which is an error here: {reason}"


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


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A PostgreSQL schema name of the test's own, dropped afterwards."""
    require_postgres()
    name = f"cs_test_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_postgres_schema(name)


@pytest.fixture(params=["redis", "redis_cluster"])
async def redis_store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A RedisStore, standalone and on the test Cluster, on a clock the test moves."""
    async with redis_on_fake_clock(request.param) as opened:
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
