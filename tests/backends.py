"""Store factories for the conformance suite and every test that runs "on every store".

Each factory is an async context manager yielding a fresh, empty, opened store with its own
namespace (key prefix / database schema / temp file) and cleaning up afterwards. Tests that need
a server call `require_service`, which skips locally when the server is down but FAILS under
CI=true: a missing service must never hide behind a skip there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
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


# A peer opens a second store instance on the same data as a given one (same file, prefix or
# schema), for tests where several instances of a shared backend race each other. Backends
# whose data cannot be shared (memory) register none.
PeerFactory = Callable[[Store], AbstractAsyncContextManager[Store]]
PEERS: dict[str, PeerFactory] = {}


def peer(name: str) -> Callable[[PeerFactory], PeerFactory]:
    def register(factory: PeerFactory) -> PeerFactory:
        PEERS[name] = factory
        return factory

    return register


# -- the embedded stores ----------------------------------------------------------------------


@backend("memory")
@contextlib.asynccontextmanager
async def memory_store() -> AsyncIterator[Store]:
    from chatstate.stores.memory import MemoryStore

    store = MemoryStore()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def sqlite_store(query: str = "") -> AsyncIterator[Store]:
    """An SQLiteStore on a file of its own in a temporary directory, removed afterwards;
    `query` holds URL options (e.g. ``shared=true``)."""
    import tempfile

    from chatstate.stores.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="chatstate-test-") as directory:
        url = f"sqlite:///{directory}/test.db"
        store = SQLiteStore.from_url(f"{url}?{query}" if query else url)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


backend("sqlite")(sqlite_store)


@peer("sqlite")
@contextlib.asynccontextmanager
async def sqlite_peer(store: Store) -> AsyncIterator[Store]:
    from chatstate.stores.sqlite import SQLiteStore

    assert isinstance(store, SQLiteStore)
    other = SQLiteStore.from_url(store.url)
    await other.open()
    try:
        yield other
    finally:
        await other.close()


# -- Redis (standalone on the machine's server, and a test-owned 3-master Cluster) -------------

async def _drop_redis_keys(store: Store, prefix: str) -> None:
    """Delete every key of one test's prefix (SCAN, never KEYS; every node of a Cluster)."""
    client = store._client  # type: ignore[attr-defined]
    if client is None:
        return
    async for name in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.unlink(name)


def _redis_factory(url: Callable[[], str]) -> StoreFactory:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[Store]:
        from chatstate.stores.redis import RedisStore

        prefix = f"cstest{uuid.uuid4().hex[:12]}"
        store = RedisStore.from_url(url(), prefix=prefix)
        await store.open()
        try:
            yield store
        finally:
            try:
                if store._client is None:  # closed by the test: reopen to clean up
                    await store.open()
                await _drop_redis_keys(store, prefix)
            finally:
                await store.close()

    return factory


def _standalone_url() -> str:
    host_port = REDIS_URL.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    host, _, port = host_port.rpartition(":")
    require_service("Redis", host or "127.0.0.1", int(port or 6379))
    return REDIS_URL


def _cluster_url() -> str:
    if __package__:  # imported as tests.backends
        from .redis_servers import require_redis_binaries, shared_cluster
    else:  # imported with tests/ on sys.path (pytest's default rootdir insertion)
        from redis_servers import require_redis_binaries, shared_cluster

    require_redis_binaries()
    return shared_cluster().url


backend("redis")(_redis_factory(_standalone_url))
backend("redis_cluster")(_redis_factory(_cluster_url))


# -- PostgreSQL (owner: the PostgresStore helper) ---------------------------------------------


async def drop_postgres_schema(schema: str) -> None:
    """Drop a test schema and everything in it."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def require_postgres() -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(POSTGRES_URL)
    require_service("PostgreSQL", parts.hostname or "127.0.0.1", parts.port or 5432)


@backend("postgres")
def postgres_store() -> AbstractAsyncContextManager[Store]:
    """A PostgresStore in a schema of its own (cs_test_<random>), dropped afterwards."""
    import uuid
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def factory() -> AsyncIterator[Store]:
        require_postgres()
        from chatstate.stores.postgres import PostgresStore

        schema = f"cs_test_{uuid.uuid4().hex[:12]}"
        store = PostgresStore.from_url(POSTGRES_URL, schema=schema)
        try:
            await store.open()
            yield store
        finally:
            await store.close()
            await drop_postgres_schema(schema)

    return factory()


@contextlib.asynccontextmanager
async def redis_on_fake_clock(name: str) -> AsyncIterator[Store]:
    """The `name` Redis backend ("redis" or "redis_cluster") on a clock the test moves."""
    from chatstate.clock import FakeClock
    from chatstate.stores.redis import RedisStore

    async with BACKENDS[name]() as opened:
        assert isinstance(opened, RedisStore)
        opened.clock = FakeClock()
        yield opened
