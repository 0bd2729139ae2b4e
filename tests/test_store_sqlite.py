"""SQLiteStore specifics: durability across reopen, processes and SIGKILL; schema checks;
group commit isolation; URL options. The shared behaviour is in tests/conformance."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from chatstate.clock import FakeClock
from chatstate.errors import ConfigurationError, ConflictError, SchemaError, StoreUnavailable
from chatstate.model import HistoryChanges, Message, SessionRecord, new_record
from chatstate.stores.base import SessionFilter
from chatstate.stores.sqlite import CACHE_KIB, SCHEMA_VERSION, SQLiteStore
from chatstate.stores.url import open_store

T0 = 1_700_000_000.0

# A child process working on one database file. Modes:
#   incr KEY N   -- N increments of data["n"] with reload-and-retry on conflicts
#   flood        -- concurrent commits on 16 keys forever, printing "key version" once each
#                   commit has returned (acknowledged)
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import msgspec
    from chatstate.errors import ConflictError
    from chatstate.model import new_record
    from chatstate.stores.sqlite import SQLiteStore

    async def incr(store, key, n):
        for _ in range(n):
            while True:
                current = await store.load(key)
                updated = msgspec.structs.replace(
                    current, version=current.version + 1, data={"n": current.data["n"] + 1})
                try:
                    await store.commit(updated, expected=current.version)
                    break
                except ConflictError:
                    continue

    async def flood(store):
        async def writer(i):
            key = f"test:user:flood{i}"
            record = new_record(key, now=1.0)
            version = 0
            while True:
                record = msgspec.structs.replace(
                    record, version=version + 1, data={"n": version + 1, "pad": "x" * 2000})
                await store.commit(record, expected=version)
                version += 1
                sys.stdout.write(f"{key} {version}\\n")
                sys.stdout.flush()
        await asyncio.gather(*(writer(i) for i in range(16)))

    async def main():
        store = SQLiteStore(sys.argv[1])
        await store.open()
        if sys.argv[2] == "incr":
            await incr(store, sys.argv[3], int(sys.argv[4]))
        else:
            await flood(store)
        await store.close()

    asyncio.run(main())
    """
)


@pytest.fixture
def child(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script


async def _store(path: Path, **options: object) -> SQLiteStore:
    store = SQLiteStore(str(path), **options)  # type: ignore[arg-type]
    await store.open()
    return store


async def _schema_version(store: SQLiteStore) -> int:
    version: int = await store._run(
        lambda c: c.execute(
            "SELECT value FROM chatstate_meta WHERE name = 'schema_version'"
        ).fetchone()[0]
    )
    return version


async def _assert_search_index_intact(store: SQLiteStore) -> None:
    """FTS5's own integrity check of the keyword index against the rows it reads (it raises
    on any difference)."""
    check = await store._run(
        lambda c: c.execute(
            "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)"
        ).fetchall()
    )
    assert check == []


async def test_commits_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await _store(path)
    record = new_record("test:user:1", now=T0, data={"name": "Ada"}, expires_at=T0 + 5)
    record.version = 1
    hello = Message(role="user", content="hello there", seq=1)
    await store.commit(record, expected=0, history=HistoryChanges(append=[hello]))
    await store.incr({"c": 2})
    await store.close()
    await store.close()  # idempotent

    again = await _store(path)
    try:
        assert await again.load("test:user:1") == record
        assert await again.read_tail(record.ref, 5) == [hello]
        assert await again.read_counters() == {"c": 2}
        assert [i.session_id for i in await again.claim_due("expire", T0 + 6, 5)] == [record.id]
        assert [m.seq for m in await again.search_messages(record.ref, "THERE hell")] == [1]
    finally:
        await again.close()


async def test_wal_mode_and_synchronous_setting(tmp_path: Path) -> None:
    for option, expected in (("normal", 1), ("full", 2)):
        path = tmp_path / f"{option}.db"
        store = open_store(f"sqlite:///{path}?synchronous={option}")
        assert isinstance(store, SQLiteStore)
        await store.open()
        modes = await store._run(
            lambda c: (c.execute("PRAGMA journal_mode").fetchone()[0],
                       c.execute("PRAGMA synchronous").fetchone()[0])
        )
        await store.close()
        assert modes == ("wal", expected)


async def test_every_connection_has_a_page_cache_for_thousands_of_sessions(
    tmp_path: Path,
) -> None:
    """SQLite's default cache (2 MB) holds a few thousand session rows; each of the store's
    connections (the worker's and the loop's two) is given room for tens of thousands."""
    store = await _store(tmp_path / "cache.db")
    try:
        worker = await store._run(lambda c: c.execute("PRAGMA cache_size").fetchone()[0])
        assert store._reader is not None and store._reads is not None
        loop_side = [c.execute("PRAGMA cache_size").fetchone()[0]
                     for c in (store._reader, store._reads)]
    finally:
        await store.close()
    assert [worker, *loop_side] == [CACHE_KIB] * 3
    assert CACHE_KIB <= -16384  # KiB: at least 16 MB each


async def test_one_failing_commit_in_a_group_does_not_poison_the_others(tmp_path: Path) -> None:
    store = await _store(tmp_path / "g.db")
    try:
        records = []
        for i in range(20):
            record = new_record(f"test:user:g{i}", now=T0)
            record.version = 1
            records.append(record)
        stale = new_record("test:user:g0", now=T0)  # conflicts with records[0]
        stale.version = 1
        results = await asyncio.gather(
            *(store.commit(r, expected=0) for r in records),
            store.commit(stale, expected=0),
            return_exceptions=True,
        )
        assert all(r is None for r in results[:20])
        assert isinstance(results[20], ConflictError)
        assert (await store.count()).total == 20
        assert await store.load("test:user:g0") == records[0]
    finally:
        await store.close()


async def test_leases_expire_on_the_store_clock(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = await _store(tmp_path / "l.db", clock=clock)
    try:
        lease, _ = await store.lease_and_load("test:user:l", "a", 10)
        assert lease is not None
        assert await store.lease_and_load("test:user:l", "b", 10) == (None, None)
        clock.advance(11)
        assert await store.renew(lease, 10) is None
        taken, _ = await store.lease_and_load("test:user:l", "b", 10)
        assert taken is not None and taken.token > lease.token
    finally:
        await store.close()


async def test_two_processes_lose_no_updates(tmp_path: Path, child: Path) -> None:
    path = tmp_path / "mp.db"
    store = await _store(path)
    record = new_record("test:user:mp", now=T0, data={"n": 0})
    record.version = 1
    await store.commit(record, expected=0)
    each = 150
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(child), str(path), "incr", "test:user:mp", str(each)
        )
        for _ in range(2)
    ]
    # Increment from this process too, through the same file.
    for _ in range(each):
        while True:
            current = await store.load("test:user:mp")
            assert current is not None
            updated = msgspec.structs.replace(
                current, version=current.version + 1, data={"n": current.data["n"] + 1}
            )
            try:
                await store.commit(updated, expected=current.version)
                break
            except ConflictError:
                continue
    codes = [await p.wait() for p in procs]
    final = await store.load("test:user:mp")
    await store.close()
    assert codes == [0, 0]
    assert final is not None
    assert final.data["n"] == 3 * each
    assert final.version == 3 * each + 1


