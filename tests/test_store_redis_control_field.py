"""RedisStore's control field (layout 8): a row keeps its version, listing group, due positions,
commit mark, -last_activity, due times and sums in one field 'k' (see
redis_scripts.CONTROL_FIELDS). Rows written by layout 7 hold them as separate fields: a prefix
of layout 7 is marked 8 in place, every script reads both forms, and the next commit of a
layout-7 pointer packs its fields into 'k'.

Layout-7 data is made here from layout-8 data by unpacking every 'k' into the separate fields
that layout 7 wrote (the same names and values), then marking the prefix 7.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backends import BACKENDS
from chatstate.clock import FakeClock
from chatstate.model import HistoryChanges, Message, SessionRecord, Status, new_record
from chatstate.stores.base import SessionFilter
from chatstate.stores.redis import RedisStore
from chatstate.stores.redis_scripts import CONTROL_FIELDS, LAYOUT_VERSION

pytestmark = pytest.mark.redis

T0 = 1_700_000_000.0


@pytest.fixture(params=["redis", "redis_cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RedisStore]:
    async with BACKENDS[request.param]() as opened:
        assert isinstance(opened, RedisStore)
        opened.clock = FakeClock(T0)
        yield opened


async def _as_layout_7(store: RedisStore) -> int:
    """Rewrite every row under the store's prefix as layout 7 wrote it; -> rows rewritten."""
    client = store._client
    rows = 0
    async for raw in client.scan_iter(match=f"{store.prefix}:*", count=1000):
        name = raw.decode()
        if not (name.endswith(":r") or ":s:" in name):
            continue
        control = await client.hget(name, "k")
        if control is None:
            continue
        values = control.decode().split(",")
        assert len(values) == len(CONTROL_FIELDS)
        await client.hset(name, mapping=dict(zip(CONTROL_FIELDS, values, strict=True)))
        await client.hdel(name, "k")
        rows += 1
    for bucket in store.layout.all_buckets:
        await client.set(store.layout.index(bucket, "layout"), "7")
    return rows


def _record(key: str, *, messages: int, version: int = 1) -> SessionRecord:
    record = new_record(key, now=T0)
    record.counters.messages = messages
    record.last_activity = T0 + messages
    record.version = version
    return record


async def _commit(store: RedisStore, record: SessionRecord, text: str | None = None) -> None:
    history = None
    if text is not None:
        seq = record.counters.messages
        history = HistoryChanges(append=[Message(role="user", content=text, seq=seq)])
    await store.commit(record, expected=record.version - 1, history=history)


async def test_layout_7_rows_are_read_updated_listed_claimed_and_counted(
    store: RedisStore,
) -> None:
    # Layout-7 data: a session due for a warning and an expiry, one whose sums wait for a fold,
    # and a key whose first session was replaced by a second one.
    due = _record("web:user:due", messages=1)
    due.warn_at, due.expires_at = T0 + 50, T0 + 100
    await _commit(store, due, "hello")
    dirty = _record("web:user:dirty", messages=2)
    await _commit(store, dirty)
    await store.stats()  # folded ...
    dirty.counters.messages, dirty.version = 3, 2
    await _commit(store, dirty, "again")  # ... and filed again
    first = _record("web:user:swap", messages=4)
    await _commit(store, first)
    second = _record("web:user:swap", messages=1, version=2)
    second.status = Status.CLOSED
    await _commit(store, second)
    before = await store.stats()
    assert await _as_layout_7(store) == 4  # three pointers, one replaced row

    await store._check_layout()  # a layout-7 prefix is marked 8 in place
    for bucket in store.layout.all_buckets:
        assert await store._client.get(store.layout.index(bucket, "layout")) == (
            LAYOUT_VERSION.encode()
        )
    # Read intact: records, listings, counts, stats (which fold the filed row first).
    assert await store.load(due.key) == due
    assert await store.load_by_id(first.id) == first
    listed = await store.list(limit=10)
    assert {item.id for item in listed.items} == {due.id, dirty.id, first.id, second.id}
    counted = await store.count()
    assert (counted.total, counted.by_status) == (4, {"active": 3, "closed": 1})
    stats = await store.stats()
    assert (stats.total, stats.messages) == (before.total, before.messages) == (4, 9)
    filtered = await store.stats(SessionFilter(status="active"))
    assert (filtered.total, filtered.messages) == (3, 8)
    # Claimed from the old due positions.
    warned = await store.claim_due("warn", T0 + 60, 10)
    assert [(item.key, item.due_at) for item in warned] == [(due.key, T0 + 50)]

    # Updated: the commit packs the old fields into 'k' (the sums and due entries go on).
    pointer = f"{store.layout.base(due.key)}:r"
    assert await store._client.hget(pointer, "k") is None
    due.counters.messages, due.version, due.warn_at = 5, 2, None
    await _commit(store, due, "later")
    raw = await store._client.hgetall(pointer)
    assert b"k" in raw and not {name.encode() for name in CONTROL_FIELDS} & set(raw)
    assert await store.load(due.key) == due
    assert [m.content for m in await store.read_tail(due.ref, 10)] == ["hello", "later"]
    assert await store.claim_due("warn", T0 + 60, 10) == []  # the warning was taken back
    expired = await store.claim_due("expire", T0 + 200, 10)
    assert [(item.key, item.due_at) for item in expired] == [(due.key, T0 + 100)]
    # The replaced layout-7 row committed again moves back to its key, its sums settled.
    first.version = 3
    first.counters.messages = 6
    await _commit(store, first)
    stats = await store.stats()
    assert (stats.total, stats.messages) == (4, 5 + 3 + 6 + 1)
    assert await store.load(first.key) == first
    assert await store.load_by_id(second.id) == second
    # Deleted: its contribution leaves the counts.
    assert await store.delete(dirty.key)
    stats = await store.stats()
    assert (stats.total, stats.messages) == (3, 5 + 6 + 1)
    listed = await store.list(limit=10)
    assert {item.id for item in listed.items} == {due.id, first.id, second.id}
