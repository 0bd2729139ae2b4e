"""Correct updates across many instances, on Redis and Redis Cluster:

* no lost update with 4 OS processes x 64 concurrent tasks x 20 keys through SessionManager
  (the worker body is tests/mp_workload.py, shared with the other stores' tests).

Lease expiry and renewal through the engine: tests/test_leases_across_managers.py.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from backends import REDIS_URL, _drop_redis_keys, require_service
from chatstate.stores.redis import RedisStore
from mp_workload import Workload, run_processes, verify
from redis_servers import require_redis_binaries, shared_cluster

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SHARED_STORES = ["redis", "redis_cluster"]


def _redis_url(name: str) -> str:
    if name == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        return REDIS_URL
    require_redis_binaries()
    return shared_cluster().url


@pytest.mark.parametrize("name", SHARED_STORES)
def test_no_lost_updates_across_processes(name: str) -> None:
    prefix = f"cstest{uuid.uuid4().hex[:12]}"
    work = Workload(url=_redis_url(name), options={"prefix": prefix})
    run_processes(work)

    async def check() -> None:
        store = RedisStore.from_url(work.url, prefix=prefix)
        await store.open()
        try:
            await verify(work, store)
        finally:
            await _drop_redis_keys(store, prefix)
            await store.close()

    asyncio.run(check())