def _flood_then_kill(path: Path, child: Path) -> tuple[dict[str, int], int]:
    """Run the flooding child, SIGKILL it mid-load, and return the newest acknowledged
    version per key (including acknowledgements still in the pipe) and its exit code."""
    proc = subprocess.Popen(
        [sys.executable, str(child), str(path), "flood"], stdout=subprocess.PIPE, text=True
    )
    acked: dict[str, int] = {}
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # kill after a good number of acknowledged commits
            key, version = line.split()
            acked[key] = max(acked.get(key, 0), int(version))
            if sum(acked.values()) >= 1500:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    for line in proc.stdout:
        key, version = line.split()
        acked[key] = max(acked.get(key, 0), int(version))
    return acked, proc.returncode


async def test_sigkill_mid_load_leaves_acknowledged_commits_and_no_torn_record(
    tmp_path: Path, child: Path
) -> None:
    path = tmp_path / "kill.db"
    acked, returncode = await asyncio.to_thread(_flood_then_kill, path, child)
    assert returncode == -signal.SIGKILL

    store = await _store(path)
    try:
        for key, version in acked.items():
            record = await store.load(key)  # decodes: a torn record would raise here
            assert record is not None
            assert record.version >= version
            assert record.data["n"] == record.version  # record and its fields from one commit
        listed = await store.list(limit=100)
        assert len(listed.items) == len(acked) == 16
        integrity = await store._run(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0])
        assert integrity == "ok"
    finally:
        await store.close()


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_a_foreign_sqlite_file_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    store = SQLiteStore(str(path))
    with pytest.raises(SchemaError, match=r"another application.*invoices"):
        await store.open()
    assert path.read_bytes() == before
    assert _names(tmp_path) == ["other.db"]  # not even switched to WAL (no -wal/-shm files)


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(SchemaError, match="not an SQLite database"):
        await SQLiteStore(str(path)).open()
    assert path.read_text().startswith("these are my notes")


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    store = await _store(path)
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE chatstate_meta SET value = ? WHERE name = 'schema_version'", (SCHEMA_VERSION + 1,)
    )
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="newer chatstate"):
        await SQLiteStore(str(path)).open()


