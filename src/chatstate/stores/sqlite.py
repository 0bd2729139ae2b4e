"""SQLiteStore: the embedded durable default (`sqlite:///chatstate.db`).

Durability. The database runs in WAL mode with ``synchronous=NORMAL`` by default: every commit
that returns has been written to the write-ahead log, so it survives a crash or kill of the
process; a power loss or an operating-system crash may lose the last commits (never corrupt the
file). ``sqlite:///chatstate.db?synchronous=full`` also syncs the log to disk on every commit,
so that returned commits survive a power loss too, at the cost of one fsync per transaction.

Where the work runs. A worker thread per store owns the write connection: commits that arrive
together are written there in one transaction (group commit); each commit's compare-and-set is
checked on its own, and a refused one (conflict, lost lease) has written nothing, so the others
go on. The event loop has connections of its own that never wait (busy timeout 0) and never
checkpoint: point reads (`load`, `load_by_id`) and history reads of a few hundred rows run
there, since a read in WAL mode does not wait for writers. When no fsync is due (synchronous
normal or off) and the worker has no write pending, leases and commits are written there too:
the first write of an event-loop iteration begins a transaction, every write of the iteration
runs in it at once, and its COMMIT runs before any of them returns (group commit without a
thread hop: the two thread wake-ups of a hop cost more than the page written to the log). Reads
meanwhile see only committed data. They run on the loop's second connection, except a load by
key of a session that the open transaction has not written: that one stays on the first
connection, where it reads the same committed bytes and whose page cache survives its own
commits (the second's is dropped whenever the file changes). Whatever would wait (the write
lock held by another process, synchronous=full, checkpoints) goes to the worker. A write
always yields to the event loop at least once, as a hop would. Checkpoints run in the worker
after about 1,000 pages were written to the log.

A load by key usually runs no SQL at all: the store remembers the stored bytes of the records it
last committed or read (``cache``, 10,000 sessions by default), and decodes those while it is
the only store on the file and no other connection committed to it (SQLite's data_version),
which it checks once per event-loop iteration (see `SQLiteStore._usable_cache`).

Several processes may open one file; writers wait for each other up to `busy_timeout` seconds
before `StoreUnavailable` is raised. Leases (kept in the file) serialise the updates of one key
across processes, but they cost a second write per update, so by default (``shared=auto``) the
store asks for them only while another store has the file open: every open store holds a read
lock on ``<file>-lock`` (an open-file-description lock, Linux), and `shared` is true while the
kernel reports a lock that is not ours. An update that began alone and commits once another
store has opened the file is refused (`ConflictError`) if that store holds a live lease on the
key, so a lease holder never loses to a writer without one; compare-and-set guards every commit
either way. Where such locks do not exist, ``auto`` means leases always.

Options (URL query or keyword): ``synchronous`` (normal | full | off), ``busy_timeout``
(seconds, default 10), ``fts`` (true | false: keyword search through FTS5 when available),
``shared`` (auto by default, see above; ``true``: leases always; ``false`` promises that only
this store opens the file: no leases, no lock file), ``cache`` (sessions whose stored bytes are
remembered, default 10,000; 0 turns it off).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import math
import os
import queue
import re
import sqlite3
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

try:
    import fcntl
except ImportError:  # Windows: no open-file-description locks, so shared=auto means leases
    fcntl = None  # type: ignore[assignment]

import msgspec

from ..clock import SYSTEM_CLOCK, Clock
from ..codec import Codec
from ..errors import (
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    InvalidDataError,
    LeaseLost,
    SchemaError,
    StoreUnavailable,
)
from ..model import HistoryChanges, Message, SessionRecord, SessionRef, Status, Summary
from ._common import check_kind, decode_cursor, encode_cursor, flow_step_name, prefix_upper_bound
from .base import (
    DUE_KINDS,
    DueItem,
    Lease,
    Page,
    SessionFilter,
    SessionStats,
    Store,
    corrupt_with_lease,
)
from .record_cache import DEFAULT_SIZE, RecordCache
from .url import query_options

log = logging.getLogger("chatstate.stores.sqlite")

T = TypeVar("T")

SCHEMA_VERSION = 3
"""Version of the table layout below. A file with a newer version is refused (SchemaError); an
older one is migrated when opened (every process on the file must run this code from then on).
1 -> 2: the activity and due indexes are on minute buckets (`*_min` columns) instead of the exact
times, so that the updates of a chat within a minute leave the index pages alone (one page
written per commit instead of three or four); queries filter and order on the exact columns.
2 -> 3: compact history. Each session has a stable integer `sid` (the sessions table's rowid);
a message's row is keyed by ``sid << 32 | seq`` (one B-tree, no index, no session id per
row), holds its body in the compact positional form (`Codec.pack_message`) and, while keyword
search is on, its text in `body` (out of the packed form, not twice), which the FTS5 index
reads as its external content instead of keeping a copy."""

BUCKET_SECONDS = 60.0

APP_ID = "chatstate"
MAX_BATCH = 256  # jobs taken from the queue into one transaction
WAL_SIZE_LIMIT = 16 * 1024 * 1024  # bytes the log file is truncated to after a checkpoint
# Checkpoints (in the worker) follow the size of the log: after each one the store knows how
# many log frames (pages) its commits wrote, and it asks for the next one after about
# CHECKPOINT_FRAMES frames (SQLite's own default). A unit is a commit or a history message.
CHECKPOINT_FRAMES = 1000
CHECKPOINT_EVERY = 256  # units before the first checkpoint
CHECKPOINT_EVERY_MIN, CHECKPOINT_EVERY_MAX = 64, 2048
# Page cache per connection, in KiB (SQLite's own default is 2,000): a session row is a few
# hundred bytes, so 10,000 active sessions and their indexes are about 7 MB of pages, and
# with the default every load of a chat that is not among the last few hundred reads from
# the OS again. Pages are allocated only as the file grows into them.
CACHE_KIB = -32768

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chatstate_meta (name TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS sessions (
    sid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    current INTEGER NOT NULL,
    status TEXT NOT NULL,
    platform TEXT NOT NULL,
    scope TEXT NOT NULL,
    flow TEXT,
    step TEXT,
    created_at REAL NOT NULL,
    last_activity REAL NOT NULL,
    expires_at REAL,
    warn_at REAL,
    purge_at REAL,
    close_reason TEXT,
    messages INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    labels TEXT NOT NULL DEFAULT '{}',
    version INTEGER NOT NULL,
    blob BLOB NOT NULL,
    due_warn REAL,
    due_expire REAL,
    due_purge REAL,
    activity_min REAL,
    due_warn_min REAL,
    due_expire_min REAL,
    due_purge_min REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS sessions_current ON sessions (key) WHERE current = 1;
CREATE INDEX IF NOT EXISTS sessions_activity_min ON sessions (activity_min DESC);
CREATE INDEX IF NOT EXISTS sessions_due_warn_min ON sessions (due_warn_min)
    WHERE due_warn_min IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_due_expire_min ON sessions (due_expire_min)
    WHERE due_expire_min IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_due_purge_min ON sessions (due_purge_min)
    WHERE due_purge_min IS NOT NULL;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    body TEXT,
    blob BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS summaries (
    session_id TEXT NOT NULL,
    end_seq INTEGER NOT NULL,
    start_seq INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (session_id, end_seq, start_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    raw BLOB NOT NULL
);
"""


def _sql_bucket(column: str) -> str:
    """SQL for `_bucket(column)` (floor to the minute, the same double arithmetic)."""
    q = f"{column} / {BUCKET_SECONDS}"
    return f"(CAST({q} AS INTEGER) - (CAST({q} AS INTEGER) > {q})) * {BUCKET_SECONDS}"


# 1 -> 2: bucket columns and their indexes replace the indexes on exact times.
_MIGRATE_1_TO_2 = [
    "ALTER TABLE sessions ADD COLUMN activity_min REAL",
    "ALTER TABLE sessions ADD COLUMN due_warn_min REAL",
    "ALTER TABLE sessions ADD COLUMN due_expire_min REAL",
    "ALTER TABLE sessions ADD COLUMN due_purge_min REAL",
    "UPDATE sessions SET "
    + ", ".join(
        f"{column}_min = {_sql_bucket(column)}"
        for column in ("due_warn", "due_expire", "due_purge")
    )
    + f", activity_min = {_sql_bucket('last_activity')}",
    "DROP INDEX IF EXISTS sessions_activity",
    "DROP INDEX IF EXISTS sessions_due_warn",
    "DROP INDEX IF EXISTS sessions_due_expire",
    "DROP INDEX IF EXISTS sessions_due_purge",
]

