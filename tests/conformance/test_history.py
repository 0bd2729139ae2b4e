"""History and summaries: written atomically with the record, read without scanning."""

from __future__ import annotations

import pytest

from chatstate.errors import ConflictError
from chatstate.model import HistoryChanges, Message
from chatstate.stores.base import Store
from conformance.helpers import appended, bump, make, messages, summary, unique_key


async def _conversation(store: Store, count: int) -> tuple[str, object]:
    key = unique_key()
    record = make(key)
    await store.commit(record, expected=0, history=appended(*(f"m{i}" for i in range(1, 6))))
    version = 1
    seq = 5
    while seq < count:  # more commits, a few messages each
        n = min(7, count - seq)
        record = bump(record)
        await store.commit(
            record, expected=version,
            history=HistoryChanges(append=messages(*(f"m{seq + i}" for i in range(1, n + 1)),
                                                   start=seq + 1)),
        )
        version += 1
        seq += n
    return key, record


async def test_history_order_tail_range_and_count(store: Store) -> None:
    _, record = await _conversation(store, 40)
    ref = record.ref  # type: ignore[attr-defined]
    assert await store.count_messages(ref) == 40
    tail = await store.read_tail(ref, 3)
    assert [m.seq for m in tail] == [38, 39, 40]
    assert [m.content for m in tail] == ["m38", "m39", "m40"]
    assert [m.seq for m in await store.read_tail(ref, 100)] == list(range(1, 41))
    assert await store.read_tail(ref, 0) == []
    assert [m.seq for m in await store.read_range(ref, 10, 13)] == [10, 11, 12, 13]
    assert await store.read_range(ref, 41, 50) == []


async def test_before_seq_pages_back_through_history(store: Store) -> None:
    _, record = await _conversation(store, 23)
    ref = record.ref  # type: ignore[attr-defined]
    seen: list[int] = []
    before: int | None = None
    while True:
        page = await store.read_tail(ref, 5, before_seq=before)
        if not page:
            break
        assert [m.seq for m in page] == sorted(m.seq for m in page)
        seen = [m.seq for m in page] + seen
        before = page[0].seq
    assert seen == list(range(1, 24))


async def test_message_fields_round_trip(store: Store) -> None:
    key = unique_key()
    record = make(key)
    message = Message(
        role="assistant", content=[{"type": "text", "text": "hi"}], seq=1, name="bot",
        tool_calls=[{"id": "c1", "name": "lookup"}], turn_id="t1", metadata={"lang": "en"},
        created_at=5.0, tokens=7, usage={"input_tokens": 3},
    )
    await store.commit(record, expected=0, history=HistoryChanges(append=[message]))
    assert await store.read_tail(record.ref, 1) == [message]


async def test_conflicting_commit_appends_nothing(store: Store) -> None:
    key = unique_key()
    record = make(key)
    await store.commit(record, expected=0, history=appended("one"))
    with pytest.raises(ConflictError):
        await store.commit(bump(record, version=5), expected=3, history=appended("two", start=2))
    assert [m.content for m in await store.read_tail(record.ref, 10)] == ["one"]


async def test_drop_messages_and_summaries(store: Store) -> None:
    key = unique_key()
    record = make(key)
    await store.commit(record, expected=0, history=appended(*(f"m{i}" for i in range(1, 11))))
    record = bump(record)
    await store.commit(
        record, expected=1,
        history=HistoryChanges(
            summaries=[summary(1, 6, "first six"), summary(1, 3, "first three")],
            drop_messages_through=6,
        ),
    )
    assert await store.count_messages(record.ref) == 4
    assert [m.seq for m in await store.read_tail(record.ref, 10)] == [7, 8, 9, 10]
    assert await store.read_range(record.ref, 1, 6) == []
    assert [(s.end_seq, s.content) for s in await store.list_summaries(record.ref)] == [
        (3, "first three"), (6, "first six"),
    ]
    # Dropping summaries and adding new ones in one commit: the new ones stay.
    record = bump(record)
    await store.commit(
        record, expected=2,
        history=HistoryChanges(drop_summaries=True, summaries=[summary(1, 8, "first eight")]),
    )
    assert [s.content for s in await store.list_summaries(record.ref)] == ["first eight"]


async def test_search_messages_finds_words_newest_first(store: Store) -> None:
    key = unique_key()
    record = make(key)
    texts = ["the cat sat", "a dog barked", "Cat and dog", "nothing here", "the CAT again"]
    await store.commit(record, expected=0, history=appended(*texts))
    found = await store.search_messages(record.ref, "cat")
    assert [m.content for m in found] == ["the CAT again", "Cat and dog", "the cat sat"]
    assert [m.content for m in await store.search_messages(record.ref, "dog cat")] == [
        "Cat and dog"
    ]
    assert len(await store.search_messages(record.ref, "cat", limit=1)) == 1
    assert await store.search_messages(record.ref, "zebra") == []
