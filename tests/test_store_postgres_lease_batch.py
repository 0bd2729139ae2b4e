"""PostgresStore lease batching: while `_lease_slots` lease statements run, further
lease_and_load calls wait and go out together in one statement. Every caller gets the answer a
statement of its own would give: its lease (with a token of its own) and record, or (None,
None) when another owner holds the key; a key asked twice waits for the next batch; a caller
that gives up leaves no lease behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from backends import POSTGRES_URL, drop_postgres_schema, require_postgres
from chatstate.model import new_record
from chatstate.stores.postgres import PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store() -> AsyncIterator[PostgresStore]:
    require_postgres()
    schema = f"cs_test_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(POSTGRES_URL)
    # pool_max_size=4: one lease statement at a time, so concurrent calls are batched.
    url = urlunsplit(parts._replace(query=f"schema={schema}&pool_max_size=4"))
    s = PostgresStore.from_url(url)
    await s.open()
    assert s._lease_slots == 1
    try:
        yield s
    finally:
        await s.close()
        await drop_postgres_schema(schema)


def _count_batches(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = store._lease_batch

    async def counting(batch: list[Any]) -> None:
        sizes.append(len(batch))
        await real(batch)

    monkeypatch.setattr(store, "_lease_batch", counting)
    return sizes


async def _create(store: PostgresStore, key: str, n: int) -> None:
    lease, record = await store.lease_and_load(key, "creator", 30.0)
    assert lease is not None and record is None
    record = new_record(key, now=1000.0)
    record.data["n"] = n
    record.version = 1
    await store.commit(record, expected=0, lease=lease, release=True)


async def test_concurrent_leases_go_out_together_each_with_its_own_answer(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"telegram:user:{i}" for i in range(40)]
    for i, key in enumerate(keys[:20]):  # half the keys have a stored session
        await _create(store, key, i)
    held = keys[20]
    assert (await store.lease_and_load(held, "someone else", 30.0))[0] is not None
    sizes = _count_batches(store, monkeypatch)

    answers = await asyncio.gather(*(store.lease_and_load(k, "worker", 30.0) for k in keys))

    assert sizes and max(sizes) > 1 and sum(sizes) == len(keys) - 1  # the first went alone
    tokens = set()
    for i, (key, (lease, record)) in enumerate(zip(keys, answers, strict=True)):
        if key == held:
            assert (lease, record) == (None, None)
            continue
        assert lease is not None and lease.key == key and lease.owner == "worker"
        tokens.add(lease.token)
        if i < 20:
            assert record is not None and record.key == key and record.data["n"] == i
        else:
            assert record is None
    assert len(tokens) == len(keys) - 1  # every lease its own token


async def test_a_key_asked_twice_in_one_batch_is_leased_once(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _count_batches(store, monkeypatch)
    calls = [
        store.lease_and_load("telegram:user:first", "a", 30.0),  # goes alone
        store.lease_and_load("telegram:user:1", "a", 30.0),
        store.lease_and_load("telegram:user:1", "b", 30.0),
        store.lease_and_load("telegram:user:2", "a", 30.0),
    ]
    answers = await asyncio.gather(*calls)
    assert sizes == [2, 1]  # the second ask of telegram:user:1 waited for the next batch
    assert answers[1][0] is not None and answers[3][0] is not None
    assert answers[2] == (None, None)  # "a" holds it: "b" is refused


async def test_a_caller_that_gives_up_leaves_no_lease(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _count_batches(store, monkeypatch)
    first = asyncio.ensure_future(store.lease_and_load("telegram:user:first", "a", 30.0))
    waiting = asyncio.ensure_future(store.lease_and_load("telegram:user:1", "a", 30.0))
    await asyncio.sleep(0)  # both started: the second waits for the first's statement
    waiting.cancel()
    assert (await first)[0] is not None
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.gather(*store._flushes)
    assert sizes == []  # it was dropped before any statement took it
    lease, _ = await store.lease_and_load("telegram:user:1", "b", 30.0)
    assert lease is not None  # nobody holds it


async def test_a_caller_that_gives_up_while_its_batch_runs_frees_its_lease(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store._lease_batch
    callers: list[asyncio.Future[Any]] = []

    async def cancelling(batch: list[Any]) -> None:
        task = asyncio.ensure_future(real(batch))
        await asyncio.sleep(0)  # the statement is on its way
        callers[1].cancel()
        await task

    monkeypatch.setattr(store, "_lease_batch", cancelling)
    callers.append(asyncio.ensure_future(store.lease_and_load("telegram:user:first", "a", 30.0)))
    callers.append(asyncio.ensure_future(store.lease_and_load("telegram:user:1", "a", 30.0)))
    assert (await callers[0])[0] is not None
    with pytest.raises(asyncio.CancelledError):
        await callers[1]
    while store._flushes:  # the batch, then the release of the abandoned lease
        await asyncio.gather(*store._flushes)
    lease, _ = await store.lease_and_load("telegram:user:1", "b", 30.0)
    assert lease is not None  # released: another owner takes it at once
