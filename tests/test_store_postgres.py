"""PostgresStore beyond the conformance suite: round trips per update, faults (terminated
backends, timeouts, an unreachable server), migrations, leases with fencing, SKIP LOCKED claims,
full-text search and URL options. Real server only (tests/backends.POSTGRES_URL); each test uses
a schema of its own, dropped afterwards."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from backends import POSTGRES_URL, require_postgres
from chatstate.clock import FakeClock
from chatstate.errors import (
    ConfigurationError,
    ConflictError,
    LeaseLost,
    SchemaError,
    StoreUnavailable,
)
from chatstate.model import HistoryChanges, Message, SessionRecord, new_record
from chatstate.stores import open_store
from chatstate.stores import postgres_schema as schema_sql
from chatstate.stores.base import SessionFilter
from chatstate.stores.postgres import (
    PostgresStore,
    _fast_arguments,
    _init_connection,
    upgrade,
)
from relay import Side, TcpRelay

pytestmark = pytest.mark.postgres


def store_url(schema: str, port: int | None = None, **options: Any) -> str:
    parts = urlsplit(POSTGRES_URL)
    netloc = parts.netloc
    if port is not None:
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{port}"
    query = "&".join([f"schema={schema}", *(f"{k}={v}" for k, v in options.items())])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@pytest.fixture
async def store(schema: str) -> AsyncIterator[PostgresStore]:
    """An opened PostgresStore on the test's own schema."""
    opened = PostgresStore.from_url(store_url(schema))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def admin() -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for inspecting and sabotaging the server."""
    require_postgres()
    conn = await asyncpg.connect(POSTGRES_URL, server_settings={"application_name": "cs-admin"})
    yield conn
    await conn.close()


async def one_update(store: PostgresStore, key: str, owner: str = "worker") -> SessionRecord:
    """What the engine does for one message: lease-and-load, change, commit-and-release with
    one history message (a counter in `data` and the history length must stay equal)."""
    lease, record = await store.lease_and_load(key, owner, 30.0)
    assert lease is not None, "the lease should be free"
    expected = 0 if record is None else record.version
    if record is None:
        record = new_record(key, now=1000.0)
    record.data["n"] = record.data.get("n", 0) + 1
    record.counters.messages += 1
    record.counters.last_seq += 1
    record.version = expected + 1
    message = Message(role="user", content=f"message {record.data['n']}",
                      seq=record.counters.last_seq)
    await store.commit(record, expected=expected, lease=lease, release=True,
                       history=HistoryChanges(append=[message]))
    return record


# -- round trips ------------------------------------------------------------------------------


class CountingProxy(TcpRelay):
    """A TCP relay to PostgreSQL that counts round trips: each time the client speaks after
    the server did (or first) on one connection, that is one client turn, however many
    packets it takes."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.turns = 0

    async def on_data(self, side: Side, data: bytes, link: dict[str, Any]) -> None:
        if side == "client" and link.get("last") != "client":
            self.turns += 1
        link["last"] = side


async def test_an_update_costs_two_round_trips(schema: str) -> None:
    parts = urlsplit(POSTGRES_URL)
    async with CountingProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        store = PostgresStore.from_url(
            store_url(schema, port=proxy.port, pool_min_size=1, pool_max_size=1)
        )
        await store.open()
        try:
            # The first updates on a connection prepare their statements (cached afterwards):
            # a session's first commit and a later one are different statements.
            await one_update(store, "telegram:user:1")
            await one_update(store, "telegram:user:1")
            before = proxy.turns
            updates = 25
            for i in range(updates):
                await one_update(store, f"telegram:user:{i % 5}")
            assert proxy.turns - before == 2 * updates
            # A plain read is one round trip too (once its statement is prepared).
            await store.load("telegram:user:1")
            before = proxy.turns
            await store.load("telegram:user:2")
            assert proxy.turns - before == 1
        finally:
            await store.close()


async def test_an_engine_update_costs_two_round_trips(schema: str) -> None:
    from chatstate.engine import SessionManager

    parts = urlsplit(POSTGRES_URL)
    async with CountingProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        store = PostgresStore.from_url(
            store_url(schema, port=proxy.port, pool_min_size=1, pool_max_size=1)
        )
        manager = SessionManager(store, clock=FakeClock())
        try:
            for i in range(2):  # warm-up: creates, then updates (each prepares a statement)
                async with manager.session("telegram:user:7") as s:
                    s.data["n"] = 0
                    s.append(Message(role="user", content=f"warm-up {i}"))
            before = proxy.turns
            for i in range(10):
                async with manager.session("telegram:user:7") as s:
                    s.state = "asking"
                    s.data["n"] = i + 1
                    s.append(Message(role="user", content=f"hi {i}"))
            assert proxy.turns - before == 2 * 10
            record = await store.load("telegram:user:7")
            assert record is not None and record.data["n"] == 10
            # An update without history has a statement of its own (prepared once).
            for i in range(6):
                if i == 1:
                    before = proxy.turns
                async with manager.session("telegram:user:7") as s:
                    s.data["n"] = 11 + i
            assert proxy.turns - before == 2 * 5
        finally:
            await manager.aclose()


