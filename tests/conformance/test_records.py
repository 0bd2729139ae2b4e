"""Records: compare-and-set commits, replacing sessions, deletes, concurrent writers."""

from __future__ import annotations

import asyncio

import pytest

from chatstate.errors import ConflictError, InvalidDataError, RecordTooLarge
from chatstate.model import SessionRecord, Status
from chatstate.stores.base import Store
from conformance.helpers import appended, bump, make, unique_key


async def test_commit_then_load_round_trips(store: Store) -> None:
    key = unique_key()
    record = make(key, state="asking", data={"name": "Ada", "n": [1, 2]}, labels={"tier": "pro"})
    await store.commit(record, expected=0)
    loaded = await store.load(key)
    assert loaded == record
    assert await store.load_by_id(record.id) == record
    assert await store.load(unique_key()) is None
    assert await store.load_by_id("no-such-id") is None


async def test_stale_commit_raises_and_changes_nothing(store: Store) -> None:
    key = unique_key()
    first = make(key, data={"n": 1})
    await store.commit(first, expected=0)
    second = bump(first, data={"n": 2})
    await store.commit(second, expected=1)

    stale = bump(first, data={"n": 99}, state="stale")  # written from version 1 again
    with pytest.raises(ConflictError) as caught:
        await store.commit(stale, expected=1, history=appended("lost"))
    assert caught.value.actual == 2
    assert await store.load(key) == second
    assert await store.count_messages(second.ref) == 0  # the history went nowhere either


async def test_expected_zero_on_existing_record_fails(store: Store) -> None:
    key = unique_key()
    record = make(key)
    await store.commit(record, expected=0)
    with pytest.raises(ConflictError):
        await store.commit(make(key, data={"x": 1}), expected=0)
    assert await store.load(key) == record


async def test_expected_version_on_missing_record_fails(store: Store) -> None:
    with pytest.raises(ConflictError) as caught:
        await store.commit(make(unique_key(), version=4), expected=3)
    assert caught.value.actual is None


async def test_version_must_be_expected_plus_one(store: Store) -> None:
    key = unique_key()
    with pytest.raises(ConflictError):
        await store.commit(make(key, version=5), expected=0)
    assert await store.load(key) is None


async def test_new_session_replaces_current_and_keeps_the_old_by_id(store: Store) -> None:
    key = unique_key()
    old = make(key, data={"who": "old"})
    await store.commit(old, expected=0, history=appended("hello", "bye"))
    closed = bump(old, status=Status.CLOSED, close_reason="goodbye", purge_at=None)
    await store.commit(closed, expected=1)

    new = make(key, version=3, data={"who": "new"})  # versions keep growing per key
    await store.commit(new, expected=2, history=appended("again"))

    assert await store.load(key) == new
    assert await store.load_by_id(old.id) == closed
    assert [m.content for m in await store.read_tail(old.ref, 10)] == ["hello", "bye"]
    assert [m.content for m in await store.read_tail(new.ref, 10)] == ["again"]
    listed = await store.list()
    assert {r.id for r in listed.items} == {old.id, new.id}

    # Deleting by id removes the replaced one only.
    assert await store.delete(key, old.id)
    assert await store.load_by_id(old.id) is None
    assert await store.read_tail(old.ref, 10) == []
    assert await store.load(key) == new


async def test_delete_removes_record_history_summaries_and_due_entries(store: Store) -> None:
    from chatstate.model import HistoryChanges
    from conformance.helpers import T0, summary

    key = unique_key()
    record = make(key, expires_at=T0 + 10, warn_at=T0 + 5)
    changes = appended("a", "b")
    changes.summaries = [summary(1, 2, "a and b")]
    await store.commit(record, expected=0, history=changes)
    assert await store.delete(key)
    assert await store.load(key) is None
    assert await store.load_by_id(record.id) is None
    assert await store.count_messages(record.ref) == 0
    assert await store.read_tail(record.ref, 5) == []
    assert await store.list_summaries(record.ref) == []
    assert await store.claim_due("expire", T0 + 100, 10) == []
    assert await store.claim_due("warn", T0 + 100, 10) == []
    assert not await store.delete(key)
    # The key is free again: a new session starts at expected=0.
    await store.commit(make(key), expected=0, history=HistoryChanges())
    assert (await store.load(key)) is not None


async def test_delete_with_wrong_id_deletes_nothing(store: Store) -> None:
    key = unique_key()
    record = make(key)
    await store.commit(record, expected=0)
    assert not await store.delete(key, "another-id")
    assert await store.load(key) == record


async def test_bad_data_and_oversized_records_change_nothing(store: Store) -> None:
    key = unique_key()
    record = make(key, data={"n": 1})
    await store.commit(record, expected=0)
    with pytest.raises(InvalidDataError):
        await store.commit(bump(record, data={"when": object()}), expected=1)
    limit = store.codec.max_record_bytes
    with pytest.raises(RecordTooLarge):
        await store.commit(bump(record, data={"blob": "x" * (limit + 1)}), expected=1)
    assert await store.load(key) == record


async def test_concurrent_increments_with_retry_lose_nothing(store: Store) -> None:
    key = unique_key()
    await store.commit(make(key, data={"n": 0}), expected=0)
    conflicts = 0

    async def increment() -> None:
        nonlocal conflicts
        while True:
            current = await store.load(key)
            assert current is not None
            await asyncio.sleep(0)  # let the other writers interleave between load and commit
            updated: SessionRecord = bump(current, data={"n": current.data["n"] + 1})
            try:
                await store.commit(updated, expected=current.version)
                return
            except ConflictError:
                conflicts += 1

    writers, each = 20, 5
    await asyncio.gather(*(increment() for _ in range(writers * each)))
    final = await store.load(key)
    assert final is not None
    assert final.data["n"] == writers * each
    assert final.version == writers * each + 1
    assert conflicts > 0  # the test did race
