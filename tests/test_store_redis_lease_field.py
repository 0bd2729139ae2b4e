"""RedisStore's lease as one field of the pointer (layout 7): 'l' = "<expiry><token>:<owner>".
A pointer written by layout 6 or older keeps its lease in fields o, t, e; the next
lease_and_load moves it into 'l' with the token counter going on, and a lease still held there
is respected.
"""

from __future__ import annotations

import pytest

from chatstate.errors import LeaseLost
from chatstate.model import new_record
from chatstate.stores.redis import RedisStore, _us

pytestmark = pytest.mark.redis


@pytest.fixture
def store(redis_store: RedisStore) -> RedisStore:
    return redis_store  # (conftest: standalone and Cluster, on a fake clock)


def _pointer(store: RedisStore, key: str) -> str:
    return f"{store.layout.base(key)}:r"


async def test_one_field_holds_the_lease_and_a_release_keeps_token_and_owner(
    store: RedisStore,
) -> None:
    key = "web:user:lf1"
    lease, _ = await store.lease_and_load(key, "me", 30.0)
    assert lease is not None
    pointer = _pointer(store, key)
    raw = await store._client.hgetall(pointer)
    assert set(raw) == {b"l"}
    assert raw[b"l"] == f"{_us(lease.expires_at)}{lease.token}:me".encode()
    record = new_record(key, now=store.clock.now())
    record.version = 1
    await store.commit(record, expected=0, lease=lease, release=True)
    assert await store._client.hget(pointer, "l") == f"{'0' * 17}{lease.token}:me".encode()
    again, loaded = await store.lease_and_load(key, "other", 30.0)
    assert again is not None and again.token == lease.token + 1 and loaded is not None
    renewed = await store.renew(again, 60.0)
    assert renewed is not None
    record.version = 2
    with pytest.raises(LeaseLost):  # the first lease is long gone
        await store.commit(record, expected=1, lease=lease)
    await store.commit(record, expected=1, lease=renewed)
    await store.release(renewed)
    assert (await store._client.hget(pointer, "l")).startswith(b"0" * 17)


async def test_a_lease_in_the_old_fields_moves_into_l(store: RedisStore) -> None:
    key = "web:user:lf2"
    pointer = _pointer(store, key)
    now = store.clock.now()
    # As layout 6 left it: a lease held by another process until now + 10, token 41.
    await store._client.hset(pointer, mapping={"o": "old", "t": "41", "e": _us(now + 10)})
    lease, _ = await store.lease_and_load(key, "me", 30.0)
    assert lease is None  # still held
    store.clock.advance(11)  # type: ignore[attr-defined]
    lease, _ = await store.lease_and_load(key, "me", 30.0)
    assert lease is not None and lease.token == 42  # the counter goes on
    raw = await store._client.hgetall(pointer)
    assert set(raw) == {b"l"}
    record = new_record(key, now=store.clock.now())
    record.version = 1
    await store.commit(record, expected=0, lease=lease, release=True)
    assert (await store.load(key)) == record