# -- faults -----------------------------------------------------------------------------------


async def test_terminated_backends_never_corrupt_and_the_store_recovers(
    schema: str, admin: asyncpg.Connection
) -> None:
    app = f"cs-fault-{schema}"
    store = PostgresStore.from_url(
        store_url(schema, pool_max_size=4, command_timeout=3, application_name=app)
    )
    await store.open()
    keys = [f"telegram:user:{i}" for i in range(8)]
    ok = dict.fromkeys(keys, 0)
    failed = dict.fromkeys(keys, 0)
    updates_per_key = 15

    async def worker(key: str) -> None:
        # One owner per key: after a lost answer the same owner may take its lease again.
        for _ in range(updates_per_key):
            try:
                await one_update(store, key, owner=f"owner-{key}")
            except StoreUnavailable:
                failed[key] += 1
            else:
                ok[key] += 1

    terminated = 0

    async def killer(workers: asyncio.Future[Any]) -> None:
        nonlocal terminated
        while not workers.done():
            await asyncio.sleep(0.05)
            terminated += await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                app,
            )

    try:
        workers = asyncio.gather(*(worker(k) for k in keys))
        await asyncio.gather(workers, killer(workers))
        assert terminated > 0, "the test must actually kill connections"
        assert sum(ok.values()) > 0
        for key in keys:
            record = await store.load(key)  # the same store object works again
            n = 0 if record is None else record.data["n"]
            if record is not None:
                # Committed whole: the counter, the message count and the history agree.
                assert record.counters.last_seq == n
                assert await store.count_messages(record.ref) == n
                history = await store.read_range(record.ref, 1, n + 10)
                assert [m.seq for m in history] == list(range(1, n + 1))
            # Every acknowledged update is there; an unacknowledged one may or may not be.
            assert ok[key] <= n <= ok[key] + failed[key]
        for key in keys:
            await one_update(store, key, owner=f"owner-{key}")
    finally:
        await store.close()


async def test_a_statement_blocked_past_command_timeout_raises_store_unavailable(
    schema: str, admin: asyncpg.Connection
) -> None:
    store = PostgresStore.from_url(store_url(schema, command_timeout=0.3, read_retries=1))
    await store.open()
    try:
        record = await one_update(store, "telegram:user:1")
        tx = admin.transaction()
        await tx.start()
        try:
            # Another client holds the row lock: the commit cannot finish before the timeout.
            await admin.execute(f'SELECT 1 FROM "{schema}".sessions WHERE key = $1 FOR UPDATE',
                                record.key)
            record.data["n"] = 99
            record.version += 1
            with pytest.raises(StoreUnavailable, match="did not answer"):
                await store.commit(record, expected=record.version - 1)
        finally:
            await tx.rollback()
        stored = await store.load(record.key)  # nothing was written; the store still works
        assert stored is not None and stored.data["n"] == 1 and stored.version == 1
    finally:
        await store.close()


