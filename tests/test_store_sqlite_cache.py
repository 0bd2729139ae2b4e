"""SQLiteStore's record cache: loads of recent records run no SQL while the store is alone on
its file, and never return what another connection replaced once an event-loop iteration
has passed; a stale entry can only cost a refused commit, after which the file is read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chatstate.errors import ConfigurationError, ConflictError, CorruptRecordError
from chatstate.model import SessionRecord, new_record
from chatstate.stores.record_cache import RecordCache
from chatstate.stores.sqlite import SQLiteStore
from chatstate.stores.url import open_store

KEY = "t:user:a"


async def _open(path: Path, **options: object) -> SQLiteStore:
    store = SQLiteStore(str(path), **options)  # type: ignore[arg-type]
    await store.open()
    return store


async def _commit(store: SQLiteStore, record: SessionRecord, value: int) -> SessionRecord:
    expected = record.version
    record.data = {"v": value}
    record.version = expected + 1
    await store.commit(record, expected=expected)
    return record


async def _value(store: SQLiteStore, key: str = KEY) -> object:
    record = await store.load(key)
    return None if record is None else (record.version, record.data["v"])


def _count_loads(store: SQLiteStore) -> list[str]:
    """Record the loads by key run on the loop's connections from now on."""
    seen: list[str] = []
    for conn in (store._reader, store._reads):
        assert conn is not None
        conn.set_trace_callback(lambda sql: seen.append(sql) if "SELECT blob" in sql else None)
    return seen


async def test_loads_of_records_committed_or_read_here_run_no_sql(tmp_path: Path) -> None:
    store = await _open(tmp_path / "c.db")
    try:
        record = await _commit(store, new_record(KEY), 1)
        loads = _count_loads(store)
        assert await _value(store) == (1, 1)
        await _commit(store, record, 2)
        await asyncio.sleep(0)
        assert await _value(store) == (2, 2)
        assert loads == []
        await _commit(store, new_record("t:user:b"), 1)
        store._cache.clear()  # type: ignore[union-attr]
        assert await _value(store, "t:user:b") == (1, 1)  # read from the file, remembered
        assert await _value(store, "t:user:b") == (1, 1)
        assert len(loads) == 1
    finally:
        await store.close()


@pytest.mark.parametrize("shared", ["false", "auto"])
async def test_a_commit_by_another_store_is_seen_after_one_iteration(
    tmp_path: Path, shared: str
) -> None:
    """With shared=false nothing but SQLite's data_version tells that another connection wrote;
    in auto mode the other store's lock on the file does too."""
    path = tmp_path / "c.db"
    store = await _open(path, shared=shared)
    other = await _open(path, shared=shared)
    try:
        await _commit(store, new_record(KEY), 1)
        assert await _value(store) == (1, 1)  # remembered
        theirs = await other.load(KEY)
        assert theirs is not None
        await _commit(other, theirs, 2)
        await asyncio.sleep(0)
        assert await _value(store) == (2, 2)
        assert await other.delete(KEY)
        await asyncio.sleep(0)
        assert await store.load(KEY) is None
    finally:
        await other.close()
        await store.close()


async def test_while_another_store_has_the_file_open_no_load_is_served_from_the_cache(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.db"
    store = await _open(path)
    try:
        await _commit(store, new_record(KEY), 1)
        await asyncio.sleep(0)
        assert store._usable_cache() is not None
        other = await _open(path)
        try:
            await asyncio.sleep(0)
            loads = _count_loads(store)
            assert store._usable_cache() is None
            assert await _value(store) == (1, 1)
            assert len(loads) == 1
        finally:
            await other.close()
    finally:
        await store.close()


async def test_a_stale_entry_costs_one_refused_commit_then_the_file_is_read(
    tmp_path: Path,
) -> None:
    store = await _open(tmp_path / "c.db")
    try:
        record = await _commit(store, new_record(KEY), 1)
        stale = store._cache.get(KEY)  # type: ignore[union-attr]
        assert stale is not None
        await _commit(store, record, 2)
        # As if another connection's commit had landed within this iteration.
        store._cache.put(KEY, stale)  # type: ignore[union-attr]
        old = await store.load(KEY)
        assert old is not None and old.version == 1
        with pytest.raises(ConflictError):
            await _commit(store, old, 99)
        assert await _value(store) == (2, 2)
    finally:
        await store.close()


async def test_deleted_or_overwritten_records_are_forgotten_at_once(tmp_path: Path) -> None:
    store = await _open(tmp_path / "c.db")
    try:
        await _commit(store, new_record(KEY), 1)
        assert await store.load(KEY) is not None
        await store._put_raw(KEY, b"\xc1 not a record")
        with pytest.raises(CorruptRecordError) as caught:
            await store.load(KEY)
        await store.quarantine(KEY, caught.value.raw, caught.value.reason)
        assert await store.load(KEY) is None
        await _commit(store, new_record(KEY), 1)
        assert await store.delete(KEY)
        assert await store.load(KEY) is None
    finally:
        await store.close()


async def test_the_cache_is_bounded(tmp_path: Path) -> None:
    store = await _open(tmp_path / "c.db", cache=3)
    try:
        for n in range(10):
            await _commit(store, new_record(f"t:user:{n}"), n)
        assert len(store._cache) == 3  # type: ignore[arg-type]
        for n in range(10):
            assert await _value(store, f"t:user:{n}") == (1, n)
    finally:
        await store.close()


def test_least_recently_written_keys_leave_first() -> None:
    cache = RecordCache(2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    cache.put("a", b"3")  # rewritten: now the most recent
    cache.put("c", b"4")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"3", None, b"4")
    with pytest.raises(ValueError):
        RecordCache(0)


async def test_the_cache_option(tmp_path: Path) -> None:
    off = open_store(f"sqlite:///{tmp_path / 'c.db'}?cache=0")
    assert isinstance(off, SQLiteStore) and off._cache is None
    sized = open_store(f"sqlite:///{tmp_path / 'c.db'}?cache=5")
    assert isinstance(sized, SQLiteStore) and sized._cache is not None
    assert sized._cache.size == 5
    for bad in ("-1", "many"):
        with pytest.raises(ConfigurationError, match="cache"):
            open_store(f"sqlite:///{tmp_path / 'c.db'}?cache={bad}")


async def test_another_event_loop_never_touches_the_cache(tmp_path: Path) -> None:
    """The cache belongs to the loop that opened the store (its checks run on that loop's
    connection); a thread with a loop of its own reads and commits through the worker."""
    store = await _open(tmp_path / "c.db")
    try:
        record = await _commit(store, new_record(KEY), 1)
        assert store._cache is not None and store._cache.get(KEY) is not None

        def elsewhere() -> object:
            async def update() -> object:
                loaded = await store.load(KEY)
                assert loaded is not None and loaded.version == 1
                await _commit(store, loaded, 2)
                return await _value(store)

            return asyncio.run(update())

        assert await asyncio.to_thread(elsewhere) == (2, 2)
        assert store._cache.get(KEY) is None  # forgotten by that commit, not replaced
        # As if this iteration's check had run before that commit: the key is read anew.
        store._cache_state = True
        assert await _value(store) == (2, 2)
        assert record.version == 1
    finally:
        await store.close()
