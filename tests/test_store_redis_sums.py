"""RedisStore's lazy message and duration sums (layouts 6 and 7): commits file a changed row in
the bucket's dirty set once, and `stats()` folds the filed rows into the aggregates first. Whatever
happens to a row between two folds (more commits, a new session at its key, a deletion, a
replaced session committed again), the figures `stats()` returns are exact.

Runs on standalone Redis and on Redis Cluster (bucketed indexes) through tests/backends.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from backends import BACKENDS, REDIS_URL, require_service
from chatstate.errors import ConfigurationError
from chatstate.model import SessionRecord, new_record
from chatstate.stores.redis import SCAN_BUDGET, RedisStore
from chatstate.stores.redis_scripts import LAYOUT_VERSION

pytestmark = pytest.mark.redis

T0 = 1_700_000_000.0


@pytest.fixture(params=["redis", "redis_cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RedisStore]:
    async with BACKENDS[request.param]() as opened:
        assert isinstance(opened, RedisStore)
        yield opened


async def _dirty(store: RedisStore) -> int:
    total = 0
    for bucket in store.layout.all_buckets:
        total += await store._client.scard(store.layout.index(bucket, "dirty"))
    return total


def _record(key: str, messages: int, seconds: float, version: int = 1) -> SessionRecord:
    record = new_record(key, now=T0)
    record.counters.messages = messages
    record.last_activity = T0 + seconds
    record.version = version
    return record


async def _step(store: RedisStore, record: SessionRecord, messages: int, seconds: float) -> None:
    """The next commit of `record`: `messages` more, last activity `seconds` later."""
    record.counters.messages += messages
    record.last_activity += seconds
    record.version += 1
    await store.commit(record, expected=record.version - 1)


async def test_sums_wait_for_a_fold_and_stats_are_exact(store: RedisStore) -> None:
    a = _record("web:user:sa", 1, 1.0)
    b = _record("web:user:sb", 2, 2.0)
    for record in (a, b):
        await store.commit(record, expected=0)  # new sessions add their sums at once
    assert await _dirty(store) == 0
    for _ in range(3):
        await _step(store, a, 1, 10.0)
        await _step(store, b, 2, 5.0)
    assert await _dirty(store) == 2  # each row filed once, however many commits
    assert (await store.count()).total == 2  # counts need no fold ...
    assert await _dirty(store) == 2
    stats = await store.stats()  # ... stats fold first
    assert await _dirty(store) == 0
    assert stats.messages == 4 + 8
    assert stats.avg_duration_seconds == pytest.approx((31.0 + 17.0) / 2)
    await _step(store, a, 5, 1.0)  # after a fold, the next commit files the row again
    assert await _dirty(store) == 1
    stats = await store.stats()
    assert stats.messages == 9 + 8
    assert stats.avg_duration_seconds == pytest.approx((32.0 + 17.0) / 2)
    # The filtered path reads the rows themselves and agrees.
    filtered = await store.stats(_web_only())
    assert (filtered.messages, filtered.total) == (17, 2)


def _web_only() -> object:
    from chatstate.stores.base import SessionFilter

    return SessionFilter(platform="web")


async def test_a_commit_that_changes_no_sum_files_nothing(store: RedisStore) -> None:
    record = _record("web:user:still", 3, 4.0)
    await store.commit(record, expected=0)
    record.data["note"] = "same counters, same time"
    record.version = 2
    await store.commit(record, expected=1)
    assert await _dirty(store) == 0
    assert (await store.stats()).messages == 3


async def test_deleted_and_replaced_rows_between_folds(store: RedisStore) -> None:
    key = "web:user:swap"
    old = _record(key, 2, 3.0)
    await store.commit(old, expected=0)
    await _step(store, old, 4, 7.0)  # old: 6 messages, 10 s, filed
    new = _record(key, 1, 1.0, version=3)  # a new session replaces it at the key
    await store.commit(new, expected=2)
    await _step(store, new, 2, 2.0)  # new: 3 messages, 3 s, filed
    gone = _record("web:user:gone", 5, 5.0)
    await store.commit(gone, expected=0)
    await _step(store, gone, 5, 5.0)  # 10 messages, 10 s, filed ...
    assert await store.delete(gone.key)  # ... and deleted before any fold
    stats = await store.stats()
    assert (stats.total, stats.messages) == (2, 6 + 3)
    assert stats.avg_duration_seconds == pytest.approx((10.0 + 3.0) / 2)
    # The replaced session committed again moves back to the key: its sums settle at once.
    old.version = new.version  # the key's version: the compare-and-set is per key
    await _step(store, old, 1, 1.0)
    await _step(store, old, 1, 1.0)
    await store.delete(key, new.id)
    stats = await store.stats()
    assert (stats.total, stats.messages) == (1, 8)
    assert stats.avg_duration_seconds == pytest.approx(12.0)
    assert await _dirty(store) == 0


async def test_a_fold_larger_than_one_call(store: RedisStore) -> None:
    n = SCAN_BUDGET + 5
    records = [_record(f"web:user:many{i}", 1, 1.0) for i in range(n)]
    for record in records:
        await store.commit(record, expected=0)
    for record in records:
        await _step(store, record, 1, 1.0)
    assert await _dirty(store) == n
    stats = await store.stats()
    assert (stats.total, stats.messages) == (n, 2 * n)
    assert await _dirty(store) == 0


async def test_a_layout_5_prefix_is_marked_7_in_place() -> None:
    require_service("Redis", "127.0.0.1", 6379)
    assert LAYOUT_VERSION == "7"
    prefix = "layout5upgrade"
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.set(f"{prefix}:layout", "5")
        await client.hset(f"{prefix}:agg", mapping={"t": 1, "m": 7})
        store = RedisStore.from_url(REDIS_URL, prefix=prefix)
        await store.open()
        assert await client.get(f"{prefix}:layout") == b"7"
        assert (await store.stats()).messages == 7  # nothing filed: the sums were folded
        await store.close()
        await client.set(f"{prefix}:layout", "4")
        with pytest.raises(ConfigurationError, match="layout 4"):
            await RedisStore.from_url(REDIS_URL, prefix=prefix).open()
    finally:
        await client.delete(f"{prefix}:layout", f"{prefix}:agg")
        await client.aclose()
