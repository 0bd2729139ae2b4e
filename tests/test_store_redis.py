"""Redis-specific behaviour of RedisStore: round trips per update, key layout, GC backstop,
faults (server killed, server hung, scripts flushed) and URL options.

The protocol itself is checked by the conformance suite (tests/conformance) on "redis" and
"redis_cluster" through tests/backends.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions
from redis.asyncio.connection import AbstractConnection

from backends import BACKENDS, REDIS_URL, require_service
from chatstate.clock import FakeClock
from chatstate.errors import (
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    InvalidDataError,
    LeaseLost,
    StoreUnavailable,
)
from chatstate.model import HistoryChanges, Message, SessionRecord, Status, Summary, new_record
from chatstate.stores import open_store
from chatstate.stores.redis import RedisStore
from chatstate.stores.redis_scripts import LAYOUT_VERSION
from redis_servers import RedisServer, free_port, redis_server, require_redis_binaries

pytestmark = pytest.mark.redis

# Generous bound on any single store call during a fault: a hang fails the test instead of
# stalling it. (Bounds, not speed: speed lives in benchmarks/.)
CALL_BOUND = 20.0


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A test-owned redis-server that writes every command to its AOF before answering, so a
    SIGKILL loses nothing that was acknowledged."""
    require_redis_binaries()
    with redis_server("--appendonly", "yes", "--appendfsync", "always") as server:
        yield server


