"""The systems under test, each doing the same cycle (see `common`): chatstate's engine on a
store, and the peers a bot author would otherwise use.

Every factory is an async context manager `factory(workload) -> cycle` that starts from an empty
store and cleans up after itself.
"""

from __future__ import annotations

import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec

from chatstate import SessionKey, SessionManager
from chatstate.stores import Store, open_store

from .common import STATES, Cycle, Workload

SystemFactory = Callable[[Workload], AbstractAsyncContextManager[Cycle]]

TEXTS = [f"message number {i}" for i in range(1000)]
_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


def _text(message: int) -> str:
    return TEXTS[message % len(TEXTS)]


# -- chatstate ----------------------------------------------------------------------------------


@asynccontextmanager
async def chatstate_engine(store: Store, workload: Workload) -> AsyncIterator[Cycle]:
    """The engine's one obvious way: `async with manager.session(key) as s`."""
    manager = SessionManager(store, lock_timeout=60.0)
    keys = [SessionKey.user("bench", u) for u in range(workload.users)]
    async with manager:

        async def cycle(user: int, message: int) -> None:
            async with manager.session(keys[user]) as s:
                s.state = STATES[message % 3]
                data = s.data
                data["last_text"] = _text(message)
                data["step"] = message
                data["count"] = data.get("count", 0) + 1

        yield cycle


def chatstate_on(url: Callable[[], str]) -> SystemFactory:
    """A factory running the engine on a store opened from `url()` (called per run)."""

    @asynccontextmanager
    async def factory(workload: Workload) -> AsyncIterator[Cycle]:
        store = open_store(url())
        async with chatstate_engine(store, workload) as cycle:
            yield cycle

    return factory


def memory_store_url(workload: Workload) -> str:
    return f"memory://?max_sessions={max(workload.users * 2, 1000)}"


@asynccontextmanager
async def temp_sqlite_path() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="chatstate-bench-") as workdir:
        yield Path(workdir) / "bench.db"


def chatstate_sqlite_with(synchronous: str, options: str = "") -> SystemFactory:
    """SQLiteStore on a fresh file with `?synchronous=` normal (the default) or full, and
    other URL `options` (e.g. "&cache=0")."""

    @asynccontextmanager
    async def factory(workload: Workload) -> AsyncIterator[Cycle]:
        async with temp_sqlite_path() as path:
            store = open_store(f"sqlite:///{path}?synchronous={synchronous}{options}")
            async with chatstate_engine(store, workload) as cycle:
                yield cycle

    return factory


chatstate_sqlite = chatstate_sqlite_with("normal")
# Every load reads the file, as the raw loop does (the record cache off).
chatstate_sqlite_uncached = chatstate_sqlite_with("normal", "&cache=0")


@asynccontextmanager
async def chatstate_memory(workload: Workload) -> AsyncIterator[Cycle]:
    async with chatstate_engine(open_store(memory_store_url(workload)), workload) as cycle:
        yield cycle


@asynccontextmanager
async def serialised_floor(workload: Workload) -> AsyncIterator[Cycle]:
    """Not a store: the least work any cycle on records kept serialised does (MemoryStore keeps
    them so, so that a handler that fails halfway leaves nothing half-changed). Decode the
    record, make the same changes, encode it back: no engine, lock, deadline, index or event.
    If this alone is slower than a target, no engine on serialised records can meet it."""
    from chatstate.codec import Codec
    from chatstate.model import new_record

    codec = Codec(format="msgpack")
    keys = [SessionKey.user("bench", u) for u in range(workload.users)]
    raws: dict[int, bytes] = {}

    async def cycle(user: int, message: int) -> None:
        raw = raws.get(user)
        record = new_record(keys[user]) if raw is None else codec.decode(raw)
        record.state = STATES[message % 3]
        data = record.data
        data["last_text"] = _text(message)
        data["step"] = message
        data["count"] = data.get("count", 0) + 1
        record.counters.messages += 1
        record.version += 1
        raws[user] = codec.encode(record)

    yield cycle


# -- aiogram ------------------------------------------------------------------------------------


