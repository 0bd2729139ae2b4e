"""Leases with fencing tokens; commits refused once the lease is lost."""

from __future__ import annotations

import pytest

from chatstate.errors import ConflictError, LeaseLost
from chatstate.stores.base import Store
from conformance.helpers import bump, make, unique_key


async def test_second_owner_gets_none_until_release(store: Store) -> None:
    key = unique_key()
    record = make(key)
    await store.commit(record, expected=0)
    lease, loaded = await store.lease_and_load(key, "a", 30)
    assert lease is not None and lease.owner == "a" and lease.key == key
    assert loaded == record
    assert await store.lease_and_load(key, "b", 30) == (None, None)
    await store.release(lease)
    other, loaded_b = await store.lease_and_load(key, "b", 30)
    assert other is not None and loaded_b == record
    assert other.token > lease.token  # fencing tokens grow per key
    await store.release(other)


async def test_lease_on_missing_record(store: Store) -> None:
    lease, record = await store.lease_and_load(unique_key(), "a", 30)
    assert lease is not None and record is None
    await store.release(lease)


async def test_commit_with_a_lost_lease_keeps_the_newer_data(store: Store) -> None:
    key = unique_key()
    record = make(key, data={"by": "start"})
    await store.commit(record, expected=0)
    first, loaded = await store.lease_and_load(key, "a", 30)
    assert first is not None and loaded is not None
    await store.release(first)  # as if it had expired: "b" takes over
    second, loaded_b = await store.lease_and_load(key, "b", 30)
    assert second is not None and loaded_b is not None
    newer = bump(loaded_b, data={"by": "b"})
    await store.commit(newer, expected=1, lease=second)

    with pytest.raises(LeaseLost) as caught:
        await store.commit(bump(loaded, data={"by": "a"}), expected=1, lease=first)
    assert isinstance(caught.value, ConflictError)
    assert await store.load(key) == newer
    await store.release(second)


async def test_commit_with_release_frees_the_key(store: Store) -> None:
    key = unique_key()
    lease, _ = await store.lease_and_load(key, "a", 30)
    assert lease is not None
    await store.commit(make(key), expected=0, lease=lease, release=True)
    other, loaded = await store.lease_and_load(key, "b", 30)
    assert other is not None and loaded is not None
    await store.release(other)


async def test_renew_and_release(store: Store) -> None:
    key = unique_key()
    lease, _ = await store.lease_and_load(key, "a", 5)
    assert lease is not None
    renewed = await store.renew(lease, 60)
    assert renewed is not None
    assert renewed.token == lease.token and renewed.expires_at >= lease.expires_at
    await store.release(renewed)
    assert await store.renew(lease, 60) is None  # released: nothing to renew
    await store.release(lease)  # releasing twice is harmless
    taker, _ = await store.lease_and_load(key, "b", 30)
    assert taker is not None
    assert await store.renew(lease, 60) is None  # another owner holds it
    await store.release(lease)  # a stale release does not free someone else's lease
    assert await store.lease_and_load(key, "c", 30) == (None, None)
    await store.release(taker)