@contextlib.asynccontextmanager
async def _opened(server: RedisServer, options: str) -> AsyncIterator[RedisStore]:
    """A store on a test-owned server, with URL query `options`."""
    store = RedisStore.from_url(server.url + options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.contextmanager
def _out_of_memory(server: RedisServer) -> Iterator[None]:
    """The server refuses every write (maxmemory 1 byte) inside the block."""
    server.cli("config", "set", "maxmemory", "1")
    try:
        yield
    finally:
        server.cli("config", "set", "maxmemory", "0")


@pytest.fixture
async def machine_store() -> AsyncIterator[RedisStore]:
    require_service("Redis", "127.0.0.1", 6379)
    async with BACKENDS["redis"]() as store:
        assert isinstance(store, RedisStore)
        yield store


async def _update(store: RedisStore, key: str, owner: str) -> SessionRecord:
    """One serialised update as the engine does it: lease+load, change, commit+release."""
    lease, record = await store.lease_and_load(key, owner, 30.0)
    assert lease is not None
    expected = 0 if record is None else record.version
    if record is None:
        record = new_record(key, now=store.clock.now())
    record.version = expected + 1
    record.counters.messages += 1
    record.counters.last_seq += 1
    message = Message(role="user", content=f"n{record.counters.messages}",
                      seq=record.counters.last_seq, tokens=2)
    await store.commit(record, expected=expected, lease=lease, release=True,
                       history=HistoryChanges(append=[message]))
    return record


class _SendCounter:
    """Counts requests written to Redis: one `send_packed_command` is one round trip (a
    pipeline is one too)."""

    def __init__(self) -> None:
        self.count = 0
        self.original = AbstractConnection.send_packed_command

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = self.original

        async def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            await original(conn, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["redis", "redis_cluster"])
async def test_an_update_costs_two_round_trips(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "redis":
        require_service("Redis", "127.0.0.1", 6379)
    else:
        require_redis_binaries()
    async with BACKENDS[name]() as store:
        assert isinstance(store, RedisStore)
        key = "telegram:user:rt1"
        await _update(store, key, "w1")  # warm: connections open, scripts known
        counter = _SendCounter()
        counter.install(monkeypatch)
        record = await _update(store, key, "w1")
        monkeypatch.undo()
        assert counter.count == 2
        assert record.version == 2
        assert await store.count_messages(record.ref) == 2


async def test_server_sees_two_script_calls_per_update(own_server: RedisServer) -> None:
    from chatstate.engine import SessionManager

    store = RedisStore.from_url(own_server.url + "?prefix=rt")
    manager = SessionManager(store)
    await manager.open()
    try:
        async with manager.session("web:user:a") as s:
            s.data["n"] = 0
        own_server.cli("config", "resetstat")
        for n in range(1, 6):
            async with manager.session("web:user:a") as s:  # as every message does
                s.data["n"] = n
                s.append(Message(role="user", content=f"m{n}"))
        stats = own_server.cli("info", "commandstats")
    finally:
        await manager.aclose()
    calls = {
        line.split(":", 1)[0].removeprefix("cmdstat_"): int(line.split("calls=")[1].split(",")[0])
        for line in stats.splitlines() if line.startswith("cmdstat_")
    }
    calls.pop("config|resetstat", None)
    assert calls["evalsha"] == 10
    assert "eval" not in calls and "script|load" not in calls and "get" not in calls
    # The record is read by a plain HGET sent behind the lease script (not inside it).
    assert calls.pop("hget") == 5
    # Inside the scripts, per update: one read and one write of the pointer for the lease and
    # again for the commit, the message is appended to the history list after a look at its
    # last entry (seqs must keep growing along the list). The message and duration sums wait
    # for a fold: the first update after one keeps the folded values and marks its listing
    # group (one more read and two more writes of the pointer) and files the session as
    # changed; the others touch no aggregate.
    # Nothing else: no listing entry within the same minute (the index holds minutes), no due
    # entry for a deadline that moved later (the lazy due index), no expiry call, no removal
    # of a due time that was never set. (The five updates run within a minute, or cross one
    # minute boundary at most: a new minute writes the listing entry and the pointer's 'lg',
    # with the filing's write when they coincide.)
    nested = {name: count for name, count in calls.items() if name != "evalsha"}
    minutes = nested.pop("zadd", 0)
    assert minutes <= 1
    assert nested.pop("sadd") == 1
    assert nested.pop("hmget") == 2 * 5 + 1
    assert 2 * 5 + 2 <= nested.pop("hset") <= 2 * 5 + 2 + minutes
    assert "hincrby" not in nested
    assert {name: count / 5 for name, count in nested.items()} == {"lindex": 1, "rpush": 1}


async def test_a_claimed_entry_is_put_back_by_a_commit_that_keeps_its_time(
    machine_store: RedisStore,
) -> None:
    """A claim's hold on a due entry ends with the next commit of the session, also when the
    due time did not change (the lazy index moves entries later, never leaves one held)."""
    clock = FakeClock()
    machine_store.clock = clock
    record = new_record("web:user:reclaim", now=clock.now())
    record.version = 1
    record.expires_at = clock.now() + 10
    await machine_store.commit(record, expected=0)
    claimed = await machine_store.claim_due("expire", clock.now() + 10, 10, claim_seconds=300)
    assert [i.session_id for i in claimed] == [record.id]
    assert await machine_store.claim_due("expire", clock.now() + 10, 10) == []
    record.version = 2
    record.data["note"] = "same deadline"
    await machine_store.commit(record, expected=1)
    again = await machine_store.claim_due("expire", clock.now() + 10, 10)
    assert [(i.session_id, i.due_at) for i in again] == [(record.id, clock.now() + 10)]


async def _due_entries(store: RedisStore, kind: str) -> list[tuple[str, float]]:
    name = store.layout.index(0, f"due:{kind}")
    raw = await store._client.zrange(name, 0, -1, withscores=True)
    return [(m.decode(), score) for m, score in raw]


async def test_a_deadline_that_moves_later_writes_no_due_entry_and_claims_stay_exact(
    machine_store: RedisStore,
) -> None:
    """The lazy due index: a later deadline leaves the entry where it was; a claim that reaches
    the early entry moves it to the real time without handing the session out; an earlier
    deadline moves the entry at once; a removed deadline drops the entry when reached."""
    clock = FakeClock()
    machine_store.clock = clock
    t0 = clock.now()
    record = new_record("web:user:lazy", now=t0)
    record.version = 1
    record.expires_at = t0 + 10
    await machine_store.commit(record, expected=0)
    member = f"{record.key} {record.id}"
    assert await _due_entries(machine_store, "expire") == [(member, t0 + 10)]
    for version in range(2, 5):  # each message slides the deadline later
        record.version = version
        record.expires_at = t0 + 10 * version
        await machine_store.commit(record, expected=version - 1)
    assert await _due_entries(machine_store, "expire") == [(member, t0 + 10)]  # not rewritten
    # Reached at its early time: moved to the real deadline, nothing handed out.
    assert await machine_store.claim_due("expire", t0 + 15, 10) == []
    assert await _due_entries(machine_store, "expire") == [(member, t0 + 40)]
    claimed = await machine_store.claim_due("expire", t0 + 40, 10, claim_seconds=30)
    assert [(i.session_id, i.due_at) for i in claimed] == [(record.id, t0 + 40)]
    # An earlier deadline puts the entry there at once.
    record.version = 5
    record.expires_at = t0 + 20
    await machine_store.commit(record, expected=4)
    assert await _due_entries(machine_store, "expire") == [(member, t0 + 20)]
    # A removed deadline: the entry stays until a claim reaches it, which drops it.
    record.version = 6
    record.expires_at = None
    await machine_store.commit(record, expected=5)
    assert await machine_store.claim_due("expire", t0 + 100, 10) == []
    assert await _due_entries(machine_store, "expire") == []
    # And a deadline set again gets a new entry.
    record.version = 7
    record.expires_at = t0 + 200
    await machine_store.commit(record, expected=6)
    assert [i.session_id for i in await machine_store.claim_due("expire", t0 + 200, 10)] == [
        record.id
    ]


async def test_a_claim_drops_entries_of_sessions_that_are_gone(machine_store: RedisStore) -> None:
    clock = FakeClock()
    machine_store.clock = clock
    record = new_record("web:user:gone", now=clock.now())
    record.version = 1
    record.expires_at = clock.now() + 5
    await machine_store.commit(record, expected=0)
    base = machine_store.layout.base(record.key)
    await machine_store._client.delete(f"{base}:r")  # as the GC backstop would
    assert await machine_store.claim_due("expire", clock.now() + 5, 10) == []
    assert await _due_entries(machine_store, "expire") == []


async def test_a_replaced_session_keeps_its_row_expiry_and_indexes(
    machine_store: RedisStore,
) -> None:
    """The current session lives in the pointer; a new session moves the old one to a row of
    its own, with the expiry backstop it had, still listed, counted and loadable by id."""
    clock = FakeClock()
    machine_store.clock = clock
    key = "web:user:replaced"
    old = new_record(key, now=clock.now())
    old.version = 1
    await machine_store.commit(old, expected=0)
    old.version = 2
    old.status = Status.CLOSED
    old.close_reason = "goodbye"
    old.purge_at = clock.now() + 3600
    await machine_store.commit(old, expected=1)
    clock.advance(5)
    fresh = new_record(key, now=clock.now())
    fresh.version = 3
    await machine_store.commit(fresh, expected=2)

    client = machine_store._client
    base = machine_store.layout.base(key)
    row_ttl = await client.pttl(f"{base}:s:{old.id}")
    assert (3600 + machine_store.gc_margin - 60) * 1000 < row_ttl
    assert await client.pttl(f"{base}:r") == -1  # the new, active session never expires
    assert await machine_store.load_by_id(old.id) == old
    assert await machine_store.load_by_id(fresh.id) == fresh
    assert await machine_store.load(key) == fresh
    listed = await machine_store.list()
    assert [r.id for r in listed.items if r.key == key] == [fresh.id, old.id]
    stats = await machine_store.stats()
    assert stats.total == 2 and stats.by_status == {"closed": 1, "active": 1}
    assert [i.session_id for i in await machine_store.claim_due("purge", old.purge_at, 10)] \
        == [old.id]

    assert await machine_store.delete(key, old.id)
    assert await machine_store.load_by_id(old.id) is None
    assert await machine_store.load(key) == fresh
    assert (await machine_store.count()).by_status == {"active": 1}
    assert await machine_store.delete(key)
    assert (await machine_store.count()).total == 0
    assert await client.hget(f"{base}:r", "b") is None


async def test_data_of_an_older_layout_is_refused_at_open() -> None:
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"oldlayout{os.getpid()}"
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.hset(f"{prefix}:agg", "t", 1)  # layout 1 wrote no marker
        store = RedisStore.from_url(REDIS_URL, prefix=prefix)
        with pytest.raises(ConfigurationError, match="layout 1"):
            await store.open()
        assert store._client is None
        await client.delete(f"{prefix}:agg")
        await store.open()  # an empty prefix is marked with the current layout
        assert await client.get(f"{prefix}:layout") == LAYOUT_VERSION.encode()
        await store.close()
    finally:
        await client.delete(f"{prefix}:agg", f"{prefix}:layout")
        await client.aclose()


# -- layout -------------------------------------------------------------------------------------


async def test_all_keys_of_a_session_share_one_hash_tag(machine_store: RedisStore) -> None:
    key = "discord:user_in_chat:77:88"
    await _update(machine_store, key, "w1")
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        names = [n.decode() async for n in client.scan_iter(match=f"{machine_store.prefix}:*")]
    finally:
        await client.aclose()
    session_keys = [n for n in names if key in n and n.count(":") > 1 and "{" + key + "}" in n]
    # pointer (with the lease and the current row) and history, tagged with the canonical key
    assert {n.rsplit("}:", 1)[1].split(":", 1)[0] for n in session_keys} >= {"r", "h"}


async def test_cluster_session_keys_and_their_indexes_share_a_slot() -> None:
    require_redis_binaries()
    async with BACKENDS["redis_cluster"]() as store:
        assert isinstance(store, RedisStore)
        keys = [f"telegram:user:{i}" for i in range(12)]
        for key in keys:
            await _update(store, key, "w1")
        client = store._client
        slots: dict[str, set[int]] = {}
        async for raw in client.scan_iter(match=f"{store.prefix}:*"):
            name = raw.decode()
            tag = name[name.index("{") + 1:name.index("}")]
            slots.setdefault(tag, set()).add(await client.cluster_keyslot(name))
        assert slots and all(len(found) == 1 for found in slots.values())
        # several buckets are in use, so the sessions spread over the cluster's masters
        assert len(slots) > 3
        stats = await store.count()
        assert stats.total == len(keys)
        assert len(await store.claim_due("expire", store.clock.now() + 10**9, 100)) == 0


async def test_native_expiry_is_only_a_backstop_after_purge_at(machine_store: RedisStore) -> None:
    clock = FakeClock()
    machine_store.clock = clock
    key = "web:user:gc"
    record = new_record(key, now=clock.now())
    record.version = 1
    await machine_store.commit(record, expected=0)
    row = f"{machine_store.layout.base(key)}:r"  # the current session's row is its pointer
    client = machine_store._client
    assert await client.pttl(row) == -1  # an active session never expires natively

    record.version = 2
    record.status = Status.CLOSED
    record.purge_at = clock.now() + 3600
    await machine_store.commit(record, expected=1)
    ttl = await client.pttl(row)
    margin = machine_store.gc_margin
    assert (3600 + margin - 5) * 1000 < ttl <= (3600 + margin) * 1000

    record.version = 3
    record.status = Status.ACTIVE
    record.purge_at = None
    await machine_store.commit(record, expected=2)
    assert await client.pttl(row) == -1


@pytest.mark.parametrize("name", ["redis", "redis_cluster"])
async def test_maintained_aggregates_match_a_full_recount(name: str) -> None:
    """The counters the commit script maintains (deltas) equal what a scan of the rows and
    what MemoryStore compute, through creations, changes, replacements and deletions."""
    from chatstate.model import FlowPosition
    from chatstate.stores.base import SessionFilter
    from chatstate.stores.memory import MemoryStore

    if name == "redis":
        require_service("Redis", "127.0.0.1", 6379)
    else:
        require_redis_binaries()
    reference = MemoryStore()
    async with BACKENDS[name]() as store:
        clock = FakeClock()
        store.clock = clock  # type: ignore[attr-defined]
        records: dict[str, SessionRecord] = {}
        for i in range(12):
            key = f"{('telegram', 'discord')[i % 2]}:user:{i}"
            record = new_record(key, now=clock.now())
            record.version = 1
            record.labels = {"tier": ("free", "paid")[i % 3 == 0]}
            for target in (store, reference):
                await target.commit(record, expected=0)
            records[key] = record
        for step, (key, record) in enumerate(sorted(records.items())):
            clock.advance(7.5)
            record.version += 1
            record.last_activity = clock.now()
            record.counters.messages += step + 1
            record.usage.input_tokens += 10 * step
            if step % 3 == 0:
                record.flow = FlowPosition(name="signup", step=("email", "name")[step % 2])
            if step % 4 == 1:
                record.status = Status.CLOSED
                record.close_reason = "goodbye"
            if step % 5 == 2:
                record.labels = {"tier": "trial"}
            for target in (store, reference):
                await target.commit(record, expected=record.version - 1)
            if step % 6 == 5:  # a new session replaces the finished one
                fresh = new_record(key, now=clock.now())
                fresh.version = record.version + 1
                for target in (store, reference):
                    await target.commit(fresh, expected=record.version)
                records[key] = fresh
        for key in ("telegram:user:0", "discord:user:7"):
            for target in (store, reference):
                assert await target.delete(key)

        expected = await reference.stats(labels=["tier"])
        assert expected.by_close_reason and expected.by_flow_step and expected.tokens
        assert len(expected.by_label["tier"]) == 3 and expected.total == 12  # +2 -2
        maintained = await store.stats(labels=["tier"])
        scanned = await store.stats(SessionFilter(updated_since=0.0), labels=["tier"])
        for got in (maintained, scanned):
            assert got.total == expected.total
            assert got.by_status == expected.by_status
            assert got.by_platform == expected.by_platform
            assert got.by_close_reason == expected.by_close_reason
            assert got.by_flow_step == expected.by_flow_step
            assert got.by_label == expected.by_label
            assert (got.messages, got.tokens) == (expected.messages, expected.tokens)
            assert got.avg_duration_seconds == pytest.approx(expected.avg_duration_seconds)
        only_closed = SessionFilter(status="closed", platform="telegram")
        assert (await store.count(only_closed)).total == (await reference.count(only_closed)).total


# -- leases and fencing -------------------------------------------------------------------------


async def test_an_expired_lease_cannot_overwrite_the_newer_record(
    machine_store: RedisStore,
) -> None:
    clock = FakeClock()
    machine_store.clock = clock
    key = "web:user:fence"
    await _update(machine_store, key, "a")
    slow, record = await machine_store.lease_and_load(key, "slow", 10.0)
    assert slow is not None and record is not None
    clock.advance(11.0)  # the slow handler outlives its lease
    fast = await _update(machine_store, key, "fast")
    record.version += 1
    record.data["slow"] = True
    with pytest.raises(LeaseLost):
        await machine_store.commit(record, expected=record.version - 1, lease=slow, release=True)
    stored = await machine_store.load(key)
    assert stored is not None and stored.version == fast.version and "slow" not in stored.data
    assert await machine_store.renew(slow, 10.0) is None


async def test_a_renewed_lease_keeps_out_other_owners(machine_store: RedisStore) -> None:
    clock = FakeClock()
    machine_store.clock = clock
    key = "web:user:renew"
    lease, _ = await machine_store.lease_and_load(key, "a", 10.0)
    assert lease is not None
    for _ in range(5):
        clock.advance(8.0)
        renewed = await machine_store.renew(lease, 10.0)
        assert renewed is not None and renewed.token == lease.token
        lease = renewed
        other, _ = await machine_store.lease_and_load(key, "b", 10.0)
        assert other is None
    record = new_record(key, now=clock.now())
    record.version = 1
    await machine_store.commit(record, expected=0, lease=lease, release=True)
    other, loaded = await machine_store.lease_and_load(key, "b", 10.0)
    assert other is not None and other.token > lease.token and loaded is not None


async def test_a_lease_taken_again_by_its_owner_fences_off_the_first(
    machine_store: RedisStore,
) -> None:
    """A second lease_and_load by the same owner (a retry whose first answer was lost) takes
    the lease over with a higher token; the first lease can no longer commit, renew or
    release it. Another owner stays out until the lease is released or expires."""
    clock = FakeClock()
    machine_store.clock = clock
    key = "web:user:again"
    first, _ = await machine_store.lease_and_load(key, "a", 10.0)
    second, _ = await machine_store.lease_and_load(key, "a", 10.0)
    assert first is not None and second is not None and second.token > first.token
    record = new_record(key, now=clock.now())
    record.version = 1
    with pytest.raises(LeaseLost):
        await machine_store.commit(record, expected=0, lease=first)
    assert await machine_store.renew(first, 10.0) is None
    await machine_store.release(first)  # not its lease any more: no effect
    assert (await machine_store.lease_and_load(key, "b", 10.0)) == (None, None)
    await machine_store.commit(record, expected=0, lease=second, release=True)
    third, loaded = await machine_store.lease_and_load(key, "b", 10.0)
    assert third is not None and third.token > second.token and loaded == record
    clock.advance(11.0)  # the lease expired by the store's clock: taken over
    fourth, _ = await machine_store.lease_and_load(key, "c", 10.0)
    assert fourth is not None and fourth.token > third.token
    with pytest.raises(LeaseLost):
        record.version = 2
        await machine_store.commit(record, expected=1, lease=third)


async def test_a_commit_whose_answer_was_lost_is_retried_once(machine_store: RedisStore) -> None:
    key = "web:user:retry"
    record = new_record(key, now=machine_store.clock.now())
    record.version = 1
    history = HistoryChanges(append=[Message(role="user", content="once", seq=1)])
    real = machine_store._evalsha
    commit_script = machine_store._scripts["COMMIT"]
    calls = []

    async def answer_lost_once(script: Any, keys: list[str], args: list[Any]) -> Any:
        result = await real(script, keys, args)  # the server applies the commit ...
        if script is not commit_script:
            return result
        calls.append(args[3])  # the commit mark (ARGV[4])
        if len(calls) == 1:  # ... but the answer never arrives
            raise redis_exceptions.ConnectionError("connection reset by peer")
        return result

    machine_store._evalsha = answer_lost_once  # type: ignore[method-assign]
    await machine_store.commit(record, expected=0, history=history)
    machine_store._evalsha = real  # type: ignore[method-assign]
    # Both attempts carried one mark, by which the retry recognised its own applied commit.
    assert len(calls) == 2 and calls[0] == calls[1] and len(calls[0]) >= 24
    assert await machine_store.count_messages(record.ref) == 1
    # A plain second attempt of the same commit is a stale commit, not a retry.
    with pytest.raises(ConflictError):
        await machine_store.commit(record, expected=0, history=history)
    assert await machine_store.count_messages(record.ref) == 1


async def test_a_lost_answer_of_a_commit_that_released_its_lease_is_recognised(
    machine_store: RedisStore,
) -> None:
    """The retry finds the lease released by its own first attempt: the mark, read only once
    the lease or version check fails, tells it that the commit was applied (not LeaseLost)."""
    key = "web:user:retry-release"
    lease, _ = await machine_store.lease_and_load(key, "me", 30.0)
    assert lease is not None
    record = new_record(key, now=machine_store.clock.now())
    record.version = 1
    real = machine_store._evalsha
    commit_script = machine_store._scripts["COMMIT"]
    attempts = 0

    async def answer_lost_once(script: Any, keys: list[str], args: list[Any]) -> Any:
        nonlocal attempts
        result = await real(script, keys, args)
        if script is commit_script:
            attempts += 1
            if attempts == 1:
                raise redis_exceptions.ConnectionError("connection reset by peer")
        return result

    machine_store._evalsha = answer_lost_once  # type: ignore[method-assign]
    try:
        await machine_store.commit(record, expected=0, lease=lease, release=True)
    finally:
        machine_store._evalsha = real  # type: ignore[method-assign]
    assert attempts == 2
    other, loaded = await machine_store.lease_and_load(key, "other", 30.0)
    assert other is not None and loaded is not None and loaded.version == 1  # released
    with pytest.raises(LeaseLost):  # the released lease itself commits nothing more
        record.version = 2
        await machine_store.commit(record, expected=1, lease=lease)


async def test_a_retry_never_mistakes_an_identical_commit_of_another_writer_for_its_own(
    machine_store: RedisStore,
) -> None:
    """Two writers that load one version and make the same change produce byte-identical
    records. When the first attempt of one is lost (never applied) and the other commits
    meanwhile, the retry must conflict: taking the other's write for its own loses an update."""
    key = "web:user:twins"
    base = new_record(key, now=machine_store.clock.now())
    base.version = 1
    await machine_store.commit(base, expected=0)
    twin = msgspec.structs.replace(base, version=2, data={"n": 1})
    other = RedisStore.from_url(REDIS_URL, prefix=machine_store.prefix)
    await other.open()
    real = machine_store._evalsha
    commit_script = machine_store._scripts["COMMIT"]
    attempts = 0

    async def lost_before_arrival(script: Any, keys: list[str], args: list[Any]) -> Any:
        nonlocal attempts
        if script is commit_script:
            attempts += 1
            if attempts == 1:  # this attempt never reaches the server; the other writer wins
                await other.commit(msgspec.structs.replace(twin), expected=1)
                raise redis_exceptions.ConnectionError("connection reset by peer")
        return await real(script, keys, args)

    machine_store._evalsha = lost_before_arrival  # type: ignore[method-assign]
    try:
        with pytest.raises(ConflictError):
            await machine_store.commit(twin, expected=1)
    finally:
        machine_store._evalsha = real  # type: ignore[method-assign]
        await other.close()
    assert attempts == 2


async def test_a_large_commit_is_one_atomic_script(machine_store: RedisStore) -> None:
    """5,000 messages (and summaries) in one commit: the script adds them in chunks (one
    unpack() of them all overflows Lua's stack) and they land whole, with the record."""
    key = "web:user:bulk"
    record = new_record(key, now=machine_store.clock.now())
    record.version = 1
    count = 5000
    history = HistoryChanges(
        append=[Message(role="user", content=f"m{i}", seq=i) for i in range(1, count + 1)],
        summaries=[Summary(start_seq=i, end_seq=i, content=f"s{i}") for i in range(1, 1201)],
    )
    await machine_store.commit(record, expected=0, history=history)
    assert await machine_store.load(key) == record
    assert await machine_store.count_messages(record.ref) == count
    assert [m.seq for m in await machine_store.read_tail(record.ref, 3)] == [4998, 4999, 5000]
    assert len(await machine_store.list_summaries(record.ref)) == 1200
    # A stale commit of the same size changes nothing.
    stale = msgspec.structs.replace(record, version=1, id="another-session")
    with pytest.raises(ConflictError):
        await machine_store.commit(stale, expected=0, history=history)
    assert await machine_store.count_messages(stale.ref) == 0


async def test_a_purge_time_in_the_past_keeps_the_keys_for_the_gc_margin(
    machine_store: RedisStore,
) -> None:
    """The native-expiry backstop never fires sooner than gc_margin from now, whatever the
    record's purge_at says: the lifecycle purges through the due index first."""
    key = "web:user:oldpurge"
    record = new_record(key, now=1_700_000_000.0)  # a session from long ago, already closed
    record.status = Status.CLOSED
    record.purge_at = 1_700_000_100.0
    record.version = 1
    await machine_store.commit(record, expected=0)
    pointer = f"{machine_store.layout.base(key)}:r"
    ttl = await machine_store._client.pttl(pointer)
    assert ttl > (machine_store.gc_margin - 60) * 1000
    assert await machine_store.load(key) == record


async def test_quarantine_moves_only_the_bytes_it_was_given(machine_store: RedisStore) -> None:
    key = "web:user:bad"
    record = new_record(key, now=machine_store.clock.now())
    record.version = 1
    await machine_store.commit(record, expected=0)
    pointer = f"{machine_store.layout.base(key)}:r"  # holds the current session's row
    await machine_store._client.hset(pointer, "b", b"{not json")
    with pytest.raises(CorruptRecordError) as bad:
        await machine_store.load(key)
    assert bad.value.raw == b"{not json"

    # Stale bytes (another writer already replaced the record): nothing is removed.
    await machine_store.quarantine(key, b"older bytes", "test")
    with pytest.raises(CorruptRecordError):
        await machine_store.load(key)

    await machine_store.quarantine(key, bad.value.raw, "not json")
    assert await machine_store.load(key) is None
    assert (await machine_store.count()).total == 0
    filed = await machine_store.list_quarantined()
    assert [(q["key"], q["raw"]) for q in filed] == [
        (key, b"{not json"), (key, b"older bytes")
    ]
    fresh = new_record(key, now=machine_store.clock.now())
    fresh.version = 1
    await machine_store.commit(fresh, expected=0)  # the key is free again


# -- faults -------------------------------------------------------------------------------------


async def test_server_killed_mid_stream_every_update_whole_or_unavailable(
    own_server: RedisServer,
) -> None:
    store = RedisStore.from_url(own_server.url + "?prefix=fault&socket_timeout=1&retries=1")
    await store.open()
    keys = [f"web:user:f{i}" for i in range(6)]
    acked = dict.fromkeys(keys, 0)
    unsure = dict.fromkeys(keys, 0)  # commits that raised StoreUnavailable: may or may not be in
    errors: list[BaseException] = []
    state = {"acked": 0, "failed": 0}
    enough_acked = asyncio.Event()
    enough_failed = asyncio.Event()
    back = asyncio.Event()
    done_after_restart = dict.fromkeys(keys, 0)

    async def writer(key: str) -> None:
        while done_after_restart[key] < 5:
            committing = False
            try:
                lease, record = await asyncio.wait_for(
                    store.lease_and_load(key, f"o-{key}", 30.0), CALL_BOUND
                )
                assert lease is not None
                expected = 0 if record is None else record.version
                if record is None:
                    record = new_record(key, now=store.clock.now())
                record.version = expected + 1
                record.counters.messages += 1
                record.counters.last_seq += 1
                message = Message(role="user", content="m", seq=record.counters.last_seq)
                committing = True
                await asyncio.wait_for(
                    store.commit(record, expected=expected, lease=lease, release=True,
                                 history=HistoryChanges(append=[message])),
                    CALL_BOUND,
                )
            except StoreUnavailable:
                state["failed"] += 1
                if state["failed"] >= 2 * len(keys):
                    enough_failed.set()
                if committing:
                    unsure[key] += 1
                await asyncio.sleep(0.01)
                continue
            except BaseException as exc:  # anything else (e.g. a hang) fails the test
                errors.append(exc)
                raise
            acked[key] += 1
            state["acked"] += 1
            if state["acked"] >= 60:
                enough_acked.set()
            if back.is_set():
                done_after_restart[key] += 1

    async def chaos() -> None:
        await enough_acked.wait()
        await asyncio.to_thread(own_server.stop)  # SIGKILL in the middle of the stream
        await enough_failed.wait()
        await asyncio.to_thread(own_server.start)
        back.set()

    await asyncio.wait_for(
        asyncio.gather(chaos(), *(writer(k) for k in keys)), 120.0
    )
    assert not errors
    # The same store object works again; every record is whole and consistent with its history.
    for key in keys:
        record = await store.load(key)
        assert record is not None, key
        count = record.counters.messages
        assert acked[key] <= count <= acked[key] + unsure[key]
        assert record.version == count
        assert await store.count_messages(record.ref) == count
        tail = await store.read_tail(record.ref, 3)
        assert [m.seq for m in tail] == list(range(count - len(tail) + 1, count + 1))
    await store.close()


async def test_hung_server_gives_unavailable_in_bounded_time_then_recovers(
    own_server: RedisServer,
) -> None:
    async with _opened(own_server, "?prefix=hang&socket_timeout=0.3&retries=0") as store:
        await _update(store, "web:user:h", "w")
        assert own_server.process is not None
        os.kill(own_server.process.pid, signal.SIGSTOP)  # answers nothing, connection stays up
        try:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.load("web:user:h"), CALL_BOUND)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(_update(store, "web:user:h", "w"), CALL_BOUND)
        finally:
            os.kill(own_server.process.pid, signal.SIGCONT)
        # At most one more commit may have landed (the one whose answer was lost).
        record = await _update(store, "web:user:h", "w")
        assert record.version in (2, 3)


async def test_scripts_reload_after_script_flush(own_server: RedisServer) -> None:
    # One connection: a reply left unread after the lost script (the record's read that
    # travels behind the lease script) would be taken for the next request's answer.
    async with _opened(own_server, "?prefix=noscript&max_connections=1") as store:
        await _update(store, "web:user:n", "w")
        own_server.cli("script", "flush")
        record = await _update(store, "web:user:n", "w")
        assert record.version == 2
        assert (await store.claim_due("expire", 0.0, 10)) == []
        own_server.cli("script", "flush")
        lease, loaded = await store.lease_and_load("web:user:n", "w", 30.0)
        assert lease is not None and loaded == record
        assert await store.load("web:user:n") == record


async def test_a_lease_refused_by_the_server_leaves_no_reply_unread(
    own_server: RedisServer,
) -> None:
    # The lease script fails (out of memory: it writes) while the read behind it succeeds; on
    # the store's one connection, that read's reply must not answer the next request.
    async with _opened(own_server, "?prefix=oom&max_connections=1&retries=0") as store:
        record = await _update(store, "web:user:o", "w")
        with _out_of_memory(own_server), pytest.raises(
            StoreUnavailable, match=r"refused.*out of memory"
        ):
            await store.lease_and_load("web:user:o", "w", 30.0)
        assert await store.load("web:user:o") == record
        assert (await _update(store, "web:user:o", "w")).version == 2


async def test_a_commit_refused_for_memory_is_unavailable_and_writes_nothing(
    own_server: RedisServer,
) -> None:
    # An out-of-memory server refuses the commit script at its first write: the caller gets
    # StoreUnavailable (which adapters answer in degraded mode), and the stored session, its
    # history and the indexes stay as they were, so the same commit goes through later.
    async with _opened(own_server, "?prefix=oom&retries=0") as store:
        before = await _update(store, "web:user:o", "w")
        lease, record = await store.lease_and_load("web:user:o", "w", 30.0)
        assert lease is not None and record is not None
        record.version = 2
        record.data["n"] = 1
        changes = HistoryChanges(append=[Message(role="user", content="x", seq=2, tokens=1)])
        with _out_of_memory(own_server):
            with pytest.raises(StoreUnavailable, match=r"refused.*out of memory"):
                await store.commit(record, expected=1, lease=lease, release=True,
                                   history=changes)
            assert await store.load("web:user:o") == before
            assert await store.count_messages(record.ref) == 1
            assert (await store.count()).total == 1
        await store.commit(record, expected=1, lease=lease, release=True, history=changes)
        assert (await store.load("web:user:o")).data == {"n": 1}  # type: ignore[union-attr]
        assert await store.count_messages(record.ref) == 2


async def test_a_server_busy_with_a_script_is_unavailable(own_server: RedisServer) -> None:
    # A script that runs past busy-reply-threshold makes the server answer BUSY to everyone.
    async with (
        aioredis.Redis.from_url(own_server.url) as blocker,
        _opened(own_server, "?prefix=busy&retries=0") as store,
    ):
        own_server.cli("config", "set", "busy-reply-threshold", "50")
        spin = ("local t = tonumber(redis.call('TIME')[1]) + 2 "
                "while tonumber(redis.call('TIME')[1]) < t do end")
        busy = asyncio.ensure_future(blocker.eval(spin, 0))
        await asyncio.sleep(0.3)
        with pytest.raises(StoreUnavailable, match=r"refused.*BUSY"):
            await store.load("web:user:b")
        await busy
        assert await store.load("web:user:b") is None


async def test_cluster_scripts_reload_after_script_flush() -> None:
    require_redis_binaries()
    async with BACKENDS["redis_cluster"]() as store:
        assert isinstance(store, RedisStore) and store.cluster
        await _update(store, "web:user:n", "w")
        await store._client.script_flush()  # on every primary
        record = await _update(store, "web:user:n", "w")
        assert record.version == 2
        await store._client.script_flush()
        lease, loaded = await store.lease_and_load("web:user:n", "w", 30.0)
        assert lease is not None and loaded == record


async def test_open_fails_fast_when_nothing_listens() -> None:
    require_redis_binaries()
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0?connect_timeout=0.5&retries=1")
    with pytest.raises(StoreUnavailable, match="did not answer"):
        await asyncio.wait_for(store.open(), CALL_BOUND)


# -- URLs ---------------------------------------------------------------------------------------


def test_url_options_are_parsed() -> None:
    store = open_store(
        "redis://127.0.0.1:6379/2?namespace=bot1&pool_size=7&timeout=1.5&connect_timeout=0.5"
        "&retries=4&format=msgpack&gc_margin=60"
    )
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.max_connections, store.socket_timeout) == ("bot1", 7, 1.5)
    assert (store.connect_timeout, store.retries, store.gc_margin) == (0.5, 4, 60.0)
    assert store.codec.format == "msgpack" and not store.cluster and store.shared
    cluster = open_store("redis+cluster://127.0.0.1:7000,127.0.0.1:7001?prefix=c&buckets=32")
    assert isinstance(cluster, RedisStore)
    assert cluster.cluster and cluster.layout.buckets == 32
    assert isinstance(open_store("rediss://example.invalid:6380/0"), RedisStore)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?colour=blue",
        "redis://127.0.0.1:6379/0?pool_size=many",
        "redis://127.0.0.1:6379/0?prefix=a{b}",
        "redis://127.0.0.1:6379/0?buckets=4",
        "redis+cluster://127.0.0.1:7000?buckets=0",
        "redis://127.0.0.1:6379/0?format=xml",
        "redis://127.0.0.1:6379/0?timeout=0",
    ],
)
def test_bad_url_options_say_what_to_do(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(url)


async def test_bad_cluster_node_list_is_a_configuration_error() -> None:
    store = RedisStore.from_url("redis+cluster://nohostport")
    with pytest.raises(ConfigurationError, match="host:port"):
        await store.open()


def test_requests_are_packed_as_redis_py_packs_them() -> None:
    """The store's connections pack requests with hiredis; the bytes on the wire are the ones
    redis-py's own packer writes (multi-word command names split, bytes kept, numbers as text),
    and what hiredis cannot pack goes through redis-py's packer."""
    from redis.asyncio.connection import Connection

    from chatstate.stores.redis import _PlainConnection

    ours, theirs = _PlainConnection(), Connection()
    for command in [
        ("EVALSHA", "ab12", 2, "p:{k}:r", b"p:{k}:s:", "1.5", 17, b"\x00\xffblob", "caf\u00e9"),
        ("SCRIPT LOAD", "return 1"),
        ("HGET", "p:{k}:r", "b"),
    ]:
        assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    odd = ("SET", "k", memoryview(b"view"))
    assert b"".join(ours.pack_command(*odd)) == b"".join(theirs.pack_command(*odd))


# -- history list ---------------------------------------------------------------------------------


async def test_history_with_gaps_and_out_of_order_appends_reads_in_seq_order(
    machine_store: RedisStore,
) -> None:
    """The history list finds positions by seq without assuming contiguous seqs (binary search
    when the guess misses), and an append older than the newest stored message (which the
    engine never writes) is merged in order instead of breaking the list's order."""
    store = machine_store
    record = new_record("web:user:gaps", now=store.clock.now())
    record.version = 1

    def msgs(*seqs: int) -> list[Message]:
        return [Message(role="user", content=f"m{s}", seq=s) for s in seqs]

    await store.commit(record, expected=0, history=HistoryChanges(append=msgs(1, 2, 5, 9, 10)))
    ref = record.ref
    assert [m.seq for m in await store.read_range(ref, 3, 9)] == [5, 9]
    assert [m.seq for m in await store.read_range(ref, 6, 8)] == []
    assert [m.seq for m in await store.read_tail(ref, 2, before_seq=9)] == [2, 5]
    assert [m.seq for m in await store.read_tail(ref, 10, before_seq=6)] == [1, 2, 5]
    record.version = 2
    await store.commit(record, expected=1, history=HistoryChanges(append=msgs(3, 11)))
    assert [m.seq for m in await store.read_tail(ref, 100)] == [1, 2, 3, 5, 9, 10, 11]
    record.version = 3
    await store.commit(record, expected=2, history=HistoryChanges(drop_messages_through=4))
    assert [m.seq for m in await store.read_tail(ref, 100)] == [5, 9, 10, 11]
    assert await store.count_messages(ref) == 4
    with pytest.raises(InvalidDataError):
        record.version = 4
        await store.commit(record, expected=3, history=HistoryChanges(append=msgs(1 << 32)))


async def test_history_costs_a_few_bytes_per_message_over_its_packed_form(
    machine_store: RedisStore,
) -> None:
    store = machine_store
    record = new_record("web:user:compact", now=store.clock.now())
    record.version = 1
    messages = [
        Message(role="user" if i % 2 else "assistant", content=f"message {i} " + "x" * 150,
                seq=i, tokens=40)
        for i in range(1, 1001)
    ]
    await store.commit(record, expected=0, history=HistoryChanges(append=messages))
    packed = sum(len(store.codec.pack_message(m)) for m in messages)
    used = await store._client.memory_usage(f"{store.layout.base(record.key)}:h:{record.id}")
    assert used < packed * 1.1  # a sorted set took about 100 bytes more per message


# -- listing index of minutes --------------------------------------------------------------------


@pytest.mark.parametrize("budget", [2000, 3])
async def test_listing_is_exact_within_and_across_minutes(
    machine_store: RedisStore, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """The listing index holds sessions at their minute; pages, cursors and the time filters
    still follow the exact last_activity (then id), also when a scan call stops inside a
    minute (a small budget) and when a session moves to a later minute."""
    import chatstate.stores.redis as redis_module
    from chatstate.stores.base import SessionFilter

    monkeypatch.setattr(redis_module, "SCAN_BUDGET", budget)
    store = machine_store
    clock = FakeClock(start=1_800_000_000.0)
    store.clock = clock
    t0 = clock.now()
    records = []
    for i, offset in enumerate([5, 61, 7, 7, 200, 119, 120, 0.5, 59.9, 60, 130, 7]):
        record = new_record(f"web:user:minute{i}", now=t0)
        record.version = 1
        record.last_activity = t0 + offset
        await store.commit(record, expected=0)
        records.append(record)
    moved = records[0]  # a later message: into a later minute
    moved.version = 2
    moved.last_activity = t0 + 185
    await store.commit(moved, expected=1)
    mine = {r.id for r in records}

    def expected(since: float | None = None, before: float | None = None) -> list[str]:
        chosen = [r for r in records
                  if (since is None or r.last_activity >= since)
                  and (before is None or r.last_activity < before)]
        return [r.id for r in sorted(chosen, key=lambda r: (-r.last_activity, r.id))]

    async def listed(flt: SessionFilter | None, limit: int) -> list[str]:
        ids: list[str] = []
        cursor = None
        while True:
            page = await store.list(flt, limit=limit, cursor=cursor)
            ids += [r.id for r in page.items if r.id in mine]
            cursor = page.next_cursor
            if cursor is None:
                return ids

    for limit in (1, 3, 5, 100):
        assert await listed(None, limit) == expected()
    windows = [(t0 + 7, None), (t0 + 59.9, t0 + 120), (None, t0 + 60), (t0 + 7.5, t0 + 8)]
    for since, before in windows:
        flt = SessionFilter(updated_since=since, updated_before=before)
        assert await listed(flt, 2) == expected(since, before)
        assert (await store.count(flt)).total == len(expected(since, before))


async def test_requests_beyond_the_pool_size_wait_for_a_connection() -> None:
    """The pool does not wait by itself (redis-py's plain pool fails when full): the store
    queues requests beyond max_connections instead of failing them."""
    require_service("Redis", "127.0.0.1", 6379)
    store = RedisStore.from_url(REDIS_URL + f"?prefix=pool{os.getpid()}&max_connections=2")
    await store.open()
    try:
        results = await asyncio.gather(*(_update(store, f"web:user:p{i}", "w") for i in range(40)))
        assert [r.version for r in results] == [1] * 40
        assert len(store._client.connection_pool._available_connections) <= 2
    finally:
        for i in range(40):
            await store.delete(f"web:user:p{i}")
        await store.close()