async def _aiogram_cycle(storage: Any, key: Any, message: int) -> None:
    """What an aiogram handler does for the same update: read state and data, write both."""
    await storage.get_state(key)
    data = await storage.get_data(key)
    await storage.update_data(
        key, {"last_text": _text(message), "step": message, "count": data.get("count", 0) + 1}
    )
    await storage.set_state(key, STATES[message % 3])


@asynccontextmanager
async def aiogram_memory(workload: Workload) -> AsyncIterator[Cycle]:
    from aiogram.fsm.storage.base import StorageKey
    from aiogram.fsm.storage.memory import MemoryStorage

    storage = MemoryStorage()
    keys = [StorageKey(bot_id=1, chat_id=u, user_id=u) for u in range(workload.users)]

    async def cycle(user: int, message: int) -> None:
        await _aiogram_cycle(storage, keys[user], message)

    yield cycle
    await storage.close()


@asynccontextmanager
async def aiogram_memory_isolated(workload: Workload) -> AsyncIterator[Cycle]:
    """MemoryStorage with SimpleEventIsolation, aiogram's per-key asyncio.Lock: the ordering
    guarantee chatstate's engine gives (two updates of one user never interleave). Its lock
    map keeps every key ever seen (chatstate's empties itself)."""
    from aiogram.fsm.storage.base import StorageKey
    from aiogram.fsm.storage.memory import MemoryStorage, SimpleEventIsolation

    storage, isolation = MemoryStorage(), SimpleEventIsolation()
    keys = [StorageKey(bot_id=1, chat_id=u, user_id=u) for u in range(workload.users)]

    async def cycle(user: int, message: int) -> None:
        key = keys[user]
        async with isolation.lock(key):
            await _aiogram_cycle(storage, key, message)

    yield cycle
    await isolation.close()
    await storage.close()


def aiogram_redis(url: str, *, isolated: bool) -> SystemFactory:
    """aiogram's RedisStorage; with `isolated`, each update runs under RedisEventIsolation's
    lock (what aiogram offers for per-user ordering across processes; off by default)."""

    @asynccontextmanager
    async def factory(workload: Workload) -> AsyncIterator[Cycle]:
        from aiogram.fsm.storage.base import DefaultKeyBuilder, StorageKey
        from aiogram.fsm.storage.redis import RedisStorage
        from redis.asyncio import Redis

        prefix = f"aiobench{uuid.uuid4().hex[:8]}"
        redis = Redis.from_url(url, max_connections=workload.concurrency + 8)
        storage = RedisStorage(redis=redis, key_builder=DefaultKeyBuilder(prefix=prefix))
        isolation = storage.create_isolation()
        keys = [StorageKey(bot_id=1, chat_id=u, user_id=u) for u in range(workload.users)]

        if isolated:

            async def cycle(user: int, message: int) -> None:
                key = keys[user]
                async with isolation.lock(key):
                    await _aiogram_cycle(storage, key, message)
        else:

            async def cycle(user: int, message: int) -> None:
                await _aiogram_cycle(storage, keys[user], message)

        try:
            yield cycle
        finally:
            await _delete_prefix(redis, prefix)
            await storage.close()

    return factory


async def _delete_prefix(redis: Any, prefix: str) -> None:
    batch = []
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await redis.delete(*batch)
            batch.clear()
    if batch:
        await redis.delete(*batch)


# -- raw loops ----------------------------------------------------------------------------------


def _raw_update(raw: bytes | str | None, message: int) -> bytes:
    """Decode the stored JSON row, apply the cycle's change, encode it again."""
    record = _json_decode(raw) if raw else {"state": None, "data": {}}
    record["state"] = STATES[message % 3]
    data = record["data"]
    data["last_text"] = _text(message)
    data["step"] = message
    data["count"] = data.get("count", 0) + 1
    return _json_encode(record)


