"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _stop_test_redis_cluster() -> Iterator[None]:
    """Stop the test-owned Redis Cluster (started lazily by tests/redis_servers.py) at the end
    of the session."""
    yield
    import sys

    module = sys.modules.get("redis_servers") or sys.modules.get("tests.redis_servers")
    if module is not None:
        module.stop_shared_cluster()