# 2 -> 3: sessions get a stable integer key (`sid`), messages are keyed by sid << 32 | seq and
# the keyword index reads its text from messages.body. Old message blobs (JSON) stay readable.
_SESSION_COLUMNS = (
    "id, key, current, status, platform, scope, flow, step, created_at, last_activity, "
    "expires_at, warn_at, purge_at, close_reason, messages, tokens, labels, version, blob, "
    "due_warn, due_expire, due_purge, activity_min, due_warn_min, due_expire_min, due_purge_min"
)
_MIGRATE_2_TO_3 = [
    "ALTER TABLE sessions RENAME TO sessions_v2",
    "ALTER TABLE messages RENAME TO messages_v2",
    "DROP INDEX IF EXISTS sessions_current",
    "DROP INDEX IF EXISTS sessions_activity_min",
    "DROP INDEX IF EXISTS sessions_due_warn_min",
    "DROP INDEX IF EXISTS sessions_due_expire_min",
    "DROP INDEX IF EXISTS sessions_due_purge_min",
    # _SCHEMA (run next) creates the new tables; `_migrate_2_to_3` copies the rows.
]

# Keyword search over messages.body (external content: the index keeps no copy of the text);
# rowid = messages.id. A message's body is set exactly when it is in the index. The index
# records which messages hold a token, not where (detail=none) nor how many tokens each has
# (columnsize=0): a fifth of the size of a full one. A query word is a set of prefix tokens;
# where a word has several (e-mail, gpt-4o), the message must also contain the word itself.
_FTS_SCHEMA = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING "
    "fts5(body, content='messages', content_rowid='id', detail=none, columnsize=0)"
)
_FTS_TOKEN = re.compile(r"[^\W_]+")  # what the unicode61 tokenizer keeps (letters, digits)

SEQ_BITS = 32
SEQ_MASK = (1 << SEQ_BITS) - 1
_SID = "(SELECT sid FROM sessions WHERE id = ?1)"

_encode_json = msgspec.json.encode


def _lower(text: Any) -> Any:
    return text.lower() if isinstance(text, str) else text

def _bucket(at: float | None) -> float | None:
    """The minute an index entry is filed under (see SCHEMA_VERSION)."""
    return None if at is None else math.floor(at / BUCKET_SECONDS) * BUCKET_SECONDS

_SYNC_MODES = {"normal": "NORMAL", "full": "FULL", "off": "OFF", "extra": "EXTRA"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# ---------------------------------------------------------------------------------------------
# The worker thread

# What a write job raises on purpose, before it has written anything: the job fails alone and
# the other jobs of its transaction go on. Any other exception rolls the transaction back.
_REFUSALS = (ConflictError, LookupError)


class _Job:
    __slots__ = ("fn", "future", "loop", "settled", "write")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        write: bool,
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        settled: Callable[[], None] | None = None,
    ) -> None:
        self.fn = fn
        self.write = write
        self.future = future
        self.loop = loop
        self.settled = settled  # called on the loop when the result is handed over


_Result = tuple[_Job, Any, BaseException | None]
_Opened = tuple[bool, sqlite3.Connection | None, sqlite3.Connection | None]


class _LoopTx:
    """The write transaction of one event-loop iteration on the loop's connection."""

    __slots__ = ("error", "keys", "lost", "writes")

    def __init__(self) -> None:
        self.error: BaseException | None = None  # the COMMIT (or a statement) failed
        self.lost = False  # rolled back for another job's failure: run again
        self.writes = 0
        # The session keys its writes touch: a load of any other key reads the same on this
        # connection as on a fresh one (see `SQLiteStore.load`).
        self.keys: set[str] = set()


def _resolve(results: list[_Result]) -> None:
    """Runs on the event loop: hand every result of one batch to its caller."""
    for job, value, error in results:
        if job.settled is not None:
            job.settled()
        future = job.future
        if future.done():
            continue  # the caller was cancelled; the job's effect (if a write) still stands
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


class _Worker(threading.Thread):
    """Owns the write connection; runs jobs in order, the writes of one batch in one
    transaction (group commit) without a SAVEPOINT per job: a write job either refuses before
    writing (`_REFUSALS`) or its failure rolls the transaction back and the others run again."""

    def __init__(self, path: str, describe: str) -> None:
        super().__init__(name=f"chatstate-sqlite {describe}", daemon=True)
        self.path = path
        self.describe = describe
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.conn: sqlite3.Connection | None = None

    def run(self) -> None:
        get, get_nowait = self.jobs.get, self.jobs.get_nowait
        stop = False
        while not stop:
            job = get()
            if job is None:
                break
            batch = [job]
            # Everything already queued joins this transaction (one commit for all of them).
            while len(batch) < MAX_BATCH:
                try:
                    more = get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            results: list[_Result] = []
            checkpoints = [j for j in batch if j.fn is _checkpoint]
            if checkpoints:  # never inside a transaction: after this batch's commit
                batch = [j for j in batch if j.fn is not _checkpoint]
                self._run_batch(batch, results)
                self._run_batch(checkpoints, results)
            else:
                self._run_batch(batch, results)
            self._deliver(results)
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    @staticmethod
    def _deliver(results: list[_Result]) -> None:
        """One wake-up of the event loop per batch (per loop, when several loops use one store)."""
        loop = results[0][0].loop
        if all(r[0].loop is loop for r in results):
            groups = [(loop, results)]
        else:
            by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
            for r in results:
                by_loop.setdefault(r[0].loop, []).append(r)
            groups = list(by_loop.items())
        for target, items in groups:
            try:
                target.call_soon_threadsafe(_resolve, items)
            except RuntimeError:
                pass  # that event loop is closed: nobody is waiting any more

    def _run_batch(self, batch: list[_Job], results: list[_Result]) -> None:
        run_batch(self.conn, batch, results, self.describe)



def run_batch(
    conn: sqlite3.Connection | None, batch: list[_Job], results: list[_Result], describe: str,
    *, begun: bool = False,
) -> None:
    """Run jobs in order, the writes in one transaction (`begun`: BEGIN IMMEDIATE is done).
    A write job either refuses before writing (`_REFUSALS`: it fails alone) or its failure
    rolls the transaction back: after a database error every write of the batch fails, after
    any other error the others run again without the failing job."""
    if not batch:
        return
    if conn is None or not any(job.write for job in batch):
        for job in batch:
            try:
                results.append((job, job.fn(conn), None))  # type: ignore[arg-type]
            except BaseException as exc:
                results.append((job, None, _translate(describe, exc)))
        return
    if not begun:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = _unavailable(describe, exc)
            for job in batch:
                if job.write:
                    results.append((job, None, error))
                else:
                    run_batch(conn, [job], results, describe)
            return
    done: list[_Result] = []
    for index, job in enumerate(batch):
        try:
            done.append((job, job.fn(conn), None))
        except _REFUSALS as exc:
            done.append((job, None, exc))  # refused before writing: the others go on
        except BaseException as exc:
            if not job.write:
                done.append((job, None, _translate(describe, exc)))  # a read changed nothing
                continue
            _rollback(conn)
            if isinstance(exc, sqlite3.Error):
                # The database failed (disk, lock): none of this batch's writes happened.
                error = _unavailable(describe, exc)
                for j, value, err in done:
                    results.append((j, None, error) if j.write else (j, value, err))
                results.append((job, None, error))
                for j in batch[index + 1:]:
                    if j.write:
                        results.append((j, None, error))
                    else:
                        run_batch(conn, [j], results, describe)
                return
            # A job failed unexpectedly, perhaps halfway: run the others again without it.
            results.append((job, None, exc))
            run_batch(conn, [j for j in batch if j is not job], results, describe)
            return
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        error = _unavailable(describe, exc)
        done = [(j, None, error) if j.write and err is None else (j, v, err)
                for j, v, err in done]
    results.extend(done)


def _translate(describe: str, exc: BaseException) -> BaseException:
    return _unavailable(describe, exc) if isinstance(exc, sqlite3.Error) else exc


def _checkpoint(conn: sqlite3.Connection) -> Any:
    """Copy committed log frames into the database file and start the log over.

    A PASSIVE checkpoint never completes while the loop's connection keeps appending, so the
    log would grow without bound; RESTART waits (in this worker, within the busy timeout) for
    the writer of the moment to finish, and the loop's writes that meet the lock meanwhile go
    to this worker's queue. `journal_size_limit` then truncates the file."""
    return conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # SQLite already rolled back (e.g. after an I/O error)


def _unavailable(describe: str, exc: BaseException) -> StoreUnavailable:
    text = str(exc)
    if "locked" in text or "busy" in text:
        hint = "another process held the database too long; raise busy_timeout"
    else:
        hint = "check the disk and the file's permissions"
    error = StoreUnavailable(f"SQLite database {describe} failed: {text} ({hint})")
    error.__cause__ = exc
    return error


# ---------------------------------------------------------------------------------------------
# The store


def _share_option(value: Any) -> bool | None:
    if isinstance(value, str) and value.lower() == "auto":
        return None
    try:
        return _bool_option("shared", value)
    except ConfigurationError:
        raise ConfigurationError(
            f"option shared={value!r} must be auto (leases while another process has the file "
            "open), true (leases always) or false (only this process opens the file)"
        ) from None


