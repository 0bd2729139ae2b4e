"""MemoryStore specifics: LRU eviction with events, isolation of stored records, lease expiry,
URL options. The shared behaviour is in tests/conformance."""

from __future__ import annotations

import pytest

from chatstate.clock import FakeClock
from chatstate.errors import ConfigurationError, LeaseLost
from chatstate.events import SESSION_EVICTED, Event, EventBus
from chatstate.model import HistoryChanges, Message, new_record
from chatstate.stores.memory import MemoryStore
from chatstate.stores.url import open_store

T0 = 1_700_000_000.0


async def _put(store: MemoryStore, name: str, **fields: object) -> str:
    record = new_record(f"test:user:{name}", now=T0, **fields)  # type: ignore[arg-type]
    record.version = 1
    await store.commit(record, expected=0)
    return record.key


async def test_evicts_least_recently_used_with_an_event() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.on(SESSION_EVICTED, seen.append)
    called: list[Event] = []
    store = MemoryStore(max_sessions=3, events=bus, on_evict=called.append)
    a, b, c = [await _put(store, n) for n in "abc"]
    await store.load(a)  # a is now the most recently used; b the least
    d = await _put(store, "d")
    assert await store.load(b) is None
    assert all([await store.load(k) for k in (a, c, d)])
    assert [e.key for e in seen] == [b] == [e.key for e in called]
    assert seen[0].name == SESSION_EVICTED and seen[0].session_id is not None
    assert seen[0].data["reason"] == "max_sessions"
    await _put(store, "e")  # the loads above went a, c, d: a is now the least recently used
    assert [e.key for e in seen] == [b, a]
    assert len(store) == 3


async def test_eviction_removes_history_and_claims_nothing_later() -> None:
    store = MemoryStore(max_sessions=1)
    first = new_record("test:user:one", now=T0, expires_at=T0 + 5)
    first.version = 1
    hello = Message(role="user", content="hi", seq=1)
    await store.commit(first, expected=0, history=HistoryChanges(append=[hello]))
    await _put(store, "two")
    assert await store.count_messages(first.ref) == 0
    assert await store.claim_due("expire", T0 + 10, 10) == []


async def test_replaced_sessions_are_evicted_first() -> None:
    store = MemoryStore(max_sessions=2)
    old = new_record("test:user:a", now=T0)
    old.version = 1
    await store.commit(old, expected=0)
    new = new_record("test:user:a", now=T0)
    new.version = 2
    await store.commit(new, expected=1)
    await _put(store, "b")  # three records: the replaced one goes first
    assert await store.load_by_id(old.id) is None
    assert await store.load("test:user:a") == new


async def test_a_handler_mutating_a_loaded_record_changes_nothing_stored() -> None:
    store = MemoryStore()
    key = await _put(store, "x", data={"n": 1})
    loaded = await store.load(key)
    assert loaded is not None
    loaded.data["n"] = 99  # a handler that then crashes before committing
    again = await store.load(key)
    assert again is not None and again.data == {"n": 1}


async def test_leases_expire_on_the_store_clock() -> None:
    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    key = await _put(store, "l")
    lease, _ = await store.lease_and_load(key, "a", 10)
    assert lease is not None
    assert await store.lease_and_load(key, "b", 10) == (None, None)
    clock.advance(11)
    taken, record = await store.lease_and_load(key, "b", 10)
    assert taken is not None and record is not None and taken.token > lease.token
    assert await store.renew(lease, 10) is None
    record.version += 1
    with pytest.raises(LeaseLost):
        await store.commit(record, expected=1, lease=lease)
    await store.commit(record, expected=1, lease=taken, release=True)


async def test_stale_index_entries_are_compacted() -> None:
    store = MemoryStore()
    key = await _put(store, "s", expires_at=T0 + 10)
    record = await store.load(key)
    assert record is not None
    # Deadlines moving earlier leave one stale entry each; they must not pile up forever.
    for i in range(10_000):
        record.version += 1
        record.expires_at = T0 + 10 - (i + 1) * 0.0001
        await store.commit(record, expected=record.version - 1)
    assert store._due["expire"].size < 5_000
    items = await store.claim_due("expire", T0 + 10, 10)
    assert [i.key for i in items] == [key]


def test_url_and_options() -> None:
    store = open_store("memory://?max_sessions=7")
    assert isinstance(store, MemoryStore) and store.max_sessions == 7
    with pytest.raises(ConfigurationError, match="max_sessions"):
        open_store("memory://?max_sessions=lots")
    with pytest.raises(ConfigurationError, match="unknown"):
        open_store("memory://?colour=blue")
    with pytest.raises(ConfigurationError):
        MemoryStore(max_sessions=0)