async def test_missing_directory_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        await SQLiteStore(str(tmp_path / "nope" / "x.db")).open()
    with pytest.raises(ConfigurationError, match="synchronous"):
        open_store("sqlite:///x.db?synchronous=sometimes")
    with pytest.raises(ConfigurationError, match="unknown"):
        open_store("sqlite:///x.db?journal=memory")
    with pytest.raises(ConfigurationError, match="shared"):
        open_store("sqlite:///x.db?shared=maybe")
    assert open_store("sqlite:///x.db?shared=false").shared is False
    assert open_store("sqlite:///x.db").shared is True
    with pytest.raises(ConfigurationError, match="no host"):
        open_store("sqlite://host/x.db")
    with pytest.raises(ConfigurationError, match="names no file"):
        open_store("sqlite:///")


async def test_a_locked_database_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = await _store(path, busy_timeout=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock too long
    try:
        record = new_record("test:user:busy", now=T0)
        record.version = 1
        with pytest.raises(StoreUnavailable, match="busy_timeout"):
            await store.commit(record, expected=0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await store.close()


async def test_memory_database_url() -> None:
    store = open_store("sqlite:///:memory:")
    async with store:
        record = new_record("test:user:m", now=T0)
        record.version = 1
        await store.commit(record, expected=0)
        assert await store.load("test:user:m") == record


async def test_commits_in_a_loop_do_not_starve_other_tasks(tmp_path: Path) -> None:
    # A commit may run on the event loop's own connection; it must still yield like a hop.
    store = await _store(tmp_path / "fair.db")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        record = new_record("test:user:fair", now=T0)
        for version in range(1, 101):
            record.version = version
            await store.commit(record, expected=version - 1)
        assert ticks >= 100
    finally:
        task.cancel()
        await store.close()


async def test_a_failing_read_does_not_undo_the_writes_of_its_batch(tmp_path: Path) -> None:
    store = await _store(tmp_path / "mixed.db")
    try:
        records = []
        for i in range(10):
            record = new_record(f"test:user:m{i}", now=T0)
            record.version = 1
            records.append(record)

        def bad_read(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT * FROM no_such_table")

        results = await asyncio.gather(
            *(store.commit(r, expected=0) for r in records[:5]),
            store._run(bad_read),
            *(store.commit(r, expected=0) for r in records[5:]),
            return_exceptions=True,
        )
        assert isinstance(results[5], StoreUnavailable)
        assert [r for i, r in enumerate(results) if i != 5] == [None] * 10
        assert (await store.count()).total == 10
    finally:
        await store.close()


try:
    import fcntl

    HAS_OFD_LOCKS = hasattr(fcntl, "F_OFD_GETLK")
except ImportError:  # Windows
    HAS_OFD_LOCKS = False

needs_ofd_locks = pytest.mark.skipif(
    not HAS_OFD_LOCKS,
    reason="shared=auto watches other stores through open-file-description locks (Linux)",
)

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from chatstate.stores.sqlite import SQLiteStore

    async def main():
        store = SQLiteStore(sys.argv[1])
        await store.open()
        print("open", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await store.close()

    asyncio.run(main())
    """
)


@needs_ofd_locks
async def test_shared_auto_takes_leases_only_while_another_store_has_the_file_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "auto.db"
    first = await _store(path)
    try:
        assert first.shared is False  # alone: the engine takes no leases
        second = await _store(path)  # another store in this process counts too
        assert first.shared is True and second.shared is True
        await second.close()
        assert first.shared is False

        script = tmp_path / "holder.py"
        script.write_text(HOLDER)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        assert await proc.stdout.readline() == b"open\n"
        assert first.shared is True  # another process has the file open
        proc.stdin.write(b"done\n")
        await proc.stdin.drain()
        assert await proc.wait() == 0
        assert first.shared is False
        assert SQLiteStore(str(path), shared="true").shared is True
        assert SQLiteStore(str(path), shared=False).shared is False
    finally:
        await first.close()


@needs_ofd_locks
async def test_an_update_begun_alone_yields_to_a_lease_taken_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "yield.db"
    first = await _store(path)
    try:
        record = new_record("test:user:y", now=T0, data={"n": 0})
        record.version = 1
        await first.commit(record, expected=0)
        loaded = await first.load("test:user:y")  # alone: no lease taken
        assert loaded is not None and first.shared is False

        second = await _store(path)  # another process starts and takes the key's lease
        lease, held = await second.lease_and_load("test:user:y", "second", 30)
        assert lease is not None and held is not None
        late = msgspec.structs.replace(loaded, version=2, data={"n": 1})
        with pytest.raises(ConflictError):
            await first.commit(late, expected=1)  # the lease holder wins
        mine = msgspec.structs.replace(held, version=2, data={"n": 10})
        await second.commit(mine, expected=1, lease=lease, release=True)

        # A lease left behind by a store that is gone does not hold back one that is alone.
        stale, _ = await second.lease_and_load("test:user:y", "second", 30)
        assert stale is not None
        await second.close()
        current = await first.load("test:user:y")
        assert current is not None and current.data == {"n": 10}
        await first.commit(msgspec.structs.replace(current, version=3), expected=2)
    finally:
        await first.close()


@needs_ofd_locks
async def test_two_managers_on_one_file_serialise_updates_of_a_key(tmp_path: Path) -> None:
    from chatstate.engine import SessionManager

    path = tmp_path / "managers.db"
    managers = [SessionManager(await _store(path)) for _ in range(2)]
    try:

        async def bump(manager: SessionManager) -> None:
            # session(), not update(): without leases a concurrent commit would raise here.
            async with manager.session("test:user:both") as s:
                await asyncio.sleep(0)
                s.data["n"] = s.data.get("n", 0) + 1

        await asyncio.gather(*(bump(managers[i % 2]) for i in range(40)))
        record = await managers[0].get("test:user:both")
        assert record is not None and record.data["n"] == 40
    finally:
        for manager in managers:
            await manager.aclose()


# Schema 2's history: messages keyed by (session_id, seq) with the whole message as JSON, and a
# keyword index keeping its own copy of the text (rowid = messages.rowid).
_SCHEMA_2_HISTORY = [
    "CREATE TABLE messages_v3 AS SELECT * FROM messages",
    "DROP TABLE messages_fts",
    "DROP TABLE messages",
    "CREATE TABLE messages (session_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    "tokens INTEGER NOT NULL DEFAULT 0, blob BLOB NOT NULL, PRIMARY KEY (session_id, seq))",
    "CREATE VIRTUAL TABLE messages_fts USING fts5(body)",
]


def _downgrade_to_schema_2(path: Path) -> None:
    """Turn a file of this code into the layout schema 2 had (sessions keyed by their text id
    alone, messages by (session_id, seq) as JSON, the keyword index with its own text)."""
    from chatstate.codec import Codec
    from chatstate.stores.sqlite import _SESSION_COLUMNS, SEQ_BITS, SEQ_MASK

    codec = Codec()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for statement in _SCHEMA_2_HISTORY:
        conn.execute(statement)
    rows = conn.execute(
        "SELECT s.id, m.id, m.body, m.blob FROM messages_v3 m "
        f"JOIN sessions s ON s.sid = m.id >> {SEQ_BITS} ORDER BY m.id"
    ).fetchall()
    for session_id, mid, body, blob in rows:
        message = codec.decode_message(blob)
        if body is not None and isinstance(message.content, str):
            message.content = body
        message.seq = mid & SEQ_MASK
        conn.execute(
            "INSERT INTO messages (session_id, seq, tokens, blob) VALUES (?, ?, ?, ?)",
            (session_id, message.seq, message.tokens, codec.encode_message(message)),
        )
        conn.execute(
            "INSERT INTO messages_fts (rowid, body) SELECT rowid, ? FROM messages "
            "WHERE session_id = ? AND seq = ?", (message.text, session_id, message.seq),
        )
    conn.execute("DROP TABLE messages_v3")
    indexes = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sessions' "
        "AND sql IS NOT NULL"
    ).fetchall()
    conn.execute("ALTER TABLE sessions RENAME TO sessions_v3")
    for name in ("current", "activity_min", "due_warn_min", "due_expire_min", "due_purge_min"):
        conn.execute(f"DROP INDEX sessions_{name}")
    columns = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'sessions_v3'").fetchone()
    ddl = columns[0].replace('"sessions_v3"', "sessions").replace("sessions_v3", "sessions")
    ddl = ddl.replace("sid INTEGER PRIMARY KEY,", "").replace(
        "id TEXT NOT NULL UNIQUE", "id TEXT PRIMARY KEY"
    )
    conn.execute(ddl)
    conn.execute(
        f"INSERT INTO sessions ({_SESSION_COLUMNS}) SELECT {_SESSION_COLUMNS} FROM sessions_v3 "
        "ORDER BY sid"
    )
    conn.execute("DROP TABLE sessions_v3")
    for (sql,) in indexes:
        conn.execute(sql)
    conn.execute("UPDATE chatstate_meta SET value = 2 WHERE name = 'schema_version'")
    conn.execute("COMMIT")
    assert "sid" not in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'sessions'"
                                     ).fetchone()[0]
    conn.close()


def _downgrade_to_schema_1(path: Path) -> None:
    """Turn a file of this code into the layout schema 1 had (indexes on the exact times)."""
    _downgrade_to_schema_2(path)
    conn = sqlite3.connect(path, isolation_level=None)
    for name in ("activity", "due_warn", "due_expire", "due_purge"):
        conn.execute(f"DROP INDEX sessions_{name}_min")
        conn.execute(f"ALTER TABLE sessions DROP COLUMN {name}_min")
    conn.execute("CREATE INDEX sessions_activity ON sessions (last_activity DESC, id)")
    for kind in ("warn", "expire", "purge"):
        conn.execute(
            f"CREATE INDEX sessions_due_{kind} ON sessions (due_{kind}) "
            f"WHERE due_{kind} IS NOT NULL"
        )
    conn.execute("UPDATE chatstate_meta SET value = 1 WHERE name = 'schema_version'")
    conn.close()


async def test_a_schema_1_file_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    store = await _store(path)
    records = []
    for i in range(5):
        # Apart by 50 s: some share a minute, some do not; listing must still be exact.
        record = new_record(f"test:user:v{i}", now=T0 + 50 * i, expires_at=T0 + 50 * i + 5)
        record.version = 1
        await store.commit(record, expected=0)
        records.append(record)
    await store.close()
    _downgrade_to_schema_1(path)

    store = await _store(path)
    try:
        assert await _schema_version(store) == SCHEMA_VERSION == 3
        listed = await store.list(limit=2)
        ids = [r.id for r in listed.items]
        while listed.next_cursor:
            listed = await store.list(limit=2, cursor=listed.next_cursor)
            ids += [r.id for r in listed.items]
        assert ids == [r.id for r in reversed(records)]
        due = await store.claim_due("expire", T0 + 50 * 2 + 5, 10)
        assert [d.session_id for d in due] == [r.id for r in records[:3]]
        # Updates after the migration keep the minute columns and the exact ones in step.
        newer = msgspec.structs.replace(records[0], version=2, last_activity=T0 + 1000)
        await store.commit(newer, expected=1)
        assert (await store.list(limit=1)).items[0].id == records[0].id
        since = await store.count(SessionFilter(updated_since=T0 + 150))
        assert since.total == 3  # records 3 and 4, and record 0 moved to T0 + 1000
        before = await store.count(SessionFilter(updated_before=T0 + 100))
        assert before.total == 1  # record 1 (record 0 moved)
    finally:
        await store.close()


async def test_the_write_ahead_log_stays_bounded(tmp_path: Path) -> None:
    """Checkpoints must complete while the loop keeps writing, or the -wal file grows forever
    (a bot that never pauses would fill the disk)."""
    from chatstate import Message, SessionKey, SessionManager
    from chatstate.stores.sqlite import WAL_SIZE_LIMIT

    path = tmp_path / "busy.db"
    async with SessionManager(f"sqlite:///{path}") as manager:
        for i in range(1200):
            async with manager.session(SessionKey.user("t", i % 40)) as s:
                s.append(Message(role="user", content="x" * 400),
                         Message(role="assistant", content="y" * 400))
        wal = path.with_name(path.name + "-wal").stat().st_size
    assert wal < 2 * WAL_SIZE_LIMIT, f"the WAL grew to {wal} bytes"


async def test_writes_return_to_the_loop_once_the_worker_has_handed_its_batch_over(
    tmp_path: Path,
) -> None:
    """While another connection holds the write lock, commits wait in the worker; once its
    batch is handed over, the callers' next commits run on the loop's connection again (a
    write counted as pending until its caller resumed kept every later write in the worker)."""
    path = tmp_path / "back.db"
    store = await _store(path)
    hops = 0
    run = store._run

    async def counting_run(fn, *, write=False):  # type: ignore[no-untyped-def]
        nonlocal hops
        hops += write
        return await run(fn, write=write)

    store._run = counting_run  # type: ignore[method-assign]
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        records = [new_record(f"test:user:b{i}", now=T0) for i in range(8)]

        async def writer(record) -> None:  # type: ignore[no-untyped-def]
            for version in range(1, 41):
                record.version = version
                await store.commit(record, expected=version - 1)

        tasks = [asyncio.create_task(writer(r)) for r in records]
        for _ in range(5):
            await asyncio.sleep(0)
        assert hops >= 1  # the lock was taken: the first writes went to the worker
        other.execute("COMMIT")
        await asyncio.gather(*tasks)
        assert hops < 40, f"{hops} of 320 commits went through the worker"
        for r in records:
            assert (await store.load(r.key)).version == 40  # type: ignore[union-attr]
    finally:
        other.close()
        await store.close()


async def test_checkpoints_follow_the_pages_written(tmp_path: Path) -> None:
    """Commits that rewrite the same few pages fill the log slowly: the store asks for a
    checkpoint (which holds writers off) after about CHECKPOINT_FRAMES log pages, not after
    a fixed number of commits."""
    from chatstate.stores.sqlite import CHECKPOINT_EVERY

    store = await _store(tmp_path / "ckpt.db")
    requests = 0
    request = store._request_checkpoint

    def counting_request() -> None:
        nonlocal requests
        requests += 1
        request()

    store._request_checkpoint = counting_request  # type: ignore[method-assign]
    try:
        records = [new_record(f"test:user:c{i}", now=T0) for i in range(2)]
        commits = 16 * CHECKPOINT_EVERY
        for n in range(commits):
            record = records[n % 2]
            record.version += 1
            await store.commit(record, expected=record.version - 1)
        # One log page or two per commit here: a checkpoint every ~1000 commits, not 256.
        assert 1 <= requests <= commits // CHECKPOINT_EVERY // 2, requests
    finally:
        await store.close()


async def test_a_schema_2_file_is_migrated_with_its_history_and_keyword_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    store = await _store(path)
    records = []
    for i in range(3):
        record = new_record(f"test:user:h{i}", now=T0 + i)
        record.version = 1
        history = HistoryChanges(append=[
            Message(role="user", content=f"hello number {i} from berlin", seq=1, tokens=5),
            Message(role="assistant", content=[{"type": "text", "text": f"reply {i} lisbon"}],
                    seq=2, turn_id="t1"),
            Message(role="user", content=f"order {i} refund", seq=3),
        ])
        await store.commit(record, expected=0, history=history)
        records.append(record)
    before = [await store.read_tail(r.ref, 10) for r in records]
    await store.close()
    _downgrade_to_schema_2(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?",
                        (records[1].id,)).fetchone() == (3,)
    conn.close()

    store = await _store(path)
    try:
        assert await _schema_version(store) == SCHEMA_VERSION == 3
        for record, old in zip(records, before, strict=True):
            assert await store.read_tail(record.ref, 10) == old
            assert await store.read_range(record.ref, 2, 3) == old[1:]
            assert await store.count_messages(record.ref) == 3
        found = await store.search_messages(records[2].ref, "berl")
        assert [m.seq for m in found] == [1]
        assert [m.seq for m in await store.search_messages(records[1].ref, "lisbon")] == [2]
        # New history after the migration: appended, searchable, dropped from the index.
        second = msgspec.structs.replace(records[0], version=2)
        await store.commit(second, expected=1, history=HistoryChanges(
            append=[Message(role="user", content="weather tomorrow", seq=4)],
            drop_messages_through=1,
        ))
        assert [m.seq for m in await store.read_tail(records[0].ref, 10)] == [2, 3, 4]
        assert [m.seq for m in await store.search_messages(records[0].ref, "weather")] == [4]
        assert await store.search_messages(records[0].ref, "berlin") == []
        assert await store.delete(records[1].key)
        assert await store.count_messages(records[1].ref) == 0
        await _assert_search_index_intact(store)
    finally:
        await store.close()


async def test_keyword_search_through_the_compact_index(tmp_path: Path) -> None:
    """The index keeps which messages hold a token (not where): a word of several tokens must
    also appear as it is; replaced and dropped messages leave the index."""
    store = await _store(tmp_path / "search.db")
    try:
        record = new_record("test:user:s", now=T0)
        record.version = 1
        texts = ["Try gpt-4o tonight", "gpt and 4o apart", "Hello, Berlin!", "hello lisbon",
                 "Kein Ärger-Frei heute"]
        await store.commit(record, expected=0, history=HistoryChanges(append=[
            Message(role="user", content=text, seq=i + 1) for i, text in enumerate(texts)
        ]))
        ref = record.ref

        async def seqs(query: str) -> list[int]:
            return [m.seq for m in await store.search_messages(ref, query)]

        assert await seqs("gpt-4o") == [1]
        assert await seqs("GPT 4O") == [2, 1]
        assert await seqs("hello,") == [4, 3]
        assert await seqs("berl hel") == [3]
        assert await seqs("lis") == [4]
        assert await seqs("bon") == []
        assert await seqs("ärger-frei") == [5]
        assert [m.content for m in await store.search_messages(ref, "hello", limit=1)] == [
            "hello lisbon"
        ]
        # Replace message 2 and drop message 1: the index follows.
        record.version = 2
        await store.commit(record, expected=1, history=HistoryChanges(
            append=[Message(role="user", content="nothing here", seq=2)],
            drop_messages_through=1,
        ))
        assert await seqs("gpt") == []
        assert await seqs("nothing") == [2]
        await _assert_search_index_intact(store)
    finally:
        await store.close()


async def test_a_write_failing_halfway_on_the_loop_undoes_only_itself(tmp_path: Path) -> None:
    """The writes of one event-loop iteration share a transaction on the loop's connection:
    a job that fails after writing rolls it back, its own write stays undone and the others
    run again; a database error fails every write of the transaction."""
    store = await _store(tmp_path / "half.db")
    try:

        def put(name: str, fail: BaseException | None = None):  # type: ignore[no-untyped-def]
            def job(conn: sqlite3.Connection) -> str:
                conn.execute("INSERT INTO counters (name, value) VALUES (?, 1) "
                             "ON CONFLICT (name) DO UPDATE SET value = value + 1", (name,))
                if fail is not None:
                    raise fail
                return name

            return store._write(job, f"test:user:{name}")

        results = await asyncio.gather(
            put("a"), put("b"), put("bad", RuntimeError("halfway")), put("c"),
            return_exceptions=True,
        )
        assert results[:2] == ["a", "b"] and results[3] == "c"
        assert isinstance(results[2], RuntimeError)
        assert await store.read_counters() == {"a": 1, "b": 1, "c": 1}

        results = await asyncio.gather(
            put("d"), put("e", sqlite3.OperationalError("disk I/O error")), put("f"),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailable) for r in results[:2])
        assert await store.read_counters() == {"a": 1, "b": 1, "c": 1, **{
            name: 1 for name, r in zip("df", (results[0], results[2]), strict=True)
            if r == name}}
        # A write in a later iteration is not affected.
        assert await put("g") == "g"
    finally:
        await store.close()


class _CountingConnection:
    """Stands in for one of the store's connections and counts the statements run on it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements = 0

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        self.statements += 1
        return self.conn.execute(sql, params)


@pytest.mark.parametrize("cache", [0, 100])
async def test_loads_during_the_loops_transaction_never_see_its_uncommitted_writes(
    tmp_path: Path, cache: int
) -> None:
    """While an iteration's writes are uncommitted on the loop's connection, a load of a
    session they touch reads the committed record on the other connection; a load of any
    other session reads on the loop's connection (warm cache, the same committed bytes).
    With the record cache on, "a" comes from there: its committed bytes too, and no SQL."""
    store = await _store(tmp_path / "reads.db", cache=cache)
    try:
        for name in ("a", "b"):
            record = new_record(f"t:user:{name}")
            record.data = {"v": 1}
            record.version = 1
            await store.commit(record, expected=0)
        loaded_a = await store.load("t:user:a")
        assert loaded_a is not None
        reads = store._reads
        assert reads is not None
        counting = _CountingConnection(reads)
        store._reads = counting  # type: ignore[assignment]
        seen: dict[str, object] = {}

        async def write_a() -> None:
            loaded_a.data = {"v": 2}
            loaded_a.version = 2
            await store.commit(loaded_a, expected=1)

        async def read_both() -> None:
            # Runs in the same iteration, after write_a's statement and before its COMMIT.
            assert store._loop_tx is not None and store._loop_tx.writes == 1
            a, b = await store.load("t:user:a"), await store.load("t:user:b")
            assert a is not None and b is not None
            seen.update(a=(a.version, a.data), b=(b.version, b.data))

        await asyncio.gather(write_a(), read_both())
        assert seen == {"a": (1, {"v": 1}), "b": (1, {"v": 1})}
        # Without the cache, only the load of "a" needed the other connection.
        assert counting.statements == (0 if cache else 1)
        after = await store.load("t:user:a")
        assert after is not None and (after.version, after.data) == (2, {"v": 2})
    finally:
        if isinstance(store._reads, _CountingConnection):
            store._reads = store._reads.conn  # type: ignore[assignment]
        await store.close()


async def test_small_history_reads_run_on_the_loop_and_large_ones_in_the_worker(
    tmp_path: Path,
) -> None:
    from chatstate.model import Summary
    from chatstate.stores.sqlite import LOOP_READ_ROWS

    store = await _store(tmp_path / "reads.db")
    hops = 0
    run = store._run

    async def counting_run(fn, *, write=False):  # type: ignore[no-untyped-def]
        nonlocal hops
        hops += 1
        return await run(fn, write=write)

    try:
        record = new_record("test:user:r", now=T0)
        record.version = 1
        total = LOOP_READ_ROWS + 10
        await store.commit(record, expected=0, history=HistoryChanges(
            append=[Message(role="user", content=f"m{i}", seq=i) for i in range(1, total + 1)],
            summaries=[Summary(start_seq=1, end_seq=e, content=f"s{e}") for e in range(1, total)],
        ))
        store._run = counting_run  # type: ignore[method-assign]
        tail = await store.read_tail(record.ref, 100)
        assert [m.seq for m in tail] == list(range(total - 99, total + 1))
        assert [m.content for m in await store.read_range(record.ref, 5, 7)] == ["m5", "m6", "m7"]
        assert hops == 0
        everything = await store.read_tail(record.ref, total + 5)
        assert [m.seq for m in everything] == list(range(1, total + 1))
        assert hops == 1
        summaries = await store.list_summaries(record.ref)  # more than the loop reads
        assert [s.end_seq for s in summaries] == list(range(1, total))
        assert hops == 2
        other = new_record("test:user:r2", now=T0)
        other.version = 1
        await store.commit(other, expected=0, history=HistoryChanges(
            summaries=[Summary(start_seq=1, end_seq=4, content="short")]))
        hops = 0
        assert [s.content for s in await store.list_summaries(other.ref)] == ["short"]
        assert hops == 0
    finally:
        await store.close()


async def test_the_write_ahead_log_stays_bounded_under_concurrent_updates(tmp_path: Path) -> None:
    """64 updates at a time keep a write transaction open on the loop almost always; the
    checkpoint must still get its turn, or the -wal file grows with every transaction."""
    from chatstate.stores.sqlite import WAL_SIZE_LIMIT

    path = tmp_path / "busy64.db"
    store = await _store(path)
    try:
        pad = "x" * 1500  # about two sessions per page: each transaction writes ~32 pages

        async def writer(i: int) -> None:
            record = new_record(f"test:user:w{i}", now=T0)
            for version in range(1, 401):
                record = msgspec.structs.replace(
                    record, version=version, data={"n": version, "pad": pad})
                await store.commit(record, expected=version - 1)

        await asyncio.gather(*(writer(i) for i in range(64)))
        wal = path.with_name(path.name + "-wal").stat().st_size
        # A checkpoint after about CHECKPOINT_FRAMES pages (4 MB): far below the limit.
        assert wal < WAL_SIZE_LIMIT // 2, f"the WAL grew to {wal} bytes"
    finally:
        await store.close()


async def test_writes_wait_for_a_checkpoint_on_the_loop_without_a_thread_hop(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path / "wait.db")
    hops = checkpoints = 0
    run, request = store._run, store._request_checkpoint

    async def counting_run(fn, *, write=False):  # type: ignore[no-untyped-def]
        nonlocal hops
        hops += write
        return await run(fn, write=write)

    def counting_request() -> None:
        nonlocal checkpoints
        checkpoints += 1
        request()

    store._run = counting_run  # type: ignore[method-assign]
    store._request_checkpoint = counting_request  # type: ignore[method-assign]
    try:

        async def writer(i: int) -> None:
            record = new_record(f"test:user:k{i}", now=T0)
            for version in range(1, 101):
                record.version = version
                await store.commit(record, expected=version - 1)

        await asyncio.gather(*(writer(i) for i in range(64)))
        assert checkpoints >= 2
        assert hops == 0
        assert (await store.load("test:user:k7")).version == 100  # type: ignore[union-attr]
    finally:
        await store.close()


@pytest.mark.parametrize("shared", ["false", "true"])
async def test_index_columns_follow_the_record_on_insert_and_on_every_update(
    tmp_path: Path, shared: str
) -> None:
    """The statements compute the due columns and the minute buckets from the row: they match
    `_bucket` (Python's floor) at minute edges and fractions, in the same minute (no index
    column assigned) and across minutes, and the due times are kept only while active."""
    from chatstate.model import Status
    from chatstate.stores.sqlite import _bucket

    store = await _store(tmp_path / "cols.db", shared=shared)
    columns = (
        "status, platform, scope, last_activity, due_warn, due_expire, due_purge, activity_min, "
        "due_warn_min, due_expire_min, due_purge_min"
    )

    async def stored(key: str) -> tuple[object, ...]:
        row: tuple[object, ...] = await store._run(
            lambda c: c.execute(
                f"SELECT {columns} FROM sessions WHERE key = ? AND current = 1", (key,)
            ).fetchone()
        )
        return row

    def expected(r: SessionRecord) -> tuple[object, ...]:
        active = r.status is Status.ACTIVE
        warn, expire = (r.warn_at, r.expires_at) if active else (None, None)
        return (
            r.status.value, "tg", "user", r.last_activity, warn, expire, r.purge_at,
            _bucket(r.last_activity), _bucket(warn), _bucket(expire), _bucket(r.purge_at),
        )

    try:
        times = [
            (1_700_000_000.0, None, None, None),  # on a minute edge
            (1_700_000_000.25, 1_700_000_059.999, 1_700_000_060.0, None),  # same minute
            (1_700_000_075.5, 1_700_000_119.75, 1_700_000_300.125, 1_700_086_400.0),  # moved
            (-61.5, -0.25, 59.999999, -120.0),  # before 1970: floor, not truncation
        ]
        for n, statuses in enumerate([(Status.ACTIVE,), (Status.ACTIVE, Status.CLOSED)]):
            key = f"tg:user:{n}"
            record = new_record(key)
            lease = None
            for status in statuses:
                for last, warn, expire, purge in times:
                    if shared == "true":
                        lease, _ = await store.lease_and_load(key, "me", 30.0)
                        assert lease is not None
                    record.last_activity, record.warn_at = last, warn
                    record.expires_at, record.purge_at = expire, purge
                    record.status = status
                    record.version += 1
                    await store.commit(
                        record, expected=record.version - 1, lease=lease, release=True
                    )
                    assert await stored(key) == expected(record), (status, last)
    finally:
        await store.close()
