"""Listing with filters and cursors; counts and aggregates."""

from __future__ import annotations

import pytest

from chatstate.errors import ChatstateError
from chatstate.model import Counters, FlowPosition, Status, Usage
from chatstate.stores.base import SessionFilter, Store
from conformance.helpers import T0, bump, make


async def _population(store: Store) -> list:
    """15 records across two platforms, statuses and flows, distinct activity times, plus
    three that share one last_activity (ties are ordered by id)."""
    records = []
    for i in range(15):
        platform = "telegram" if i % 3 else "discord"
        status = Status.CLOSED if i % 5 == 0 else Status.ACTIVE
        record = make(
            f"{platform}:user:lst{i}",
            last_activity=T0 + i * 10,
            created_at=T0 + i * 10 - 100,
            status=status,
            close_reason="goodbye" if status is Status.CLOSED else None,
            flow=FlowPosition(name="signup", step="email" if i % 2 else "name") if i < 6 else None,
            labels={"tier": "pro" if i % 4 == 0 else "free"},
            counters=Counters(messages=i),
            usage=Usage(input_tokens=i, output_tokens=1),
        )
        await store.commit(record, expected=0)
        records.append(record)
    for j in range(3):
        record = make(f"web:chat:tie{j}", last_activity=T0 + 1000, created_at=T0 + 900)
        await store.commit(record, expected=0)
        records.append(record)
    return records


def _order(records: list) -> list[str]:
    return [r.id for r in sorted(records, key=lambda r: (-r.last_activity, r.id))]


async def _all_pages(store: Store, f: SessionFilter | None, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        page = await store.list(f, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        ids += [r.id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("the cursor never ended")


async def test_list_pages_return_every_record_once_in_order(store: Store) -> None:
    records = await _population(store)
    for limit in (1, 4, 7, 100):
        assert await _all_pages(store, None, limit) == _order(records)


async def test_list_filters(store: Store) -> None:
    records = await _population(store)
    cases = [
        (SessionFilter(status="closed"), lambda r: r.status is Status.CLOSED),
        (SessionFilter(platform="discord"), lambda r: r.platform == "discord"),
        (SessionFilter(scope="chat"), lambda r: r.scope == "chat"),
        (SessionFilter(flow="signup", step="email"), lambda r: r.flow and r.flow.step == "email"),
        (
            SessionFilter(updated_since=T0 + 50, updated_before=T0 + 120),
            lambda r: T0 + 50 <= r.last_activity < T0 + 120,
        ),
        (
            SessionFilter(key_prefix="telegram:user:lst1"),
            lambda r: r.key.startswith("telegram:user:lst1"),
        ),
        (
            SessionFilter(platform="telegram", status="active"),
            lambda r: r.platform == "telegram" and r.status is Status.ACTIVE,
        ),
    ]
    for f, wanted in cases:
        expected = _order([r for r in records if wanted(r)])
        assert expected, f
        assert await _all_pages(store, f, 3) == expected, f


async def test_list_returns_full_records(store: Store) -> None:
    records = await _population(store)
    page = await store.list(SessionFilter(key_prefix="discord:user:lst3"), limit=5)
    assert page.items == [r for r in records if r.key == "discord:user:lst3"]


async def test_bad_cursor_is_a_typed_error(store: Store) -> None:
    with pytest.raises(ChatstateError, match="cursor"):
        await store.list(cursor="not a cursor!")


async def test_count_and_stats(store: Store) -> None:
    records = await _population(store)
    stats = await store.count()
    assert stats.total == len(records)
    assert stats.by_status == {"active": 15, "closed": 3}
    assert stats.by_platform == {"telegram": 10, "discord": 5, "web": 3}
    narrowed = await store.count(SessionFilter(platform="discord"))
    assert narrowed.total == 5
    assert narrowed.by_status == {"closed": 1, "active": 4}

    full = await store.stats(labels=["tier", "missing"])
    assert full.total == len(records)
    assert full.by_close_reason == {"goodbye": 3}
    assert full.by_flow_step == {"signup:email": 2, "signup:name": 2}  # active ones only
    assert full.by_label == {"tier": {"pro": 4, "free": 11}, "missing": {}}
    assert full.messages == sum(range(15))
    assert full.tokens == sum(range(15)) + 15
    assert full.avg_duration_seconds == pytest.approx((15 * 100 + 3 * 100) / 18)
    assert (await store.stats(SessionFilter(status="closed"))).total == 3


async def test_unreadable_records_are_skipped_by_listing(store: Store) -> None:
    from conformance.helpers import put_raw

    good = make("test:user:good", last_activity=T0 + 1)
    bad = make("test:user:bad", last_activity=T0 + 2)
    await store.commit(good, expected=0)
    await store.commit(bad, expected=0)
    await put_raw(store, bad.key, b'["not", "a", "record"]')
    assert [r.id for r in (await store.list()).items] == [good.id]
    updated = bump(good)
    await store.commit(updated, expected=1)
    assert (await store.list()).items == [updated]
