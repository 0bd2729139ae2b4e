"""The due index: deadlines claimed atomically, never handed to two claimers."""

from __future__ import annotations

import asyncio
import contextlib

from backends import PEERS
from chatstate.model import Status
from chatstate.stores.base import Store
from conformance.helpers import T0, bump, make, unique_key


async def _due_sessions(store: Store, count: int, *, at: float, kind: str = "expire") -> set[str]:
    ids = set()
    for _ in range(count):
        fields = {"expires_at": at} if kind == "expire" else {"warn_at": at, "expires_at": at + 60}
        record = make(unique_key(), **fields)
        await store.commit(record, expected=0)
        ids.add(record.id)
    return ids


async def test_claim_returns_due_entries_only(store: Store) -> None:
    due = await _due_sessions(store, 3, at=T0 + 10)
    later = await _due_sessions(store, 2, at=T0 + 1000)
    assert await store.claim_due("expire", T0 + 9.5, 10) == []
    items = await store.claim_due("expire", T0 + 10, 10)
    assert {i.session_id for i in items} == due
    assert all(i.kind == "expire" and i.due_at == T0 + 10 for i in items)
    assert {i.key for i in items} == {(await store.load_by_id(i.session_id)).key for i in items}  # type: ignore[union-attr]
    assert not due & later


async def test_claim_respects_limit_and_kind(store: Store) -> None:
    expiring = await _due_sessions(store, 5, at=T0 + 1)
    warned = await _due_sessions(store, 2, at=T0 + 1, kind="warn")
    first = await store.claim_due("expire", T0 + 2, 3)
    second = await store.claim_due("expire", T0 + 2, 10)
    assert len(first) == 3
    assert {i.session_id for i in first} | {i.session_id for i in second} == expiring
    assert not {i.session_id for i in first} & {i.session_id for i in second}
    assert {i.session_id for i in await store.claim_due("warn", T0 + 2, 10)} == warned


async def test_claimed_entries_come_back_after_claim_seconds(store: Store) -> None:
    ids = await _due_sessions(store, 2, at=T0 + 5)
    claimed = await store.claim_due("expire", T0 + 5, 10, claim_seconds=30)
    assert {i.session_id for i in claimed} == ids
    assert await store.claim_due("expire", T0 + 20, 10) == []  # still claimed
    again = await store.claim_due("expire", T0 + 36, 10, claim_seconds=30)
    assert {i.session_id for i in again} == ids  # the claimer crashed: they come back


async def test_commit_rewrites_and_closing_removes_entries(store: Store) -> None:
    key = unique_key()
    record = make(key, expires_at=T0 + 10, warn_at=T0 + 5)
    await store.commit(record, expected=0)
    # A new message moves both deadlines later: nothing is due at the old times.
    record = bump(record, expires_at=T0 + 100, warn_at=T0 + 95)
    await store.commit(record, expected=1)
    assert await store.claim_due("warn", T0 + 50, 10) == []
    assert await store.claim_due("expire", T0 + 50, 10) == []
    # ... and it becomes due at the new times.
    assert [i.session_id for i in await store.claim_due("warn", T0 + 95, 10)] == [record.id]
    # Moving a deadline earlier also works.
    record = bump(record, expires_at=T0 + 60, warn_at=None)
    await store.commit(record, expected=2)
    assert [i.due_at for i in await store.claim_due("expire", T0 + 61, 10)] == [T0 + 60]
    # A claimed entry is rewritten by the next commit: closing removes warn and expire and
    # schedules the purge.
    record = bump(record, status=Status.CLOSED, close_reason="timeout", purge_at=T0 + 500)
    await store.commit(record, expected=3)
    assert await store.claim_due("expire", T0 + 1000, 10) == []
    assert await store.claim_due("warn", T0 + 1000, 10) == []
    purged = await store.claim_due("purge", T0 + 1000, 10)
    assert [(i.key, i.session_id, i.due_at) for i in purged] == [(key, record.id, T0 + 500)]


async def test_replaced_session_keeps_its_purge_entry(store: Store) -> None:
    key = unique_key()
    old = make(key, status=Status.CLOSED, close_reason="goodbye", purge_at=T0 + 100)
    await store.commit(old, expected=0)
    new = make(key, version=2, expires_at=T0 + 50)
    await store.commit(new, expected=1)
    assert [i.session_id for i in await store.claim_due("expire", T0 + 200, 10)] == [new.id]
    assert [i.session_id for i in await store.claim_due("purge", T0 + 200, 10)] == [old.id]


async def test_concurrent_claimers_never_share_an_item(store: Store, store_name: str) -> None:
    ids = await _due_sessions(store, 60, at=T0 + 1)
    async with contextlib.AsyncExitStack() as stack:
        instances = [store]
        if store.shared and store_name in PEERS:
            for _ in range(2):
                instances.append(await stack.enter_async_context(PEERS[store_name](store)))

        async def claimer(instance: Store) -> list[str]:
            got: list[str] = []
            while True:
                batch = await instance.claim_due("expire", T0 + 2, 4, claim_seconds=300)
                if not batch:
                    return got
                got += [i.session_id for i in batch]
                await asyncio.sleep(0)

        results = await asyncio.gather(*(claimer(instances[i % len(instances)]) for i in range(8)))
    claimed = [sid for got in results for sid in got]
    assert len(claimed) == len(set(claimed))  # nobody got an item twice
    assert set(claimed) == ids