# Open-file-description locks (Linux): unlike POSIX record locks they belong to one open() of
# the file, so two stores in one process see each other too. Every open store holds a read lock
# on byte 0 of <file>-lock; asking the kernel whether a write lock could be taken tells whether
# another store holds one.
_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None) if fcntl is not None else None
_OFD_GETLK: int | None = getattr(fcntl, "F_OFD_GETLK", None) if fcntl is not None else None
_FLOCK = "hhqqi4x"  # struct flock on Linux: type, whence, start, len, pid (0 for OFD locks)


def _lock_file(path: str) -> int | None:
    """Open <path>-lock and take the shared read lock; None where OFD locks do not exist."""
    if fcntl is None or _OFD_SETLK is None or _OFD_GETLK is None:
        return None
    fd = os.open(path + "-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.fcntl(fd, _OFD_SETLK, struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, 0, 1, 0))
    except OSError:
        os.close(fd)
        return None  # e.g. a file system without such locks: leases always
    return fd


def _alone(fd: int) -> bool:
    """True when no other store holds its read lock on the lock file."""
    assert fcntl is not None and _OFD_GETLK is not None
    answer = fcntl.fcntl(fd, _OFD_GETLK, _WRITE_LOCK_QUERY)
    return int(struct.unpack_from("h", answer)[0]) == fcntl.F_UNLCK


_WRITE_LOCK_QUERY = (
    struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0) if fcntl is not None else b""
)


def _int_option(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value))
    except ValueError:
        raise ConfigurationError(f"option {name}={value!r} must be a whole number") from None


def _bool_option(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"option {name}={value!r} must be true or false")