def raw_sqlite3_with(synchronous: str) -> SystemFactory:
    """Plain stdlib sqlite3: SELECT, then an UPSERT in its own transaction (commit per message),
    WAL and `synchronous` (NORMAL: survives a crash of the process; FULL: an fsync per commit,
    survives a power loss). Runs on the event loop itself: the fastest a single connection
    can go, and it serialises every update whatever the concurrency."""

    @asynccontextmanager
    async def factory(workload: Workload) -> AsyncIterator[Cycle]:
        async with _raw_sqlite3(workload, synchronous) as cycle:
            yield cycle

    return factory


@asynccontextmanager
async def _raw_sqlite3(workload: Workload, synchronous: str) -> AsyncIterator[Cycle]:
    async with temp_sqlite_path() as path:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute(
            "CREATE TABLE sessions (key TEXT PRIMARY KEY, record BLOB NOT NULL, "
            "version INTEGER NOT NULL)"
        )
        keys = [f"bench:user:{u}" for u in range(workload.users)]
        select = "SELECT record FROM sessions WHERE key = ?"
        upsert = (
            "INSERT INTO sessions (key, record, version) VALUES (?, ?, 1) "
            "ON CONFLICT(key) DO UPDATE SET record = excluded.record, version = version + 1"
        )

        async def cycle(user: int, message: int) -> None:
            key = keys[user]
            row = conn.execute(select, (key,)).fetchone()
            conn.execute(upsert, (key, _raw_update(row[0] if row else None, message)))

        try:
            yield cycle
        finally:
            conn.close()


raw_sqlite3 = raw_sqlite3_with("normal")


def raw_redis(url: str) -> SystemFactory:
    """redis-py asyncio: GET, change, SET. No lock, no version check: the client's limit."""

    @asynccontextmanager
    async def factory(workload: Workload) -> AsyncIterator[Cycle]:
        from redis.asyncio import Redis

        prefix = f"rawbench{uuid.uuid4().hex[:8]}"
        redis = Redis.from_url(url, max_connections=workload.concurrency + 8)
        keys = [f"{prefix}:{u}" for u in range(workload.users)]

        async def cycle(user: int, message: int) -> None:
            key = keys[user]
            await redis.set(key, _raw_update(await redis.get(key), message))

        try:
            yield cycle
        finally:
            await _delete_prefix(redis, prefix)
            await redis.aclose()

    return factory


def raw_asyncpg(url: str) -> SystemFactory:
    """asyncpg: SELECT the JSONB row, change it, UPSERT it (autocommit: one transaction per
    statement, the same durability as the store's default synchronous_commit)."""

    @asynccontextmanager
    async def factory(workload: Workload) -> AsyncIterator[Cycle]:
        import asyncpg

        class NoResetConnection(asyncpg.Connection):
            """Released to the pool without the reset query (a round trip and a transaction
            per message saved), as PostgresStore does: the loop leaves no session state."""

            def get_reset_query(self) -> str:
                return ""

        table = f"rawbench_{uuid.uuid4().hex[:8]}"
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=min(workload.concurrency, 10),
            connection_class=NoResetConnection,
        )
        assert pool is not None
        await pool.execute(
            f"CREATE TABLE {table} (key text PRIMARY KEY, record jsonb NOT NULL, "
            "version bigint NOT NULL)"
        )
        keys = [f"bench:user:{u}" for u in range(workload.users)]
        select = f"SELECT record::text FROM {table} WHERE key = $1"
        upsert = (
            f"INSERT INTO {table} (key, record, version) VALUES ($1, $2::jsonb, 1) "
            f"ON CONFLICT (key) DO UPDATE SET record = excluded.record, "
            f"version = {table}.version + 1"
        )

        async def cycle(user: int, message: int) -> None:
            key = keys[user]
            async with pool.acquire() as conn:
                raw = await conn.fetchval(select, key)
                await conn.execute(upsert, key, _raw_update(raw, message).decode())

        try:
            yield cycle
        finally:
            await pool.execute(f"DROP TABLE IF EXISTS {table}")
            await pool.close()

    return factory


def postgres_store_url(database_url: str) -> str:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    return f"{database_url}?schema={schema}&pool_max_size=10"


def redis_store_url(url: str) -> str:
    return f"{url}?prefix=csbench{uuid.uuid4().hex[:8]}"