async def test_an_unreachable_server_raises_store_unavailable(schema: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    store = PostgresStore.from_url(store_url(schema, port=free_port, connect_timeout=1))
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{free_port}"):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.load("telegram:user:1")
    await store.close()


async def test_a_server_out_of_connections_raises_store_unavailable(
    schema: str, admin: asyncpg.Connection
) -> None:
    # SQLSTATE class 53 (insufficient resources: connections, memory, disk) is a server that
    # refuses work for now, not a bug: the store says so with StoreUnavailable.
    role = f"cs_full_{uuid.uuid4().hex[:12]}"
    await admin.execute(f"DROP ROLE IF EXISTS {role}")
    await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        parts = urlsplit(store_url(schema, connect_timeout=1))
        netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
        store = PostgresStore.from_url(urlunsplit(parts._replace(netloc=netloc)))
        with pytest.raises(StoreUnavailable, match="too many connections"):
            await store.open()
        await store.close()
    finally:
        await admin.execute(f"DROP ROLE {role}")


# -- migrations -------------------------------------------------------------------------------


async def test_a_version_1_database_is_upgraded_in_place(
    schema: str, admin: asyncpg.Connection
) -> None:
    url = store_url(schema)
    # Build the schema as the first release did, and write through its own commit function.
    assert await schema_sql.apply_migrations(admin, schema, target=1) == [1]
    old = PostgresStore.from_url(url)
    await admin.set_type_codec("jsonb", schema="pg_catalog", encoder=lambda b: b"\x01" + b,
                               decoder=lambda b: b[1:], format="binary")
    records = []
    for i in range(3):
        record = new_record(f"telegram:user:{i}", now=1000.0 + i, labels={"tier": "gold"})
        record.version = 1
        record.data = {"name": f"user {i}"}
        record.counters.last_seq = 2
        history = HistoryChanges(append=[
            Message(role="user", content=f"hello number {i}", seq=1),
            Message(role="assistant", content=[{"type": "text", "text": "Bonjour Ada"}], seq=2),
        ])
        # Version 1's commit function takes the first 21 of today's arguments, then the
        # history as JSON: messages, summaries, drop through, drop summaries.
        appended = b"[" + b",".join(old.codec.encode_message(m) for m in history.append) + b"]"
        row = await admin.fetchrow(
            f'SELECT outcome, actual FROM "{schema}".commit_session('
            + ", ".join(f"${i}" for i in range(1, 26)) + ")",
            *old.commit_arguments(record, 0, history=history)[:21], appended, None, None,
            False,
        )
        assert row["outcome"] == 0
        records.append(record)
    assert await schema_sql.applied_versions(admin, schema) == [1]

    assert await upgrade(url) == [m.version for m in schema_sql.MIGRATIONS[1:]]
    assert await upgrade(url) == []  # idempotent
    assert await schema_sql.applied_versions(admin, schema) == [
        m.version for m in schema_sql.MIGRATIONS]

    store = PostgresStore.from_url(url, migrate=False)
    await store.open()
    try:
        for record in records:
            stored = await store.load(record.key)
            assert stored == record
            assert await store.count_messages(record.ref) == 2
            assert [m.seq for m in await store.read_tail(record.ref, 10)] == [1, 2]
            # The new full-text index covers messages written before it existed.
            found = await store.search_messages(record.ref, "bonj")
            assert [m.seq for m in found] == [2]
        stats = await store.stats(labels=["tier"])
        assert stats.total == 3 and stats.by_label == {"tier": {"gold": 3}}
    finally:
        await store.close()


async def test_a_version_9_history_is_upgraded_to_rows_per_commit(
    schema: str, admin: asyncpg.Connection
) -> None:
    """Messages stored one per row (JSON) before version 10 stay readable, countable,
    searchable and droppable next to the rows written after `chatstate db upgrade`."""
    url = store_url(schema)
    assert await schema_sql.apply_migrations(admin, schema, target=9) == list(range(1, 10))
    await admin.set_type_codec("jsonb", schema="pg_catalog", encoder=lambda b: b"\x01" + b,
                               decoder=lambda b: b[1:], format="binary")
    old = PostgresStore.from_url(url)
    record = new_record("telegram:user:9", now=1000.0)
    record.version = 1
    record.counters.last_seq = 3
    history = HistoryChanges(append=[
        Message(role="user", content="hello old world", seq=1, turn_id="t1"),
        Message(role="assistant", content=[{"type": "text", "text": "Bonjour Ada"}], seq=2),
        Message(role="tool", content="result zebra", seq=3, tool_call_id="c1"),
    ])
    appended = b"[" + b",".join(old.codec.encode_message(m) for m in history.append) + b"]"
    # Version 9's commit function: today's first 21 arguments, the messages as JSON,
    # summaries, drop through, drop summaries, the commit mark.
    row = await admin.fetchrow(
        f'SELECT outcome, actual FROM "{schema}".commit_session('
        + ", ".join(f"${i}" for i in range(1, 27)) + ")",
        *old.commit_arguments(record, 0)[:21], appended.decode(), None, None, False,
        uuid.uuid4(),
    )
    assert row["outcome"] == 0

    assert await upgrade(url) == list(range(10, schema_sql.LATEST_VERSION + 1))
    assert await schema_sql.applied_versions(admin, schema) == [
        m.version for m in schema_sql.MIGRATIONS]
    assert await admin.fetchval(f"SELECT to_regclass('\"{schema}\".messages')") is None

    store = PostgresStore.from_url(url, migrate=False)
    await store.open()
    try:
        ref = record.ref
        assert await store.read_tail(ref, 10) == history.append
        # The minute buckets became plain columns (version 12) with their values kept.
        assert [r.key for r in (await store.list(SessionFilter(updated_since=999.0))).items] == [
            record.key]
        record.version = 2
        newer = [Message(role="user", content=f"new message {i}", seq=i) for i in range(4, 9)]
        await store.commit(record, expected=1, history=HistoryChanges(append=newer))
        assert await store.count_messages(ref) == 8
        assert [m.seq for m in await store.read_tail(ref, 4, before_seq=6)] == [2, 3, 4, 5]
        assert [m.seq for m in await store.read_range(ref, 3, 5)] == [3, 4, 5]
        assert [m.seq for m in await store.search_messages(ref, "bonj")] == [2]
        assert [m.seq for m in await store.search_messages(ref, "message")] == [8, 7, 6, 5, 4]
        # A drop through the middle of the new row keeps its newer messages.
        record.version = 3
        await store.commit(record, expected=2, history=HistoryChanges(drop_messages_through=5))
        assert await store.count_messages(ref) == 3
        assert [m.seq for m in await store.read_tail(ref, 10)] == [6, 7, 8]
        assert [m.content for m in await store.search_messages(ref, "new")] == [
            "new message 8", "new message 7", "new message 6"]
    finally:
        await store.close()


async def test_history_rows_keep_any_content_and_search_per_message(schema: str) -> None:
    """Contents PostgreSQL text cannot hold (NUL), structured parts, other scripts and long
    appends (several rows per commit) round trip; search matches messages, not rows."""
    store = PostgresStore.from_url(store_url(schema))
    await store.open()
    try:
        record = new_record("web:user:2", now=1.0)
        record.version = 1
        odd = [
            Message(role="user", content="nul\x00inside search me", seq=1),
            Message(role="assistant", content=[{"type": "text", "text": "parts search"},
                                               {"type": "image", "url": "u"}], seq=2),
            Message(role="user", content="Grüße 𝄞 日本語 search", seq=3, metadata={"a": 1}),
            Message(role="user", content="", seq=4),
            Message(role="user", content="only one word here", seq=5),
        ]
        many = [Message(role="user", content=f"bulk {i}", seq=i) for i in range(6, 206)]
        await store.commit(record, expected=0, history=HistoryChanges(append=odd + many))
        ref = record.ref
        assert await store.read_range(ref, 1, 5) == odd
        assert await store.count_messages(ref) == 205
        assert [m.seq for m in await store.read_tail(ref, 3)] == [203, 204, 205]
        assert [m.seq for m in await store.read_tail(ref, 3, before_seq=70)] == [67, 68, 69]
        assert [m.seq for m in await store.read_range(ref, 60, 70)] == list(range(60, 71))
        assert [m.seq for m in await store.search_messages(ref, "search")] == [3, 2, 1]
        assert [m.seq for m in await store.search_messages(ref, "日本語")] == [3]
        assert await store.search_messages(ref, "only search") == []
        assert [m.seq for m in await store.search_messages(ref, "bulk", limit=3)] == [
            205, 204, 203]
        rows = await store._read("rows", lambda c: c.fetchval(
            f'SELECT count(*) FROM "{schema}".history'))
        assert rows == 4  # 205 messages in rows of at most 64
    finally:
        await store.close()


async def test_an_outdated_schema_is_refused_without_migrate(
    schema: str, admin: asyncpg.Connection
) -> None:
    await schema_sql.apply_migrations(admin, schema, target=1)
    store = PostgresStore.from_url(store_url(schema, migrate="false"))
    with pytest.raises(SchemaError, match="chatstate db upgrade"):
        await store.open()
    assert await schema_sql.applied_versions(admin, schema) == [1]


async def test_a_newer_schema_is_refused_and_left_unchanged(
    schema: str, admin: asyncpg.Connection
) -> None:
    url = store_url(schema)
    assert await upgrade(url) == [m.version for m in schema_sql.MIGRATIONS]
    await admin.execute(
        f'INSERT INTO "{schema}".chatstate_migrations (version, description) '
        "VALUES ($1, 'from the future')",
        schema_sql.LATEST_VERSION + 1,
    )
    with pytest.raises(SchemaError, match="newer than this chatstate"):
        await PostgresStore.from_url(url).open()
    with pytest.raises(SchemaError, match="newer"):
        await upgrade(url)
    known = [m.version for m in schema_sql.MIGRATIONS]
    assert await schema_sql.applied_versions(admin, schema) == [*known, known[-1] + 1]


async def test_a_schema_with_foreign_tables_is_refused(
    schema: str, admin: asyncpg.Connection
) -> None:
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    await admin.execute(f'CREATE TABLE "{schema}".sessions (whatever text)')
    with pytest.raises(SchemaError, match="did not create"):
        await PostgresStore.from_url(store_url(schema)).open()
    columns = await admin.fetchval(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'sessions'", schema)
    assert columns == 1


async def test_processes_opening_a_fresh_schema_at_once_migrate_it_once(
    schema: str, admin: asyncpg.Connection
) -> None:
    stores = [PostgresStore.from_url(store_url(schema)) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    await asyncio.gather(*(s.close() for s in stores))
    assert await schema_sql.applied_versions(admin, schema) == [
        m.version for m in schema_sql.MIGRATIONS
    ]


# -- leases, fencing, claims ------------------------------------------------------------------


async def test_an_expired_and_taken_lease_cannot_overwrite_newer_data(schema: str) -> None:
    clock = FakeClock()
    store = PostgresStore.from_url(store_url(schema), clock=clock)
    await store.open()
    try:
        key = "telegram:user:1"
        await one_update(store, key)
        slow, record = await store.lease_and_load(key, "slow", 10.0)
        assert slow is not None and record is not None
        assert await store.lease_and_load(key, "fast", 10.0) == (None, None)
        clock.advance(11)
        assert await store.renew(slow, 10.0) is None
        fast, fresh = await store.lease_and_load(key, "fast", 10.0)
        assert fast is not None and fresh is not None and fast.token > slow.token
        fresh.data["n"] = 100
        fresh.version += 1
        await store.commit(fresh, expected=fresh.version - 1, lease=fast)
        record.data["n"] = -1
        record.version += 1
        with pytest.raises(LeaseLost):
            await store.commit(record, expected=record.version - 1, lease=slow, release=True)
        with pytest.raises(ConflictError):  # and without the lease, the version refuses it
            await store.commit(record, expected=record.version - 1)
        stored = await store.load(key)
        assert stored is not None and stored.data["n"] == 100
        renewed = await store.renew(fast, 10.0)
        assert renewed is not None and renewed.expires_at == clock.now() + 10.0
        await store.release(fast)
        again, _ = await store.lease_and_load(key, "other", 10.0)
        assert again is not None and again.token > fast.token  # tokens grow across releases
    finally:
        await store.close()


async def test_a_lost_commit_answer_is_safe_to_retry(store: PostgresStore) -> None:
    record = await one_update(store, "telegram:user:1")
    record.data["n"] = 2
    record.version = 2
    message = Message(role="user", content="once", seq=2)
    # One commit() call sends the same arguments (with one mark) on every attempt: a second
    # attempt after an answer lost in transit finds its own commit and doubles nothing.
    args = store.commit_arguments(record, 1, history=HistoryChanges(append=[message]))
    for _attempt in range(2):
        row = await store._read("commit", lambda c: c.fetchrow(store._sql["commit"], *args))
        assert row["outcome"] == 0
    assert await store.count_messages(record.ref) == 2
    # Another call with byte-identical contents is another writer's commit: a conflict
    # (taking it for its own would lose one of two identical increments).
    with pytest.raises(ConflictError):
        await store.commit(record, expected=1, history=HistoryChanges(append=[message]))
    assert await store.count_messages(record.ref) == 2
    other = new_record(record.key)
    other.id = record.id
    other.version = 2
    with pytest.raises(ConflictError):  # a different record at that version is a conflict
        await store.commit(other, expected=1)


async def test_concurrent_claimers_split_the_due_sessions(schema: str) -> None:
    stores = [PostgresStore.from_url(store_url(schema)) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        for i in range(120):
            record = new_record(f"web:user:{i}", now=1000.0)
            record.expires_at = 2000.0 + i
            record.version = 1
            await stores[0].commit(record, expected=0)
        claimed: list[str] = []

        async def claimer(store: PostgresStore) -> None:
            while batch := await store.claim_due("expire", 5000.0, 7, claim_seconds=600):
                claimed.extend(item.session_id for item in batch)

        await asyncio.gather(*(claimer(s) for s in stores * 2))
        assert len(claimed) == 120 and len(set(claimed)) == 120
        assert await stores[0].claim_due("expire", 5000.0, 10) == []
        items = await stores[0].claim_due("expire", 5700.0, 200)  # back after claim_seconds
        assert len(items) == 120 and items[0].due_at == 5600.0
    finally:
        for s in stores:
            await s.close()


async def test_claiming_reads_the_partial_due_index(schema: str, admin: asyncpg.Connection) -> None:
    store = PostgresStore.from_url(store_url(schema))
    await store.open()
    await store.close()
    await admin.execute("SET enable_seqscan TO off")  # an empty table would favour a seq scan
    statement = store._sql["claim_expire"].replace("$1", "1.0::float8").replace(
        "$2", "5").replace("$3", "30.0::float8")
    plan = "\n".join(r[0] for r in await admin.fetch(f"EXPLAIN {statement}"))
    assert "sessions_due_expire" in plan


async def test_commits_are_hot_updates_that_touch_no_index(
    schema: str, admin: asyncpg.Connection
) -> None:
    """Within one minute bucket of last_activity and expires_at, a commit rewrites the row
    on its page and inserts no index entry (postgres_schema, version 6)."""
    table = f'"{schema}".sessions'

    async def updated() -> tuple[int, int]:
        # Backends flush table statistics when they exit: wait until the counts settle.
        last = None
        for _ in range(40):
            await admin.execute("SELECT pg_stat_clear_snapshot()")
            row = await admin.fetchrow(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relid = $1::regclass", table)
            now = (int(row["n_tup_upd"]), int(row["n_tup_hot_upd"]))
            if now == last:
                return now
            last = now
            await asyncio.sleep(0.1)
        raise AssertionError("table statistics did not settle")

    async def run(updates: int) -> None:
        store = PostgresStore.from_url(store_url(schema))
        await store.open()
        try:
            for _ in range(updates):
                for i in range(3):
                    await one_update(store, f"telegram:user:{i}")
        finally:
            await store.close()

    await run(1)  # creates the sessions (inserts)
    before = await updated()
    # Few enough versions to fit the rows' page without pruning it first: pruning waits for
    # the oldest snapshot in the database, which another client's open transaction can hold,
    # and an update that finds no room on its page cannot be HOT, whatever it assigns.
    await run(2)
    after = await updated()
    assert after[0] - before[0] >= 6
    assert after[1] - before[1] >= 6  # every one of them HOT


# -- search, options --------------------------------------------------------------------------


async def test_full_text_search_finds_words_and_prefixes(store: PostgresStore) -> None:
    record = new_record("web:user:1", now=1.0)
    record.version = 1
    texts = ["Where is my order?", "Your ORDER ships tomorrow", "thanks!", "order again"]
    messages = [Message(role="user", content=t, seq=i + 1) for i, t in enumerate(texts)]
    await store.commit(record, expected=0, history=HistoryChanges(append=messages))
    ref = record.ref
    assert [m.seq for m in await store.search_messages(ref, "order")] == [4, 2, 1]
    assert [m.seq for m in await store.search_messages(ref, "ORD ship")] == [2]
    assert [m.seq for m in await store.search_messages(ref, "order", limit=1)] == [4]
    assert await store.search_messages(ref, "nothing") == []
    assert [m.seq for m in await store.search_messages(ref, "it's 'order'")] == []


def test_url_options_are_parsed_and_checked() -> None:
    store = open_store(
        "postgres://u:p@db.example:6543/app?schema=bots&pool_max_size=20&pool_min_size=2"
        "&command_timeout=2.5&sslmode=disable&migrate=no"
    )
    assert isinstance(store, PostgresStore)
    assert (store.schema, store.pool_min_size, store.pool_max_size) == ("bots", 2, 20)
    assert store.command_timeout == 2.5 and store.migrate is False
    assert store.dsn == "postgres://u:p@db.example:6543/app?sslmode=disable"
    assert store.shared is True
    bad = [
        "postgresql://h/db?schema=Bad-Name",
        "postgresql://h/db?pool_max_size=0",
        "postgresql://h/db?pool_max_size=100000",
        "postgresql://h/db?pool_min_size=5&pool_max_size=2",
        "postgresql://h/db?command_timeout=-1",
        "postgresql://h/db?migrate=maybe",
        "postgresql://h/db?pool_max_size=ten",
    ]
    for url in bad:
        with pytest.raises(ConfigurationError):
            open_store(url)
    with pytest.raises(ConfigurationError, match="unknown PostgreSQL store option"):
        PostgresStore.from_url("postgresql://h/db", poolsize=3)


async def test_the_maintained_message_count_follows_appends_and_drops(store: PostgresStore) -> None:
    record = new_record("web:user:1", now=1.0)
    record.version = 1
    first = [Message(role="user", content=f"m{i}", seq=i) for i in range(1, 6)]
    await store.commit(record, expected=0, history=HistoryChanges(append=first))
    assert await store.count_messages(record.ref) == 5
    record.version = 2
    later = [Message(role="user", content=f"m{i}", seq=i) for i in range(6, 8)]
    await store.commit(record, expected=1, history=HistoryChanges(
        append=later, drop_messages_through=3))
    assert await store.count_messages(record.ref) == 4
    assert [m.seq for m in await store.read_tail(record.ref, 10)] == [4, 5, 6, 7]
    assert [m.seq for m in await store.read_tail(record.ref, 2, before_seq=7)] == [5, 6]
    # A new session for the key keeps the old one (and its history) retrievable by id.
    successor = new_record("web:user:1", now=2.0)
    successor.version = 3
    await store.commit(successor, expected=2)
    assert await store.count_messages(successor.ref) == 0
    assert await store.count_messages(record.ref) == 4
    old = await store.load_by_id(record.id)
    assert old is not None and old.version == 2
    assert (await store.count()).total == 2
    assert await store.delete(record.key, record.id) is True
    assert await store.count_messages(record.ref) == 0
    assert await store.read_tail(record.ref, 10) == []
    current = await store.load(record.key)
    assert current is not None and current.id == successor.id


async def test_an_unreadable_record_is_quarantined_and_the_key_freed(schema: str) -> None:
    from chatstate.engine import SessionManager
    from chatstate.errors import CorruptRecordError

    store = PostgresStore.from_url(store_url(schema))
    manager = SessionManager(store, clock=FakeClock())
    try:
        key = "web:user:1"
        await manager.update(key, lambda s: s.data.update(n=1))
        await store._put_raw(key, b'{"id": 42, "key": []}')  # valid JSON, not a record
        with pytest.raises(CorruptRecordError):
            await store.load(key)
        with pytest.raises(CorruptRecordError) as raised:
            await store.lease_and_load(key, "someone", 5.0)
        assert getattr(raised.value, "lease", None) is not None
        await store.release(raised.value.lease)  # type: ignore[attr-defined]
        assert (await store.list()).items == []  # listing skips it
        # The engine quarantines it and carries on with a fresh session.
        async with manager.session(key) as s:
            assert s.data == {}
            s.data["n"] = 2
        quarantined = await store.list_quarantined()
        assert len(quarantined) == 1 and quarantined[0]["key"] == key
        assert b'"key"' in quarantined[0]["raw"]
        record = await store.load(key)
        assert record is not None and record.data == {"n": 2}
    finally:
        await manager.aclose()


# -- the connection pool (no server: fake connections) ----------------------------------------


class FakeConnection:
    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False
        self.in_transaction = False

    def is_closed(self) -> bool:
        return self.closed

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    def terminate(self) -> None:
        self.closed = True

    async def close(self) -> None:
        self.closed = True


def fake_pool(min_size: int = 0, max_size: int = 2) -> tuple[Any, list[FakeConnection]]:
    from chatstate.stores.postgres_pool import ConnectionPool

    opened: list[FakeConnection] = []

    async def connect() -> FakeConnection:
        await asyncio.sleep(0)
        opened.append(FakeConnection(len(opened)))
        return opened[-1]

    return ConnectionPool(connect, min_size=min_size, max_size=max_size), opened


async def test_the_pool_reuses_idle_connections_and_stays_within_its_bound() -> None:
    pool, opened = fake_pool(min_size=1, max_size=2)
    await pool.start()
    assert len(opened) == 1 and pool.idle == 1
    first = pool.try_acquire()
    assert first is opened[0] and pool.try_acquire() is None
    second = await pool.acquire(1.0)  # opens the second
    assert second is opened[1] and pool.size == 2
    # Exhausted: a waiter gets the next connection given back, in arrival order.
    waiters = [asyncio.ensure_future(pool.acquire(1.0)) for _ in range(2)]
    await asyncio.sleep(0)
    pool.release(first)
    assert await waiters[0] is first
    pool.release(second)
    assert await waiters[1] is second
    with pytest.raises(TimeoutError):
        await pool.acquire(0.01)
    assert pool.size == 2 and len(opened) == 2


async def test_the_pool_replaces_broken_connections_and_hands_over_on_timeout() -> None:
    pool, opened = fake_pool(max_size=1)
    conn = await pool.acquire(1.0)
    waiter = asyncio.ensure_future(pool.acquire(1.0))
    await asyncio.sleep(0)
    pool.discard(conn)  # broken: closed, and its slot goes to the waiter, who opens a new one
    pool.release(conn)
    fresh = await waiter
    assert fresh is opened[1] and not fresh.closed and pool.size == 1
    fresh.in_transaction = True  # left dirty: terminated rather than reused
    pool.release(fresh)
    assert fresh.closed and pool.size == 0 and pool.idle == 0
    # A waiter that times out while a connection is being handed over passes it on.
    conn = await pool.acquire(1.0)
    slow = asyncio.ensure_future(pool.acquire(0.05))
    await asyncio.sleep(0)
    pool.release(conn)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert pool.idle == 1 and pool.try_acquire() is conn


async def test_pool_waits_are_bounded_by_their_own_deadlines() -> None:
    """One timer serves every waiter: each times out after its own wait, in any order of
    arrival, and the waiters still queued are served afterwards."""
    pool, _ = fake_pool(max_size=1)
    conn = await pool.acquire(1.0)
    long = asyncio.ensure_future(pool.acquire(5.0))
    short = asyncio.ensure_future(pool.acquire(0.05))  # arrives later, expires first
    shorter = asyncio.ensure_future(pool.acquire(0.02))
    async with asyncio.timeout(4.0):  # long before the first waiter's 5 s
        with pytest.raises(TimeoutError):
            await shorter
        with pytest.raises(TimeoutError):
            await short
    assert not long.done()
    pool.release(conn)
    assert await long is conn


async def test_a_closed_pool_fails_waiters_and_terminates_returned_connections() -> None:
    from chatstate.stores.postgres_pool import PoolClosed

    pool, _opened = fake_pool(max_size=1)
    conn = await pool.acquire(1.0)
    waiter = asyncio.ensure_future(pool.acquire(1.0))
    await asyncio.sleep(0)
    await pool.close(1.0)
    with pytest.raises(PoolClosed):
        await waiter
    pool.release(conn)
    assert conn.closed and pool.size == 0
    with pytest.raises(PoolClosed):
        await pool.acquire(1.0)


# -- implicit release (schema version 13) ----------------------------------------------------


async def test_a_lease_never_waits_for_a_commit_nor_reads_behind_it(
    schema: str, admin: Any
) -> None:
    """A commit releases its lease in the session row, so a lease-and-load running while that
    commit is uncommitted finds the lease held (at once, no lock wait), and once the commit is
    visible it gets the lease together with the committed record, never the one before."""
    store = PostgresStore.from_url(store_url(schema))
    await store.open()
    try:
        key = "telegram:user:1"
        await one_update(store, key)
        lease, record = await store.lease_and_load(key, "a", 30.0)
        assert lease is not None and record is not None
        record.data["n"] = 2
        record.version = 2
        args = store.commit_arguments(record, 1, lease, release=True)
        await admin.execute(f"SET search_path = {schema}")
        await _init_connection(admin)
        transaction = admin.transaction()
        await transaction.start()
        try:
            name, fast_args = _fast_arguments(args)
            assert await admin.fetchval(store._sql[name], *fast_args) == 1
            # The commit is not visible yet: the lease is held, and asking does not block.
            assert await asyncio.wait_for(store.lease_and_load(key, "b", 30.0), 3.0) == (
                None, None)
        finally:
            await transaction.commit()
        taken, loaded = await store.lease_and_load(key, "b", 30.0)
        assert taken is not None and taken.token > lease.token
        assert loaded is not None and loaded.version == 2 and loaded.data["n"] == 2
    finally:
        await store.close()


async def test_a_lease_released_by_its_commit_is_spent(store: PostgresStore) -> None:
    key = "telegram:user:1"
    await one_update(store, key)
    lease, record = await store.lease_and_load(key, "a", 30.0)
    assert lease is not None and record is not None
    record.version += 1
    await store.commit(record, expected=record.version - 1, lease=lease, release=True)
    assert await store.renew(lease, 30.0) is None  # released: nothing to renew
    record.version += 1
    with pytest.raises(LeaseLost):  # nor to commit with
        await store.commit(record, expected=record.version - 1, lease=lease)
    record.version -= 1
    other, loaded = await store.lease_and_load(key, "b", 30.0)
    assert other is not None and loaded == record
    assert await store.lease_and_load(key, "a", 30.0) == (None, None)


async def test_a_usual_commit_retried_after_a_lost_answer_applies_once(
    store: PostgresStore,
) -> None:
    record = await one_update(store, "telegram:user:1")
    lease, record_loaded = await store.lease_and_load(record.key, "worker", 30.0)
    assert lease is not None and record_loaded is not None
    record = record_loaded
    record.data["n"] = 2
    record.version = 2
    message = Message(role="user", content="once", seq=2)
    args = store.commit_arguments(
        record, 1, lease, release=True, history=HistoryChanges(append=[message]))
    # As commit() does on each attempt: the usual statement, then the general path when
    # it wrote nothing. The second attempt's usual statement finds the version moved on,
    # and the general path recognises the commit as its own.
    applied = []
    name, fast_args = _fast_arguments(args)
    assert name == "commit_fast_history"
    for _attempt in range(2):
        async def attempt(conn: Any) -> Any:
            if await conn.fetchval(store._sql[name], *fast_args):
                applied.append(True)
                return None
            return await conn.fetchrow(store._sql["commit"], *args)

        row = await store._read("commit", attempt)
        assert row is None or row["outcome"] == 0
    assert applied == [True]
    assert await store.count_messages(record.ref) == 2
    assert [m.content for m in await store.read_tail(record.ref, 10)] == [
        "message 1", "once"]


async def test_deleting_or_quarantining_a_session_frees_its_released_lease(
    schema: str, store: PostgresStore, admin: Any
) -> None:
    leases = f'SELECT token, expires_at FROM "{schema}".leases WHERE key = $1'
    await one_update(store, "telegram:user:1")
    assert await store.delete("telegram:user:1")
    assert await admin.fetch(leases, "telegram:user:1") == []

    key = "telegram:user:2"
    await one_update(store, key)
    raw = await admin.fetchval(
        f'SELECT record::text FROM "{schema}".sessions WHERE key = $1', key)
    await store.quarantine(key, raw.encode(), "test")
    assert await store.load(key) is None
    other, record = await store.lease_and_load(key, "someone else", 30.0)
    assert other is not None and record is None
