"""RedisStore's hot path, written for the server's per-element costs (see
redis_scripts.COMMIT and LEASE_AND_LOAD), keeps the protocol's meaning:

* due positions compare as strings when both times have ten integer digits, else as numbers:
  a due entry still moves exactly when the new due time is earlier than its position;
* the commit compares the lease field whole, and falls back to the stored lease when it
  differs (a renewal whose answer was lost), so a valid lease is never refused and a lost
  one never accepted;
* a lease on a key without a session expires a day after the lease, without that backstop
  travelling as an argument.
"""

from __future__ import annotations

import pytest

from chatstate.errors import LeaseLost
from chatstate.model import SessionRecord, new_record
from chatstate.stores.base import Lease
from chatstate.stores.redis import POINTER_BACKSTOP, RedisStore, _us

pytestmark = pytest.mark.redis


@pytest.fixture
def store(redis_store: RedisStore) -> RedisStore:
    return redis_store  # (conftest: standalone and Cluster, on a fake clock)


async def _expire_position(store: RedisStore, record: SessionRecord) -> float | None:
    name = store.layout.index(store.layout.bucket(record.key), "due:expire")
    score: float | None = await store._client.zscore(name, f"{record.key} {record.id}")
    return score


# (new expires_at, where the due entry sits afterwards): it moves only to an earlier time.
TEN_DIGITS = [
    (1795275398.5, 1795275398.5),
    (1795275398.75, 1795275398.5),  # later, longer string: stays
    (1795275398.25, 1795275398.25),  # earlier, same length
    (1795275399.0, 1795275398.25),  # later, shorter string
    (1795275397.999, 1795275397.999),  # earlier, longer string
    (1795275397.5, 1795275397.5),
]
MIXED = [  # a position or a new time without ten integer digits compares as numbers
    (999999999.5, 999999999.5),
    (1795275398.5, 999999999.5),  # later, though "1..." < "9..." as strings
    (12345.25, 12345.25),
    (99999.0, 12345.25),  # later, though "9" > "1" as strings
    (1700000000.125, 12345.25),
    (5.5, 5.5),
]


@pytest.mark.parametrize("steps", [TEN_DIGITS, MIXED], ids=["ten-digits", "mixed"])
async def test_a_due_entry_moves_only_to_an_earlier_time(
    store: RedisStore, steps: list[tuple[float, float]]
) -> None:
    key = "web:user:due1"
    record = new_record(key, now=store.clock.now())
    for version, (expires_at, position) in enumerate(steps, start=1):
        record.version = version
        record.expires_at = expires_at
        await store.commit(record, expected=version - 1)
        assert await _expire_position(store, record) == position, (version, expires_at)
    # The lazy entry still hands the session out at its real due time, and only then.
    final = steps[-1][0]
    assert await store.claim_due("expire", final - 0.001, 10) == []
    items = await store.claim_due("expire", final, 10)
    assert [(i.key, i.due_at) for i in items] == [(key, final)]


async def test_a_lease_renewed_without_the_answer_still_commits(store: RedisStore) -> None:
    key = "web:user:renew1"
    lease, _ = await store.lease_and_load(key, "me", 30.0)
    assert lease is not None
    store.clock.advance(10)  # type: ignore[attr-defined]
    # A renewal the server applied but whose answer was lost: the client keeps the old lease,
    # so the stored lease field differs from the one the commit expects.
    renewed = await store.renew(lease, 60.0)
    assert renewed is not None and renewed.expires_at != lease.expires_at
    record = new_record(key, now=store.clock.now())
    record.version = 1
    await store.commit(record, expected=0, lease=lease)
    assert await store.load(key) == record
    # Past the old expiry, but within the renewed one: still the stored lease decides.
    store.clock.advance(30)  # type: ignore[attr-defined]
    record.version = 2
    await store.commit(record, expected=1, lease=lease, release=True)
    pointer = f"{store.layout.base(key)}:r"
    assert await store._client.hget(pointer, "l") == f"{'0' * 17}{lease.token}:me".encode()


async def test_a_lease_run_out_or_taken_is_refused(store: RedisStore) -> None:
    key = "web:user:lost1"
    lease, _ = await store.lease_and_load(key, "me", 30.0)
    assert lease is not None
    record = new_record(key, now=store.clock.now())
    record.version = 1
    store.clock.advance(30)  # type: ignore[attr-defined]  # exactly the expiry: run out
    with pytest.raises(LeaseLost):
        await store.commit(record, expected=0, lease=lease)
    other, _ = await store.lease_and_load(key, "other", 30.0)
    assert other is not None
    # Our lease as if it still ran by our clock: the key is another's now.
    ours = Lease(key=key, owner="me", token=lease.token, expires_at=store.clock.now() + 20)
    with pytest.raises(LeaseLost):
        await store.commit(record, expected=0, lease=ours)
    await store.commit(record, expected=0, lease=other, release=True)
    assert await store.load(key) == record


async def test_a_lease_on_a_key_without_session_expires_a_day_after_it(
    store: RedisStore,
) -> None:
    key = "web:user:bare1"
    lease, record = await store.lease_and_load(key, "me", 30.0)
    assert lease is not None and record is None and lease.token == 1
    pointer = f"{store.layout.base(key)}:r"
    assert await store._client.hget(pointer, "l") == f"{_us(lease.expires_at)}1:me".encode()
    ttl = await store._client.pttl(pointer)
    assert (POINTER_BACKSTOP + 30.0) * 1000 - 10_000 < ttl <= (POINTER_BACKSTOP + 30.0) * 1000
    again, _ = await store.lease_and_load(key, "me", 30.0)  # the same owner takes it again
    assert again is not None and again.token == 2
