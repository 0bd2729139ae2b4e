"""Unreadable records: typed error on load, repair where possible, quarantine otherwise."""

from __future__ import annotations

import pytest

from chatstate.errors import CorruptRecordError
from chatstate.stores.base import Store
from conformance.helpers import T0, appended, make, put_raw, unique_key

# Valid JSON and UTF-8 (so every backend can store it, even a JSON column) but neither a JSON
# record nor msgpack: every codec must refuse it.
GARBAGE = b'["not", "a", "record"]'


async def test_corrupt_record_raises_and_quarantine_frees_the_key(store: Store) -> None:
    key = unique_key()
    record = make(key, expires_at=T0 + 5)
    await store.commit(record, expected=0, history=appended("before"))
    await put_raw(store, key, GARBAGE)

    with pytest.raises(CorruptRecordError) as caught:
        await store.load(key)
    assert caught.value.key == key
    assert caught.value.raw == GARBAGE

    await store.quarantine(key, caught.value.raw, caught.value.reason)
    assert await store.load(key) is None
    kept = await store.list_quarantined()
    assert [(q["key"], q["raw"]) for q in kept] == [(key, GARBAGE)]
    assert kept[0]["reason"] == caught.value.reason
    assert isinstance(kept[0]["at"], float)

    fresh = make(key)  # the next update starts a fresh session at expected=0
    await store.commit(fresh, expected=0)
    assert await store.load(key) == fresh
    assert all(i.session_id != record.id for i in await store.claim_due("expire", T0 + 9, 10))


async def test_lease_and_load_carries_the_lease_on_a_corrupt_record(store: Store) -> None:
    key = unique_key()
    await store.commit(make(key), expected=0)
    await put_raw(store, key, GARBAGE)
    with pytest.raises(CorruptRecordError) as caught:
        await store.lease_and_load(key, "worker-1", 30)
    lease = caught.value.lease  # type: ignore[attr-defined]
    assert lease is not None and lease.key == key and lease.owner == "worker-1"
    await store.release(lease)


async def test_quarantine_keeps_a_record_written_meanwhile(store: Store) -> None:
    key = unique_key()
    await store.commit(make(key), expected=0)
    await put_raw(store, key, GARBAGE)
    with pytest.raises(CorruptRecordError):
        await store.load(key)
    replacement = make(key)
    await put_raw(store, key, store.codec.encode(replacement))
    await store.quarantine(key, GARBAGE, "stale report")  # a late report about the old bytes
    assert await store.load(key) == replacement


async def test_a_bad_field_is_repaired_on_load(store: Store) -> None:
    key = unique_key()
    record = make(key, state="ok", data={"keep": 1})
    await store.commit(record, expected=0)
    doc = store.codec.loads(store.codec.encode(record))
    doc["state"] = {"not": "a string"}  # a field of the wrong type falls back to its default
    await put_raw(store, key, store.codec.dumps(doc))
    loaded = await store.load(key)
    assert loaded is not None
    assert loaded.state is None and loaded.data == {"keep": 1} and loaded.id == record.id