class SQLiteStore(Store):
    """Sessions in one SQLite file. See the module docstring for durability and concurrency."""

    codec_format = "json"

    def __init__(
        self,
        path: str = "chatstate.db",
        *,
        codec: Codec | None = None,
        synchronous: str = "normal",
        busy_timeout: float = 10.0,
        fts: bool = True,
        shared: bool | str = "auto",
        cache: int = DEFAULT_SIZE,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(codec=codec)
        size = _int_option("cache", cache)
        if size < 0:
            raise ConfigurationError(f"cache={cache!r}: give a number of sessions >= 0 (0: none)")
        # The stored bytes of recent records, used while this store is alone on the file
        # (see `_usable_cache`); None when turned off.
        self._cache: RecordCache | None = RecordCache(size) if size else None
        self._cache_state: bool | None = None  # `_usable_cache`'s answer in this iteration
        self._data_version: int | None = None  # the loop connection's, at the last check
        # True/False fix whether the engine takes leases; None (auto) decides per update.
        self._share: bool | None = _share_option(shared)
        self._lock_fd: int | None = None  # the read lock on <file>-lock (auto mode, open)
        self._shared_now: bool | None = None  # `shared` in this event-loop iteration
        mode = _SYNC_MODES.get(str(synchronous).lower())
        if mode is None:
            raise ConfigurationError(
                f"synchronous={synchronous!r} is not valid; use normal (default: survives a "
                "process crash) or full (also survives a power loss)"
            )
        try:
            busy = float(busy_timeout)
        except (TypeError, ValueError):
            busy = -1.0
        if busy < 0:
            raise ConfigurationError(f"busy_timeout must be seconds >= 0, got {busy_timeout!r}")
        self.path = path
        self.synchronous = mode
        self.busy_timeout = busy
        self.clock = clock or SYSTEM_CLOCK
        self._want_fts = fts
        self._fts = False  # decided at open: FTS5 available and history not encrypted
        self._fts_table = False  # the file has a keyword index (messages leave it on delete)
        self._worker: _Worker | None = None
        self._opening: asyncio.Future[None] | None = None
        # The event loop's own connection (see "Where the work runs" in the module docstring).
        self._reader: sqlite3.Connection | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        # Writes may run on it only when they can never wait on the disk: no fsync per commit.
        self._loop_writes = mode in ("NORMAL", "OFF")
        self._writes_pending = 0  # write jobs queued for or running in the worker
        # Reads while the loop's write transaction is open (its writes not committed yet) run
        # on a connection of their own.
        self._reads: sqlite3.Connection | None = None
        # The write transaction open on the loop's connection (see `_write`).
        self._loop_tx: _LoopTx | None = None
        self._loop_tx_alone = False  # `_alone` at the start of the loop's current transaction
        self._loop_commits = 0  # units (see CHECKPOINT_FRAMES) since the last checkpoint
        self._checkpoint_every = CHECKPOINT_EVERY
        self._checkpointing = False
        self._checkpoint_wait: asyncio.Future[None] | None = None  # done with the checkpoint

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteStore:
        """`sqlite:///relative.db`, `sqlite:////absolute/path.db`, `sqlite:///:memory:`,
        with options as query parameters (`?synchronous=full&busy_timeout=30`)."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqlite":
            raise ConfigurationError(f"{url!r} is not a sqlite:// URL")
        if parts.netloc:
            raise ConfigurationError(
                f"{url!r}: a sqlite URL has no host; use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (three or four slashes)"
            )
        path = unquote(parts.path)
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ConfigurationError(
                f"{url!r} names no file; use e.g. sqlite:///chatstate.db"
            )
        merged: dict[str, Any] = {**query_options(url), **options}
        known = {"synchronous", "busy_timeout", "fts", "shared", "cache", "codec", "clock"}
        unknown = set(merged) - known
        if unknown:
            raise ConfigurationError(
                f"unknown sqlite:// option(s) {sorted(unknown)}; known: synchronous, "
                "busy_timeout, fts, shared, cache"
            )
        if "fts" in merged:
            merged["fts"] = _bool_option("fts", merged["fts"])
        return cls(path, **merged)

    @property
    def shared(self) -> bool:
        """Whether the engine should take leases: in auto mode, while another store has the
        file open (one system call: the kernel keeps the count)."""
        share = self._share
        if share is not None:
            return share
        fd = self._lock_fd
        if fd is None:
            return True
        share = self._shared_now
        if share is None:
            # Asked once per event-loop iteration (the engine asks on every update); an
            # update that began alone is still refused at commit if a lease appeared meanwhile.
            share = not _alone(fd)
            loop = asyncio._get_running_loop()
            if loop is not None:
                self._shared_now = share
                loop.call_soon(self._forget_shared)
        return share

    @shared.setter
    def shared(self, value: bool | str) -> None:
        self._share = _share_option(value)

    def _forget_shared(self) -> None:
        self._shared_now = None

    # -- lifetime ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._worker is not None:
            return
        if self._opening is not None:
            await asyncio.shield(self._opening)
            return
        loop = asyncio.get_running_loop()
        self._opening = loop.create_future()
        try:
            worker = _Worker(self.path, repr(self.path))
            worker.start()
            future: asyncio.Future[_Opened] = loop.create_future()
            worker.jobs.put(_Job(self._connect_job(worker), False, future, loop))
            try:
                self._fts, self._reader, self._reads = await future
            except BaseException:
                worker.jobs.put(None)
                raise
            self._reader_loop = loop
            self._worker = worker
            self._opening.set_result(None)
        except BaseException as exc:
            self._opening.set_exception(exc)
            self._opening.exception()  # retrieved: no "never retrieved" warning
            self._opening = None
            raise
        self._opening = None

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if self._loop_tx is not None:
            self._end_loop_tx(self._loop_tx)  # commit what the loop wrote in this iteration
        reader, self._reader, self._reader_loop = self._reader, None, None
        if reader is not None:
            reader.close()
        reads, self._reads = self._reads, None
        if reads is not None:
            reads.close()
        if self._cache is not None:
            self._cache.clear()
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)  # other stores see it at once (leases again only if needed)
        worker.jobs.put(None)
        await asyncio.get_running_loop().run_in_executor(None, worker.join, 10.0)
        self._checkpointing = False
        self._release_checkpoint_wait()

    def _connect_job(
        self, worker: _Worker
    ) -> Callable[[sqlite3.Connection | None], _Opened]:
        def connect(_: sqlite3.Connection | None) -> _Opened:
            conn = self._connect()
            worker.conn = conn
            reader = reads = None
            try:
                reader = self._connect_reader()
                reads = self._connect_reader()
                if self._share is None:
                    if self.path == ":memory:":
                        self._share = False  # no other connection can ever see it
                    else:
                        self._lock_fd = _lock_file(self.path)
                        if self._lock_fd is None:
                            self._share = True
            except BaseException:
                worker.conn = None
                conn.close()
                for extra in (reader, reads):
                    if extra is not None:
                        extra.close()
                raise
            return self._fts_enabled(conn), reader, reads

        return connect

    def _connect(self) -> sqlite3.Connection:
        where = repr(self.path)
        if self.path != ":memory:":
            directory = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(directory):
                raise ConfigurationError(
                    f"SQLite database {where}: directory {directory!r} does not exist; create it "
                    "or use another path"
                )
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=self.busy_timeout,
                check_same_thread=True,
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {where}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            # Python's case folding (SQLite's lower() knows ASCII only), for keyword search.
            conn.create_function("chatstate_lower", 1, _lower, deterministic=True)
            self._check_schema(conn, where)
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA cache_size = {CACHE_KIB}")
            self._create_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self) -> sqlite3.Connection | None:
        """The event loop's connection (none for :memory:, which is one per connection). It
        never waits (busy timeout 0: what would wait goes to the worker) and never checkpoints
        (the worker does, off the loop)."""
        if self.path == ":memory:":
            return None
        try:
            reader = sqlite3.connect(
                self.path, isolation_level=None, timeout=0, check_same_thread=False
            )
            reader.execute(f"PRAGMA synchronous = {self.synchronous}")
            reader.execute("PRAGMA wal_autocheckpoint = 0")
            reader.execute(f"PRAGMA cache_size = {CACHE_KIB}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        return reader

    def _read_now(
        self, sql: str, params: tuple[Any, ...], key: str | None = None
    ) -> builtins.list[Any] | None:
        """Rows of a point query read on this event loop, or None when it must go through the
        worker (another loop, :memory:, or SQLite asked to wait).

        The loop's own connection keeps its page cache across its commits; while it holds
        this iteration's uncommitted writes, reads go to the other one (whose cache SQLite
        drops whenever the file changed, so each read there costs a few page reads more),
        except a read of session `key` that none of those writes touched: it sees there
        exactly what it would see committed."""
        tx = self._loop_tx
        if tx is None or (key is not None and key not in tx.keys):
            reader = self._reader
        else:
            reader = self._reads
        if reader is None or self._reader_loop is not asyncio.get_running_loop():
            return None
        try:
            # fetchall steps to the end, so the read transaction ends with the statement and
            # the next read sees every commit that has returned.
            return reader.execute(sql, params).fetchall()
        except sqlite3.Error:
            return None  # busy or failing: the worker retries it (and reports a real failure)

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> set[str]:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
        ).fetchall()
        return {name for (name,) in rows}

    def _check_schema(self, conn: sqlite3.Connection, where: str) -> None:
        """Refuse, changing nothing, a file that is not ours or is newer than this code."""
        try:
            tables = self._tables(conn)
        except sqlite3.DatabaseError as exc:
            raise SchemaError(
                f"{where} is not an SQLite database ({exc}); point the store URL at a chatstate "
                "database or at a new file"
            ) from None
        if not tables:
            return
        if "chatstate_meta" not in tables:
            names = ", ".join(sorted(tables)[:8])
            raise SchemaError(
                f"{where} is an SQLite database of another application (tables: {names}); "
                "chatstate will not touch it. Use another file, e.g. sqlite:///chatstate.db"
            )
        meta = dict(conn.execute("SELECT name, value FROM chatstate_meta").fetchall())
        if meta.get("app") != APP_ID:
            raise SchemaError(f"{where} has a chatstate_meta table but was not made by chatstate")
        version = meta.get("schema_version")
        if not isinstance(version, int):
            raise SchemaError(f"{where} has no valid schema version ({version!r})")
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{where} was written by a newer chatstate (schema version {version}, this code "
                f"knows {SCHEMA_VERSION}); upgrade chatstate (pip install -U chatstate)"
            )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = self._tables(conn)
            version = None
            old_fts = False
            if "chatstate_meta" in tables:
                (version,) = conn.execute(
                    "SELECT value FROM chatstate_meta WHERE name = 'schema_version'"
                ).fetchone()
                if version < SCHEMA_VERSION:
                    log.info("migrating SQLite database %r from schema version %s to %s",
                             self.path, version, SCHEMA_VERSION)
                if version == 1:
                    for statement in _MIGRATE_1_TO_2:
                        conn.execute(statement)
                if version in (1, 2):
                    for statement in _MIGRATE_2_TO_3:
                        conn.execute(statement)
                    old_fts = "messages_fts" in tables
                    if old_fts:
                        conn.execute("ALTER TABLE messages_fts RENAME TO messages_fts_v2")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO chatstate_meta (name, value) VALUES "
                "('app', ?), ('schema_version', ?)",
                (APP_ID, SCHEMA_VERSION),
            )
            fts = False
            if self._want_fts:
                try:
                    conn.execute(_FTS_SCHEMA)
                    fts = True
                except sqlite3.OperationalError as exc:  # SQLite built without FTS5
                    log.info("keyword search falls back to a scan: %s", exc)
            if version in (1, 2):
                _migrate_2_to_3(conn, old_fts=old_fts, fts=fts)
                conn.execute(
                    "UPDATE chatstate_meta SET value = ? WHERE name = 'schema_version'",
                    (SCHEMA_VERSION,),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _fts_enabled(self, conn: sqlite3.Connection) -> bool:
        # Messages leave the index whenever the file has one (whoever indexed them); new ones
        # join it unless this store does not want it. Encrypted history must not leak into a
        # plain-text index.
        self._fts_table = "messages_fts" in self._tables(conn)
        return self._want_fts and self.codec.encryptor is None and self._fts_table

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        worker = self._worker
        if worker is None:
            await self.open()
            worker = self._worker
            assert worker is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not write:
            worker.jobs.put(_Job(fn, False, future, loop))
            return await future
        # Counted until the worker hands the result over (not until the caller resumes: the
        # callers of one batch resume one after another, and the later ones' next writes
        # would all still see a write pending and follow into the worker).
        self._writes_pending += 1
        worker.jobs.put(_Job(fn, True, future, loop, self._write_settled))
        return await future

    def _write_settled(self) -> None:
        self._writes_pending -= 1

    async def _write(self, fn: Callable[[sqlite3.Connection], T], key: str) -> T:
        """Run a write job that touches session `key`: on the loop's connection when that
        cannot wait (see the module docstring), in the transaction of this event-loop
        iteration; otherwise in the worker, grouped with the writes pending there.

        On the loop, the first write of an iteration begins a transaction and schedules its
        COMMIT (`_end_loop_tx`, next in the loop's queue); every write of the iteration runs
        in it at once, then yields: the COMMIT runs before any of them resumes, so a write
        returns only once it is committed. A job refused before writing (`_REFUSALS`) fails
        alone; one that fails otherwise, perhaps halfway, rolls the transaction back: after a
        database error every write in it fails, after any other error the others run again."""
        loop = self._reader_loop
        wait = self._checkpoint_wait
        while wait is not None and loop is asyncio.get_running_loop():
            # A checkpoint needs the write lock, which the loop's transactions would keep
            # from it: wait for it here (on the loop, no thread hop), then write together.
            await asyncio.shield(wait)
            loop, wait = self._reader_loop, self._checkpoint_wait
        conn = self._reader
        if (
            loop is None
            or conn is None
            or not self._loop_writes
            or self._writes_pending
            or self._checkpointing
            or loop is not asyncio.get_running_loop()
        ):
            return await self._run(fn, write=True)
        tx = self._loop_tx
        if tx is None:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                return await self._run(fn, write=True)  # another writer holds the lock: wait
            tx = self._loop_tx = _LoopTx()
            # Asked once per transaction, inside it (no other store can write a lease first).
            self._loop_tx_alone = self._lock_fd is None or _alone(self._lock_fd)
            loop.call_soon(self._end_loop_tx, tx)
        tx.keys.add(key)
        try:
            value = fn(conn)
        except _REFUSALS:
            raise  # refused before writing: the others' writes stand
        except BaseException as exc:
            self._loop_tx = None
            _rollback(conn)
            if isinstance(exc, sqlite3.Error):
                tx.error = _unavailable(repr(self.path), exc)
                raise tx.error from exc
            tx.lost = True
            raise
        tx.writes += 1
        await asyncio.sleep(0)  # `_end_loop_tx` runs first
        if self._loop_tx is tx:  # pragma: no cover - the COMMIT is always queued first
            self._end_loop_tx(tx)
        if tx.error is not None:
            raise tx.error
        if tx.lost:  # another job failed halfway: nothing of this transaction stands
            return await self._write(fn, key)
        return value

    def _end_loop_tx(self, tx: _LoopTx) -> None:
        """Commit the loop's transaction (scheduled when it began)."""
        if self._loop_tx is not tx:
            return  # rolled back already
        self._loop_tx = None
        conn = self._reader
        try:
            if conn is None:  # pragma: no cover - close() ends the transaction first
                raise sqlite3.OperationalError("the store was closed")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn is not None:
                _rollback(conn)
            tx.error = _unavailable(repr(self.path), exc)
            return
        self._count_loop_commits(tx.writes)

    def _count_loop_commits(self, n: int) -> None:
        self._loop_commits += n
        if self._loop_commits >= self._checkpoint_every and not self._checkpointing:
            self._request_checkpoint()

    def _request_checkpoint(self) -> None:
        """Copy the log into the database in the worker (the loop's connection never does).
        Asked between two of the loop's transactions; until it is done, the loop begins no
        other (its writes wait for it, see `_write`): a transaction open on the loop from one
        iteration to the next would keep it waiting for the write lock indefinitely."""
        worker, loop = self._worker, self._reader_loop
        if worker is None or loop is None:
            return
        self._checkpointing = True
        self._checkpoint_wait = loop.create_future()
        units, self._loop_commits = self._loop_commits, 0
        future: asyncio.Future[Any] = loop.create_future()

        def done(f: asyncio.Future[Any]) -> None:
            self._checkpointing = False
            self._release_checkpoint_wait()
            if f.cancelled():
                return
            if f.exception() is not None:
                log.warning("SQLite checkpoint of %r failed: %s", self.path, f.exception())
                return
            rows = f.result()
            frames = rows[0][1] if rows and rows[0][1] > 0 else 0
            if frames:  # the next one after about CHECKPOINT_FRAMES frames (at most 2x later)
                every = int(units * CHECKPOINT_FRAMES / frames)
                self._checkpoint_every = max(
                    CHECKPOINT_EVERY_MIN, min(every, 2 * self._checkpoint_every,
                                              CHECKPOINT_EVERY_MAX),
                )

        future.add_done_callback(done)
        worker.jobs.put(_Job(_checkpoint, False, future, loop))

    def _release_checkpoint_wait(self) -> None:
        wait, self._checkpoint_wait = self._checkpoint_wait, None
        if wait is not None and not wait.done():
            wait.set_result(None)

    def _decode(self, raw: bytes, key: str) -> SessionRecord:
        try:
            return self.codec.decode(raw, key)
        except CorruptRecordError as exc:
            exc.raw = raw  # always the stored bytes, so quarantine() can match them
            raise

    # -- records ----------------------------------------------------------------------------

    async def load(self, key: str) -> SessionRecord | None:
        cache = self._usable_cache()
        if cache is not None:
            raw = cache.get(key)
            if raw is not None:
                try:
                    return self.codec.decode(raw, key)
                except CorruptRecordError as exc:
                    cache.forget(key)
                    exc.raw = raw  # the same bytes as stored: quarantine() matches them
                    raise
        rows = self._read_now(_LOAD, (key,), key)
        if rows is None:
            # Read in the worker: a commit may land while the answer travels, so it is not
            # remembered.
            rows = await self._run(lambda conn: conn.execute(_LOAD, (key,)).fetchall())
            cache = None
        if not rows:
            return None
        raw = bytes(rows[0][0])
        record = self._decode(raw, key)
        if cache is not None:
            cache.put(key, raw)
        return record

    def _usable_cache(self) -> RecordCache | None:
        """The record cache, when its bytes are the stored ones in this event-loop iteration.

        That holds while no other store has the file open (`shared` is false: no other writer
        but this store) and no other connection committed to the file since the last check
        (SQLite's data_version tells, for the loop's connection, which sees every commit but
        its own, this store's worker's included). Asked once per iteration; the cache is
        emptied when either fails. A commit elsewhere within the iteration can make an entry
        stale until the next one, as a read made just before that commit would be, and every
        commit compares versions, so a stale entry can only cost a `ConflictError`."""
        loop = asyncio._get_running_loop()
        if loop is None or loop is not self._reader_loop:
            return None  # another event loop (or thread): it never touches the cache
        state = self._cache_state
        if state is None:
            state = self._cache_state = self._check_cache()
            loop.call_soon(self._forget_cache_state)
        return self._cache if state else None

    def _check_cache(self) -> bool:
        cache, reader = self._cache, self._reader
        if cache is None or reader is None:
            return False
        try:
            if self.shared:
                cache.clear()
                return False
            (version,) = reader.execute("PRAGMA data_version").fetchone()
        except (sqlite3.Error, OSError):
            cache.clear()
            return False
        if version != self._data_version:
            self._data_version = version
            cache.clear()
        return True

    def _forget_cache_state(self) -> None:
        self._cache_state = None

    async def load_by_id(self, session_id: str) -> SessionRecord | None:
        rows = self._read_now(_LOAD_BY_ID, (session_id,))
        if rows is None:
            rows = await self._run(
                lambda conn: conn.execute(_LOAD_BY_ID, (session_id,)).fetchall()
            )
        return self._decode(bytes(rows[0][1]), rows[0][0]) if rows else None

    async def commit(
        self,
        record: SessionRecord,
        *,
        expected: int,
        lease: Lease | None = None,
        release: bool = False,
        history: HistoryChanges | None = None,
    ) -> None:
        # Encode in the caller: bad data raises before anything reaches the database, and the
        # worker thread (which needs the GIL for Python work) only runs SQL.
        row = self._row(record)
        key, rid, version = record.key, record.id, record.version
        changes = self._history_rows(rid, history) if history else None
        clock = self.clock
        fts, fts_table = self._fts and self.codec.encryptor is None, self._fts_table
        fast = expected > 0 and version == expected + 1
        # Auto mode: an update that took no lease (it began alone) yields to a lease holder.
        lock_fd = self._lock_fd if lease is None and self._share is None else None
        if lease is None:
            lease_params: tuple[Any, ...] = ()
            cas, cas_params = _CAS_UPDATE, (*row, expected)
        else:
            lease_params = (lease.key, lease.owner, lease.token)
            cas, cas_params = _CAS_UPDATE_LEASED, (*row, expected, *lease_params)

        def job(conn: sqlite3.Connection) -> None:
            # Inside the transaction: a store opening meanwhile writes its leases after it.
            # Whether another store has the file open, as seen from this write transaction.
            guarded = lock_fd is not None and not (
                self._loop_tx_alone if conn is self._reader else _alone(lock_fd)
            )
            now = clock.now() if lease is not None or guarded else 0.0
            if guarded:
                sql, params = _CAS_UPDATE_UNLEASED, (*cas_params, now)
            else:
                sql, params = cas, (*cas_params, now) if lease else cas_params
            # The common case in one statement: same session, expected version (and lease held).
            if fast and (
                conn.execute(sql[0], params).rowcount or conn.execute(sql[1], params).rowcount
            ):
                pass
            else:
                # Nothing written yet: find out why, refuse, or write a new session.
                if lease is not None and not conn.execute(
                    _LEASE_HELD, (*lease_params, now)
                ).fetchall():
                    raise LeaseLost(lease.key, lease.token)
                if guarded and conn.execute(_LEASE_LIVE, (key, now)).fetchall():
                    raise ConflictError(key, expected)  # another store's update holds the key
                current = conn.execute(
                    "SELECT id, version FROM sessions WHERE key = ? AND current = 1", (key,)
                ).fetchall()
                actual = current[0][1] if current else 0
                if actual != expected or version != expected + 1:
                    raise ConflictError(key, expected, actual if current else None)
                if current and current[0][0] != rid:
                    # A new session of this key: the finished one stays, by id, with history.
                    conn.execute("UPDATE sessions SET current = 0 WHERE id = ?", (current[0][0],))
                platform, scope, _ = key.split(":", 2)  # as record.platform and .scope
                conn.execute(_UPSERT_SESSION, (*row, platform, scope))
            if lease is not None and release:
                conn.execute(_RELEASE_LEASE, (lease.key, lease.token))
            if changes is not None:
                _write_history(conn, fts, fts_table, rid, changes)

        if changes is not None:
            self._loop_commits += len(changes.messages)  # log pages: see CHECKPOINT_FRAMES
        cache = self._cache
        if cache is None:
            await self._write(job, key)
            return
        try:
            await self._write(job, key)
        except BaseException:
            cache.forget(key)  # refused, failed or cancelled: the next load reads the file
            raise
        if self._usable_cache() is not None:
            cache.put(key, row[_BLOB])
        else:
            cache.forget(key)  # committed from another event loop: the old bytes are stale

    def _history_rows(self, rid: str, history: HistoryChanges) -> _HistoryRows:
        pack, encode_summary = self.codec.pack_message, self.codec.encode_summary
        replace = msgspec.structs.replace
        # Encrypted history (an encryptor may be set after open) never goes into the index.
        fts = self._fts and self.codec.encryptor is None
        messages: builtins.list[tuple[int, str | None, bytes]] = []
        for m in history.append:
            seq = m.seq
            if not 0 <= seq <= SEQ_MASK:
                raise InvalidDataError(f"message sequence number {seq} is out of range")
            # The seq is the row's key; with keyword search on, the text is the row's body
            # (the index reads it there) and stays out of the packed form.
            if not fts:
                messages.append((seq, None, pack(replace(m, seq=0))))
            elif isinstance(m.content, str):
                messages.append((seq, m.content, pack(replace(m, seq=0, content=""))))
            else:
                messages.append((seq, m.text, pack(replace(m, seq=0))))
        return _HistoryRows(
            messages=messages,
            summaries=[
                (rid, s.end_seq, s.start_seq, encode_summary(s)) for s in history.summaries
            ],
            drop_through=history.drop_messages_through,
            drop_summaries=bool(history.drop_summaries),
        )

    def _messages(self, rows: Sequence[tuple[int, str | None, bytes]]) -> builtins.list[Message]:
        """Messages of `(id, body, blob)` rows, in their order."""
        decode = self.codec.decode_message
        out = []
        for mid, body, blob in rows:
            message = decode(blob)
            if body is not None and isinstance(message.content, str):
                message.content = body
            message.seq = mid & SEQ_MASK
            out.append(message)
        return out

    async def _read_messages(
        self, sql: str, params: tuple[Any, ...], *, small: bool
    ) -> builtins.list[tuple[int, str | None, bytes]]:
        """Rows of a history read: on the loop's connection when it is `small` (a few hundred
        rows at most: no thread hop), otherwise (or when it cannot) in the worker."""
        rows = self._read_now(sql, params) if small else None
        if rows is None:
            rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        return rows

    def _row(self, record: SessionRecord) -> tuple[Any, ...]:
        """The parameters ?1-?16 of `_UPSERT_SESSION` and the compare-and-set statements
        (which compute the due columns and minute buckets from them)."""
        flow = record.flow
        usage = record.usage
        labels = record.labels
        return (
            record.id, record.key, record.status._value_,  # (`.value` is two Python calls)
            flow.name if flow is not None else None, flow.step if flow is not None else None,
            record.created_at, record.last_activity, record.expires_at, record.warn_at,
            record.purge_at, record.close_reason, record.counters.messages,
            usage.input_tokens + usage.output_tokens,
            _encode_json(labels).decode() if labels else "{}", record.version,
            self.codec.encode(record),
        )

    async def delete(self, key: str, session_id: str | None = None) -> bool:
        fts = self._fts_table
        self._forget(key)

        def job(conn: sqlite3.Connection) -> bool:
            if session_id is None:
                row = conn.execute(
                    "SELECT id FROM sessions WHERE key = ? AND current = 1", (key,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT id FROM sessions WHERE id = ? AND key = ?", (session_id, key)
                ).fetchone()
            if row is None:
                return False
            _delete_session(conn, fts, row[0])
            return True

        try:
            return await self._run(job, write=True)
        finally:
            self._forget(key)  # a load meanwhile may have remembered the old bytes

    async def quarantine(self, key: str, raw: bytes, reason: str) -> None:
        now = self.clock.now()
        fts = self._fts_table

        def job(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "INSERT INTO quarantine (key, reason, at, raw) VALUES (?, ?, ?, ?)",
                (key, reason, now, raw),
            )
            row = conn.execute(
                "SELECT id, blob FROM sessions WHERE key = ? AND current = 1", (key,)
            ).fetchone()
            if row is None or bytes(row[1]) != raw:
                return False  # replaced meanwhile by another record: keep that one
            _delete_session(conn, fts, row[0])
            return True

        self._forget(key)
        try:
            removed = await self._run(job, write=True)
        finally:
            self._forget(key)
        if removed:
            log.warning("quarantined unreadable session %s: %s", key, reason)

    async def list_quarantined(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        def job(conn: sqlite3.Connection) -> builtins.list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT key, reason, at, raw FROM quarantine ORDER BY id DESC LIMIT ?",
                (max(0, limit),),
            ).fetchall()
            return [{"key": k, "reason": r, "at": a, "raw": bytes(b)} for k, r, a, b in rows]

        return await self._run(job)

    async def _put_raw(self, key: str, raw: bytes) -> None:
        """Maintenance/test hook: overwrite the stored bytes of the current record at `key`
        unchecked (e.g. to simulate a corrupted record). Index columns are left as they were."""

        def job(conn: sqlite3.Connection) -> None:
            updated = conn.execute(
                "UPDATE sessions SET blob = ? WHERE key = ? AND current = 1", (raw, key)
            ).rowcount
            if not updated:
                raise LookupError(f"no current record at {key!r} to overwrite")

        self._forget(key)
        try:
            await self._run(job, write=True)
        finally:
            self._forget(key)

    def _forget(self, key: str) -> None:
        if self._cache is not None:
            self._cache.forget(key)

    # -- listing and analytics --------------------------------------------------------------

    async def list(
        self, filter: SessionFilter | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        where, params = _where(filter)
        if cursor is not None:
            last_activity, session_id = decode_cursor(cursor)
            where.append(
                "activity_min <= ? AND (last_activity < ? OR (last_activity = ? AND id > ?))"
            )
            params += [_bucket(last_activity), last_activity, last_activity, session_id]
        if limit <= 0:
            return Page(items=[], next_cursor=cursor)
        # The index gives the minutes in order; SQLite sorts within each minute it reads.
        sql = (
            "SELECT key, blob, last_activity, id FROM sessions INDEXED BY sessions_activity_min"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY activity_min DESC, last_activity DESC, id LIMIT ?"
        )
        params.append(limit + 1)

        def job(conn: sqlite3.Connection) -> builtins.list[tuple[str, bytes, float, str]]:
            return [(k, bytes(b), la, i) for k, b, la, i in conn.execute(sql, params)]

        rows = await self._run(job)
        items: builtins.list[SessionRecord] = []
        for key, raw, _, _ in rows[:limit]:
            try:
                items.append(self._decode(raw, key))
            except CorruptRecordError:
                continue  # unreadable records are skipped (the engine quarantines on load)
        next_cursor = None
        if len(rows) > limit:
            _, _, last_activity, session_id = rows[limit - 1]
            next_cursor = encode_cursor(last_activity, session_id)
        return Page(items=items, next_cursor=next_cursor)

    async def count(self, filter: SessionFilter | None = None) -> SessionStats:
        where, params = _where(filter)
        sql = (
            "SELECT status, platform, COUNT(*) FROM sessions"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY status, platform"
        )

        def job(conn: sqlite3.Connection) -> builtins.list[tuple[str, str, int]]:
            return conn.execute(sql, params).fetchall()

        stats = SessionStats(by_status={}, by_platform={})
        for status, platform, n in await self._run(job):
            stats.total += n
            stats.by_status[status] = stats.by_status.get(status, 0) + n
            stats.by_platform[platform] = stats.by_platform.get(platform, 0) + n
        return stats

    async def stats(
        self, filter: SessionFilter | None = None, *, labels: Sequence[str] = ()
    ) -> SessionStats:
        where, params = _where(filter)

        def clause(*extra: str) -> str:
            parts = [*where, *extra]
            return " WHERE " + " AND ".join(parts) if parts else ""

        def job(conn: sqlite3.Connection) -> SessionStats:
            stats = SessionStats(
                by_status={}, by_platform={}, by_close_reason={}, by_flow_step={},
                by_label={name: {} for name in labels},
            )
            for status, platform, n in conn.execute(
                f"SELECT status, platform, COUNT(*) FROM sessions{clause()} "
                "GROUP BY status, platform", params,
            ):
                stats.total += n
                stats.by_status[status] = stats.by_status.get(status, 0) + n
                stats.by_platform[platform] = stats.by_platform.get(platform, 0) + n
            messages, tokens, duration = conn.execute(
                "SELECT COALESCE(SUM(messages), 0), COALESCE(SUM(tokens), 0), "
                f"COALESCE(AVG(last_activity - created_at), 0.0) FROM sessions{clause()}",
                params,
            ).fetchone()
            stats.messages, stats.tokens, stats.avg_duration_seconds = messages, tokens, duration
            for reason, n in conn.execute(
                f"SELECT close_reason, COUNT(*) FROM sessions"
                f"{clause('close_reason IS NOT NULL')} GROUP BY close_reason", params,
            ):
                stats.by_close_reason[reason] = n
            active_flows = clause("flow IS NOT NULL", "status = 'active'")
            for flow, step, n in conn.execute(
                f"SELECT flow, step, COUNT(*) FROM sessions{active_flows} GROUP BY flow, step",
                params,
            ):
                stats.by_flow_step[flow_step_name(flow, step)] = n
            for name in labels:
                path = '$."' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
                for value, n in conn.execute(
                    f"SELECT json_extract(labels, ?) AS v, COUNT(*) FROM sessions"
                    f"{clause('json_extract(labels, ?) IS NOT NULL')} GROUP BY v",
                    [path, *params, path],
                ):
                    stats.by_label[name][str(value)] = n
            return stats

        return await self._run(job)

    # -- history ----------------------------------------------------------------------------

    async def read_tail(
        self, ref: SessionRef, limit: int, *, before_seq: int | None = None
    ) -> builtins.list[Message]:
        if limit <= 0:
            return []
        top = SEQ_MASK if before_seq is None else min(before_seq - 1, SEQ_MASK)
        if top < 0:
            return []
        rows = await self._read_messages(
            _READ_TAIL, (ref.id, top, limit), small=limit <= LOOP_READ_ROWS
        )
        rows.reverse()
        return self._messages(rows)

    async def read_range(
        self, ref: SessionRef, start_seq: int, end_seq: int
    ) -> builtins.list[Message]:
        low, high = max(start_seq, 0), min(end_seq, SEQ_MASK)
        if low > high:
            return []
        rows = await self._read_messages(
            _READ_RANGE, (ref.id, low, high), small=high - low < LOOP_READ_ROWS
        )
        return self._messages(rows)

    async def count_messages(self, ref: SessionRef) -> int:
        def job(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute(_COUNT_MESSAGES, (ref.id,)).fetchone()
            return int(n)

        return await self._run(job)

    async def search_messages(
        self, ref: SessionRef, query: str, limit: int = 20
    ) -> builtins.list[Message]:
        """Messages containing every word of `query` (whole words or word prefixes, any case),
        newest first, through the FTS5 index when this file has one."""
        words = [w for w in query.split() if w]
        if not self._fts or self.codec.encryptor is not None or not words:
            return await super().search_messages(ref, query, limit)
        # Each token becomes a quoted prefix term, so user text can never be FTS syntax; a
        # word of several tokens (or none) must also appear as it is (case-insensitive).
        terms: builtins.list[str] = []
        whole: builtins.list[str] = []
        for word in words:
            tokens = _FTS_TOKEN.findall(word)
            terms += ['"' + t + '"*' for t in tokens]
            if len(tokens) != 1:
                whole.append(word.lower())
        if not terms:
            return await super().search_messages(ref, query, limit)
        sql = _SEARCH.format(
            "".join(f" AND instr(chatstate_lower(m.body), ?{4 + i}) > 0"
                    for i in range(len(whole)))
        )
        params = (ref.id, " AND ".join(terms), limit, *whole)

        def job(conn: sqlite3.Connection) -> builtins.list[tuple[int, str | None, bytes]]:
            return conn.execute(sql, params).fetchall()

        return self._messages(await self._run(job))

    async def list_summaries(self, ref: SessionRef) -> builtins.list[Summary]:
        # A context build asks on every turn: read on the loop (no thread hop) unless the
        # session has more than a few hundred summaries.
        rows = self._read_now(_LIST_SUMMARIES + " LIMIT ?", (ref.id, LOOP_READ_ROWS + 1))
        if rows is None or len(rows) > LOOP_READ_ROWS:
            rows = await self._run(
                lambda conn: conn.execute(_LIST_SUMMARIES, (ref.id,)).fetchall()
            )
        decode = self.codec.decode_summary
        return [decode(blob) for (blob,) in rows]

    # -- due index --------------------------------------------------------------------------

    async def claim_due(
        self, kind: str, now: float, limit: int, *, claim_seconds: float = 30.0
    ) -> builtins.list[DueItem]:
        check_kind(kind)
        column = f"due_{kind}"  # one of three fixed names, checked above
        until = now + claim_seconds

        bucket, until_bucket = _bucket(now), _bucket(until)

        def job(conn: sqlite3.Connection) -> builtins.list[DueItem]:
            # Entries of past minutes are all due; of this minute, those not after `now`.
            rows = conn.execute(
                f"SELECT id, key, {column} FROM sessions WHERE {column}_min <= ? AND "
                f"{column} <= ? ORDER BY {column}_min, {column} LIMIT ?",
                (bucket, now, max(0, limit)),
            ).fetchall()
            conn.executemany(
                f"UPDATE sessions SET {column} = ?, {column}_min = ? WHERE id = ?",
                [(until, until_bucket, r[0]) for r in rows],
            )
            return [DueItem(key=k, session_id=i, kind=kind, due_at=d) for i, k, d in rows]

        return await self._run(job, write=True)

    # -- leases -----------------------------------------------------------------------------

    async def lease_and_load(
        self, key: str, owner: str, ttl: float
    ) -> tuple[Lease | None, SessionRecord | None]:
        clock = self.clock

        def job(conn: sqlite3.Connection) -> tuple[Lease | None, bytes | None]:
            now = clock.now()
            # One statement takes a free (or expired, or own) lease, bumps the key's token and
            # returns the current record; it returns nothing when another owner holds the key.
            taken = conn.execute(_TAKE_LEASE, (key, owner, now + ttl, now)).fetchall()
            if not taken:
                return None, None
            token, blob = taken[0]
            lease = Lease(key=key, owner=owner, token=int(token), expires_at=now + ttl)
            return lease, None if blob is None else bytes(blob)

        lease, raw = await self._write(job, key)
        if raw is None:
            return lease, None
        try:
            return lease, self._decode(raw, key)
        except CorruptRecordError as exc:
            raise corrupt_with_lease(exc, lease) from None

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        clock = self.clock

        def job(conn: sqlite3.Connection) -> Lease | None:
            now = clock.now()
            expires = now + ttl
            updated = conn.execute(
                "UPDATE leases SET expires_at = ? "
                "WHERE key = ? AND owner = ? AND token = ? AND expires_at > ?",
                (expires, lease.key, lease.owner, lease.token, now),
            ).rowcount
            if not updated:
                return None
            return Lease(key=lease.key, owner=lease.owner, token=lease.token, expires_at=expires)

        return await self._run(job, write=True)

    async def release(self, lease: Lease) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(_RELEASE_LEASE, (lease.key, lease.token))

        await self._run(job, write=True)

    # -- counters ---------------------------------------------------------------------------

    async def incr(self, counters: dict[str, int]) -> None:
        items = builtins.list(counters.items())

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                items,
            )

        await self._run(job, write=True)

    async def read_counters(self, prefix: str = "") -> dict[str, int]:
        def job(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT name, value FROM counters WHERE name >= ? AND name < ?",
                (prefix, prefix_upper_bound(prefix)),
            )
            return {name: int(value) for name, value in rows}

        return await self._run(job)


# ---------------------------------------------------------------------------------------------
# SQL helpers (run in the worker thread)

# The row's parameters are numbered as in `_row` (?1-?16), then platform and scope (?17, ?18).
# The due columns follow `SessionRecord.due_at`: warn and expire only while active.
_DUE_WARN = f"CASE ?3 WHEN '{Status.ACTIVE.value}' THEN ?9 END"
_DUE_EXPIRE = f"CASE ?3 WHEN '{Status.ACTIVE.value}' THEN ?8 END"
# Minute buckets of last_activity, due_warn, due_expire and due_purge (= purge_at).
_MINUTES = tuple(_sql_bucket(value) for value in ("?7", _DUE_WARN, _DUE_EXPIRE, "?10"))
_UPSERT_SESSION = f"""
INSERT INTO sessions (
    id, key, current, status, platform, scope, flow, step, created_at, last_activity,
    expires_at, warn_at, purge_at, close_reason, messages, tokens, labels, version, blob,
    due_warn, due_expire, due_purge, activity_min, due_warn_min, due_expire_min, due_purge_min
) VALUES (
    ?1, ?2, 1, ?3, ?17, ?18, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
    {_DUE_WARN}, {_DUE_EXPIRE}, ?10, {_MINUTES[0]}, {_MINUTES[1]}, {_MINUTES[2]}, {_MINUTES[3]}
)
ON CONFLICT (id) DO UPDATE SET
    key = excluded.key, current = 1, status = excluded.status, platform = excluded.platform,
    scope = excluded.scope, flow = excluded.flow, step = excluded.step,
    created_at = excluded.created_at, last_activity = excluded.last_activity,
    expires_at = excluded.expires_at, warn_at = excluded.warn_at, purge_at = excluded.purge_at,
    close_reason = excluded.close_reason, messages = excluded.messages, tokens = excluded.tokens,
    labels = excluded.labels, version = excluded.version, blob = excluded.blob,
    due_warn = excluded.due_warn, due_expire = excluded.due_expire, due_purge = excluded.due_purge,
    activity_min = excluded.activity_min, due_warn_min = excluded.due_warn_min,
    due_expire_min = excluded.due_expire_min, due_purge_min = excluded.due_purge_min
"""

_LOAD = "SELECT blob FROM sessions WHERE key = ? AND current = 1"
_BLOB = 15  # the record's bytes in a `SQLiteStore._row` tuple (?16 in the statements)
_LOAD_BY_ID = "SELECT key, blob FROM sessions WHERE id = ?"

LOOP_READ_ROWS = 512  # history reads up to this many rows run on the loop's connection

# History of one session: ids from sid << 32 (seq 0) to sid << 32 | SEQ_MASK. ?1 = session id.
_LOW = f"{_SID} * {1 << SEQ_BITS}"
_READ_TAIL = (
    f"SELECT id, body, blob FROM messages WHERE id BETWEEN {_LOW} AND {_LOW} + ?2 "
    "ORDER BY id DESC LIMIT ?3"
)
_READ_RANGE = (
    f"SELECT id, body, blob FROM messages WHERE id BETWEEN {_LOW} + ?2 AND {_LOW} + ?3 "
    "ORDER BY id"
)
_COUNT_MESSAGES = (
    f"SELECT COUNT(*) FROM messages WHERE id BETWEEN {_LOW} AND {_LOW} + {SEQ_MASK}"
)
_SEARCH = (  # {} : the conditions on words of several tokens
    "SELECT m.id, m.body, m.blob FROM messages_fts f JOIN messages m ON m.id = f.rowid "
    f"WHERE messages_fts MATCH ?2 AND f.rowid BETWEEN {_LOW} AND {_LOW} + {SEQ_MASK}{{}} "
    "ORDER BY f.rowid DESC LIMIT ?3"
)
_LIST_SUMMARIES = "SELECT blob FROM summaries WHERE session_id = ? ORDER BY end_seq, start_seq"
_INSERT_MESSAGE = "INSERT OR REPLACE INTO messages (id, body, blob) VALUES (?, ?, ?)"
_INDEX_MESSAGE = "INSERT INTO messages_fts (rowid, body) VALUES (?, ?)"
# A message leaves the keyword index with the text it was indexed with (external content).
_UNINDEX = (
    "INSERT INTO messages_fts (messages_fts, rowid, body) "
    "SELECT 'delete', id, body FROM messages WHERE id BETWEEN ? AND ? AND body IS NOT NULL"
)
_UPSERT_SUMMARY = (
    "INSERT OR REPLACE INTO summaries (session_id, end_seq, start_seq, blob) VALUES (?, ?, ?, ?)"
)

# Compare-and-set of the current record. Parameters: the `_row` tuple (?1-?16), the expected
# version (?17) and, leased, the lease's key, owner and token (?18-?20) and the store's time (?21;
# ?18 when not leased). The due columns and the minute buckets are computed here from the row
# (`_DUE_WARN` ...): every parameter costs a bind on every commit. Neither statement assigns
# key, `current` or id (nor platform and scope, which the key fixes), so the index of current
# records is left alone. SQLite rewrites an index whenever an UPDATE assigns one of its columns,
# even to the value it had: the first statement, for a commit in the same minute as the stored
# record (the common case in a chat), assigns no indexed column at all and writes one page; the
# second, tried when the first matched nothing, also moves the index entries.
_CAS_EXACT = f"""
UPDATE sessions SET
    status = ?3, flow = ?4, step = ?5, created_at = ?6, last_activity = ?7, expires_at = ?8,
    warn_at = ?9, purge_at = ?10, close_reason = ?11, messages = ?12, tokens = ?13, labels = ?14,
    version = ?15, blob = ?16, due_warn = {_DUE_WARN}, due_expire = {_DUE_EXPIRE},
    due_purge = ?10"""
_CAS_WHERE = """
WHERE id = ?1 AND key = ?2 AND current = 1 AND version = ?17"""
_SAME_MINUTE = f"""
    AND activity_min = {_MINUTES[0]} AND due_warn_min IS {_MINUTES[1]}
    AND due_expire_min IS {_MINUTES[2]} AND due_purge_min IS {_MINUTES[3]}"""
_CAS_MOVE = (
    _CAS_EXACT
    + f""", activity_min = {_MINUTES[0]}, due_warn_min = {_MINUTES[1]},
    due_expire_min = {_MINUTES[2]}, due_purge_min = {_MINUTES[3]}"""
    + _CAS_WHERE
)
_CAS_STAY = _CAS_EXACT + _CAS_WHERE + _SAME_MINUTE
_NO_LIVE_LEASE = """
    AND NOT EXISTS (SELECT 1 FROM leases WHERE key = ?2 AND expires_at > ?18)"""
_LEASE_HOLDS = """
    AND EXISTS (SELECT 1 FROM leases WHERE key = ?18 AND owner = ?19 AND token = ?20
                AND expires_at > ?21)"""
# (same minute, moved) for: no lease; no lease but yield to a live one; a lease held.
_CAS_UPDATE = (_CAS_STAY, _CAS_MOVE)
_CAS_UPDATE_UNLEASED = (_CAS_STAY + _NO_LIVE_LEASE, _CAS_MOVE + _NO_LIVE_LEASE)
_CAS_UPDATE_LEASED = (_CAS_STAY + _LEASE_HOLDS, _CAS_MOVE + _LEASE_HOLDS)


# A lease row stays after release (expired), so that the key's fencing token keeps growing.
# Taking the lease returns the current record too: lease and load in one statement.
_TAKE_LEASE = """
INSERT INTO leases (key, owner, token, expires_at) VALUES (?1, ?2, 1, ?3)
ON CONFLICT (key) DO UPDATE SET
    owner = excluded.owner, token = leases.token + 1, expires_at = excluded.expires_at
    WHERE leases.expires_at <= ?4 OR leases.owner = excluded.owner
RETURNING token, (SELECT blob FROM sessions WHERE key = ?1 AND current = 1)
"""
_RELEASE_LEASE = "UPDATE leases SET expires_at = 0 WHERE key = ? AND token = ?"
_LEASE_LIVE = "SELECT 1 FROM leases WHERE key = ? AND expires_at > ?"
_LEASE_HELD = (
    "SELECT 1 FROM leases WHERE key = ? AND owner = ? AND token = ? AND expires_at > ?"
)


class _HistoryRows(NamedTuple):
    """History changes of one commit, encoded by the caller."""

    messages: builtins.list[tuple[int, str | None, bytes]]  # (seq, body, packed)
    summaries: builtins.list[tuple[str, int, int, bytes]]
    drop_through: int | None
    drop_summaries: bool


def _write_history(
    conn: sqlite3.Connection, fts: bool, fts_table: bool, rid: str, rows: _HistoryRows
) -> None:
    """`fts`: index the new messages; `fts_table`: the file has an index (replaced and
    dropped messages leave it)."""
    if rows.drop_summaries:
        conn.execute("DELETE FROM summaries WHERE session_id = ?", (rid,))
    if rows.drop_through is not None or rows.messages:
        (sid,) = conn.execute("SELECT sid FROM sessions WHERE id = ?", (rid,)).fetchone()
        base = sid << SEQ_BITS
        if rows.drop_through is not None and rows.drop_through >= 0:
            _delete_messages(conn, fts_table, base, base + min(rows.drop_through, SEQ_MASK))
        if rows.messages:
            ids = [(base | seq, body, blob) for seq, body, blob in rows.messages]
            if fts_table and conn.execute(
                "SELECT 1 FROM messages WHERE id BETWEEN ? AND ? LIMIT 1",
                (min(i[0] for i in ids), max(i[0] for i in ids)),
            ).fetchall():
                # Some of these replace stored messages: those leave the index first.
                conn.executemany(_UNINDEX, [(i[0], i[0]) for i in ids])
            conn.executemany(_INSERT_MESSAGE, ids)
            if fts:
                conn.executemany(
                    _INDEX_MESSAGE, [(i, body) for i, body, _ in ids if body is not None]
                )
    if rows.summaries:
        conn.executemany(_UPSERT_SUMMARY, rows.summaries)


def _delete_messages(conn: sqlite3.Connection, fts_table: bool, low: int, high: int) -> None:
    if fts_table:
        conn.execute(_UNINDEX, (low, high))
    conn.execute("DELETE FROM messages WHERE id BETWEEN ? AND ?", (low, high))


def _delete_session(conn: sqlite3.Connection, fts_table: bool, session_id: str) -> None:
    row = conn.execute("SELECT sid FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if row is not None:
        base = row[0] << SEQ_BITS
        _delete_messages(conn, fts_table, base, base | SEQ_MASK)
    conn.execute("DELETE FROM summaries WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))


def _migrate_2_to_3(conn: sqlite3.Connection, *, old_fts: bool, fts: bool) -> None:
    """Copy schema 2's sessions and messages into schema 3's tables (created already), the
    indexed text into `body` and the new index, then drop the old tables."""
    conn.execute(
        f"INSERT INTO sessions (sid, {_SESSION_COLUMNS}) "
        f"SELECT rowid, {_SESSION_COLUMNS} FROM sessions_v2 ORDER BY rowid"
    )
    body = "f.body" if old_fts and fts else "NULL"
    join = " LEFT JOIN messages_fts_v2 f ON f.rowid = m.rowid" if old_fts and fts else ""
    conn.execute(
        f"INSERT INTO messages (id, body, blob) SELECT (s.sid << {SEQ_BITS}) | m.seq, {body}, "
        f"m.blob FROM messages_v2 m JOIN sessions s ON s.id = m.session_id{join} "
        f"WHERE m.seq BETWEEN 0 AND {SEQ_MASK}"
    )
    if fts:
        conn.execute(
            "INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages "
            "WHERE body IS NOT NULL"
        )
    if old_fts:
        conn.execute("DROP TABLE messages_fts_v2")
    conn.execute("DROP TABLE messages_v2")
    conn.execute("DROP TABLE sessions_v2")


def _where(f: SessionFilter | None) -> tuple[builtins.list[str], builtins.list[Any]]:
    """SQL conditions (on the index columns) and parameters for a listing filter."""
    where: builtins.list[str] = []
    params: builtins.list[Any] = []
    if f is None:
        return where, params
    for column, value in (
        ("status", f.status), ("platform", f.platform), ("scope", f.scope),
        ("flow", f.flow), ("step", f.step),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if f.updated_since is not None:
        where.append("activity_min >= ? AND last_activity >= ?")
        params += [_bucket(f.updated_since), f.updated_since]
    if f.updated_before is not None:
        where.append("activity_min <= ? AND last_activity < ?")
        params += [_bucket(f.updated_before), f.updated_before]
    if f.key_prefix is not None:
        where.append("key >= ? AND key < ?")
        params += [f.key_prefix, prefix_upper_bound(f.key_prefix)]
    return where, params


__all__ = ["DUE_KINDS", "SCHEMA_VERSION", "SQLiteStore"]
