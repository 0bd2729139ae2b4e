"""PostgresStore: durable sessions shared by many processes, on PostgreSQL 12+.

URL: ``postgresql://user:password@host:5432/db?schema=chatstate&pool_max_size=10`` (or
``postgres://``). Options in the query string (or as keyword arguments):

* ``schema`` (default ``chatstate``): the PostgreSQL schema holding the tables; one per
  deployment or test run.
* ``pool_min_size`` / ``pool_max_size`` (1 / 10): the connection pool's bounds (max <= 200).
* ``command_timeout`` (5 s): a statement that takes longer is cancelled and raises
  `StoreUnavailable`; ``connect_timeout`` (5 s) bounds each connection attempt.
* ``read_retries`` (2): how many times a read is retried with backoff after a connection fault.
* ``migrate`` (true): create and upgrade the schema on open; with ``false`` an outdated schema
  raises `SchemaError` asking for ``chatstate db upgrade``.
* ``application_name`` (``chatstate``): how the connections show in ``pg_stat_activity``.
Other query parameters (``sslmode``, ...) go to asyncpg unchanged.

Why asyncpg rather than psycopg 3: it speaks the binary protocol natively, caches a prepared
statement per query on each connection (so a steady-state statement is one Bind/Execute/Sync
round trip), lets the store install a binary JSONB codec that passes the codec's JSON bytes
through untouched (msgspec does all the (de)serialising, no ``json`` module in between), and it
is the fastest Python driver by a wide margin. psycopg 3's advantages (pgbouncer transaction
mode without prepared statements, sync API, COPY ergonomics) do not matter here.

How an update costs two round trips, two transactions and one WAL flush (`postgres_schema`,
version 13): ``lease_and_load`` is one plain statement that takes (or creates) the key's lease
row and reads the current record with the same snapshot, in a transaction that does not wait
for a WAL flush (``synchronous_commit`` off for it alone: a lost lease is harmless); ``commit``
is one plain statement whose UPDATE of the current row is guarded by id, version and lease
(compare-and-set and fencing) and releases the lease *implicitly* by storing its token in the
row (a lease whose token is its session's ``released_token`` is free), with the history rows in
a CTE. A session's first commit, drops and summaries go to the plpgsql ``commit_session`` (the
general path) at once, and a usual commit whose UPDATE wrote nothing (a conflict, a lost lease,
a replaced session, a retry after a lost answer) asks it next. A usual commit is one HOT update
touching no index. Connections go back to the store's own pool (`postgres_pool`) without a
reset query (the store never leaves session state behind: no LISTEN, advisory locks or SET;
the lease's ``set_config`` is local to its transaction) and without asyncpg.Pool's
per-checkout Python overhead. pg_stat_database counts two transactions per update, fewer
when many run at once: while a lease statement runs (two at most with the default pool),
further lease requests wait and go out together in one statement (`lease_and_load`); each
commit stays a synchronous transaction of its own.

History: one row per commit (up to 64 messages) in ``history`` keyed by (session number, newest
seq): the messages in `Codec.pack_message`'s compact form, deflated with a fixed dictionary, in a
bytea, and their text once in a text column that carries the full-text index (`postgres_schema`,
versions 10-11: about 1.45x the raw size of the messages on the agent benchmark, from 2.5x with a
JSON row per message). Reads take the rows overlapping the asked range and keep its messages.

Faults: every call is bounded by ``command_timeout``; connection loss, a terminated backend, a
restarting server or a full server raise `StoreUnavailable`. Reads are retried with backoff,
and so are the writes that are safe to repeat: a commit (the commit function recognises a commit
it applied already, whose answer was lost), lease, renew, release and claims. Deletes, counter
increments and quarantines are retried only when no connection could be had (nothing was sent).
The pool replaces broken connections by itself, so the same store object works again once the
server is back.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import itertools
import logging
import math
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from ..clock import Clock
from ..codec import Codec
from ..errors import (
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    LeaseLost,
    StoreUnavailable,
)
from ..model import HistoryChanges, Message, SessionRecord, SessionRef, Summary
from . import postgres_schema as schema_sql
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
from .postgres_pool import ConnectionPool, PoolClosed

try:
    import asyncpg
    import asyncpg.exceptions as pgerr
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the postgresql:// store needs asyncpg; install it with: pip install 'chatstate[postgres]'"
    ) from exc

log = logging.getLogger("chatstate.stores.postgres")

T = TypeVar("T")
_Messages = list[Message]  # an alias: inside the class `list` is the listing method
_Ints = list[int]


def _fetch(query: str, *args: Any) -> Callable[[Any], Awaitable[Any]]:
    return lambda conn: conn.fetch(query, *args)


def _by_seq(message: Message) -> int:
    return message.seq

DEFAULT_SCHEMA = "chatstate"
MAX_POOL_SIZE = 200
_MAX_SEQ = 2**63 - 1
_CLIENT_TIMEOUT_MARGIN = 0.5  # seconds the client waits beyond the server's statement_timeout
# Opening may migrate (several statements, each bounded by statement_timeout): the backstop
# for the whole schema check is this much longer.
_MIGRATION_BACKSTOP = 60.0
_LEASE_BATCH = 64  # lease requests per batched statement (lease_and_load)
_WORD_RE = re.compile(r"\w+", re.UNICODE)

# Errors that mean "the server could not be reached or did not answer": the store turns them
# into StoreUnavailable. Class 08 (connection), 57 (operator intervention: admin shutdown,
# crash, cannot connect now, query cancelled by the timeout) and 53 (insufficient resources,
# e.g. too many connections).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    pgerr.PostgresConnectionError,
    pgerr.OperatorInterventionError,
    pgerr.InsufficientResourcesError,
    pgerr.ConnectionDoesNotExistError,
    pgerr.ConnectionFailureError,
)
# Lost races inside a commit: nothing was written, the caller may reload and retry.
_CONFLICT: tuple[type[BaseException], ...] = (
    pgerr.UniqueViolationError,
    pgerr.SerializationError,
    pgerr.DeadlockDetectedError,
)


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    # A backend terminated while its connection sat idle in the pool leaves the protocol in
    # an error state until the socket closes: using it then raises InternalClientError before
    # anything is sent. Using a connection that died under it is an InterfaceError.
    if isinstance(exc, pgerr.InternalClientError):
        return True
    return isinstance(exc, pgerr.InterfaceError) and "closed" in str(exc)


def _jsonb_encode(value: bytes | str) -> bytes:
    # Binary JSONB wire format: a version byte (1) followed by the JSON text.
    if isinstance(value, str):
        value = value.encode()
    return b"\x01" + value


def _jsonb_decode(data: bytes) -> bytes:
    return data[1:]


def _json_encode(value: bytes | str) -> bytes:
    # Binary `json` wire format: the JSON text itself.
    return value.encode() if isinstance(value, str) else value


def _json_decode(data: bytes) -> bytes:
    return data


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_encode, decoder=_jsonb_decode,
        format="binary",
    )
    await conn.set_type_codec(
        "json", schema="pg_catalog", encoder=_json_encode, decoder=_json_decode,
        format="binary",
    )


def _is_json(raw: bytes) -> bool:
    try:
        msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return False
    return True


def _json_array(items: Sequence[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


_COMMIT_ARGS = 34  # parameters of commit_session (postgres_schema, version 10)
_APPLIED = (0, None)  # commit_session's (outcome, actual) for a commit written


def _minute(at: float | None) -> int | None:
    """The minute bucket of a time, as the SQL writers compute it (`_bucket`): the same IEEE
    division and floor."""
    return None if at is None else math.floor(at / schema_sql.TIME_BUCKET_SECONDS)


def _fast_arguments(args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """The usual commit's statement and parameters out of commit_session's parameters: all but
    platform, scope (only a new row needs them), summaries, drops and the split row, and the
    history ones only when there is history. Without history the four minute buckets come
    computed (`_minute`): parameters cost the server less than the expressions."""
    if args[21] is None:
        return "commit_fast", (
            *args[0:5], *args[7:21], args[29],
            _minute(args[10]), _minute(args[11]), _minute(args[12]), _minute(args[13]),
        )
    return "commit_fast_history", (*args[0:5], *args[7:21], args[25], *args[21:25], args[29])


_ROW_ENCODER = msgspec.msgpack.Encoder()
_ROW_DECODER = msgspec.msgpack.Decoder(list[int | bytes])
# A history body may be stored deflated with this preset dictionary (postgres_schema, version
# 10: a body starting with a zero byte): the field names and values that recur in packed
# messages (roles, usage and tool-call keys), which a body of a few hundred bytes cannot
# compress on its own (measured on the agent workload: 162 -> 131 bytes without it, 60 with).
# Part of the stored format: never change it (the checksum below guards it).
_BODY_ZDICT_CRC = 0x7f34ed3b
_BODY_ZDICT = msgspec.msgpack.encode([
    {"type": "image_url", "image_url": {"url": "https://"}},
    {"id": "call_", "type": "function", "function": {"name": "", "arguments": "{\"query\": \"\"}"}},
    {"type": "text", "text": ""},
    ["system", "", 1, None, None, None, "1", {}, 1700000000.0, 1],
    ["tool", "", 1, "", "call_", None, "1", {}, 1700000000.0, 10],
    {"model": "gpt-4o-mini", "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 1,
     "cached_tokens": 0, "reasoning_tokens": 0},
    ["assistant", "", 2, None, None, None, "1", {}, 1700000000.0, 20,
     {"model": "gpt-4o", "input_tokens": 100, "output_tokens": 10,
      "estimated_input_tokens": 100}],
    ["user", "", 1, None, None, None, "1", {}, 1700000000.0, 10],
])
assert zlib.crc32(_BODY_ZDICT) == _BODY_ZDICT_CRC, "the history body dictionary must never change"


def _matches(text: str, words: Sequence[str]) -> bool:
    """Every word is a word of `text` or the start of one (case-insensitive): what the
    full-text query asks of a row, asked of one of its messages."""
    tokens = _WORD_RE.findall(text.lower())
    return all(any(t.startswith(w) for t in tokens) for w in words)


def _encode_cursor(last_activity: float, session_id: str) -> str:
    raw = msgspec.json.encode([last_activity, session_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        last_activity, session_id = msgspec.json.decode(raw, type=tuple[float, str])
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise ConfigurationError(
            f"listing cursor {cursor!r} is not valid; pass back the next_cursor of a previous page"
        ) from None
    return last_activity, session_id


def _bucket(param: int) -> str:
    """SQL for the minute bucket of time parameter `$param`, as the writers compute it
    (postgres_schema, versions 6 and 12)."""
    return f"floor(${param}::float8 / {schema_sql.TIME_BUCKET_SECONDS})::bigint"


class _Where:
    """Builds a WHERE clause from a SessionFilter with numbered parameters."""

    def __init__(self, params: list[Any] | None = None) -> None:
        self.params: list[Any] = params if params is not None else []
        self.terms: list[str] = []

    def add(self, template: str, value: Any) -> None:
        self.params.append(value)
        self.terms.append(template.format(f"${len(self.params)}"))

    def apply(self, flt: SessionFilter | None) -> _Where:
        if flt is None:
            return self
        for column in ("status", "platform", "scope", "flow", "step"):
            value = getattr(flt, column)
            if value is not None:
                self.add(f"{column} = {{}}", str(getattr(value, "value", value)))
        # The bucket terms let the listing index bound the scan (see postgres_schema, v6).
        if flt.updated_since is not None:
            self.add("last_activity >= {}", float(flt.updated_since))
            self.terms.append(f"activity_bucket >= {_bucket(len(self.params))}")
        if flt.updated_before is not None:
            self.add("last_activity < {}", float(flt.updated_before))
            self.terms.append(f"activity_bucket <= {_bucket(len(self.params))}")
        if flt.key_prefix is not None:
            self.add("starts_with(key, {})", flt.key_prefix)
        return self

    @property
    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.terms)) if self.terms else ""


def _int_option(options: dict[str, Any], name: str, default: int) -> int:
    value = options.pop(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"PostgreSQL option {name}={value!r} must be an integer") from None


def _float_option(options: dict[str, Any], name: str, default: float) -> float:
    value = options.pop(name, default)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"PostgreSQL option {name}={value!r} must be seconds") from None
    if not out > 0:
        raise ConfigurationError(f"PostgreSQL option {name}={value!r} must be positive")
    return out


def _bool_option(options: dict[str, Any], name: str, default: bool) -> bool:
    value = options.pop(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"PostgreSQL option {name}={value!r} must be true or false")


class PostgresStore(Store):
    """Sessions, history, due index, leases and counters in PostgreSQL (see the module doc)."""

    shared = True
    codec_format = "json"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        command_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        read_retries: int = 2,
        migrate: bool = True,
        application_name: str = "chatstate",
        clock: Clock | None = None,
        codec: Codec | None = None,
    ) -> None:
        if codec is not None and codec.format != "json":
            raise ConfigurationError(
                "PostgresStore stores records as JSONB; use a Codec(format='json')"
            )
        super().__init__(codec=codec)
        scheme = urlsplit(dsn).scheme.lower() if isinstance(dsn, str) else ""
        if scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(
                f"PostgreSQL URL {dsn!r} is not valid; use postgresql://user@host:5432/db"
            )
        if not 1 <= pool_max_size <= MAX_POOL_SIZE:
            raise ConfigurationError(
                f"pool_max_size={pool_max_size} is out of range; use 1..{MAX_POOL_SIZE}"
            )
        if not 0 <= pool_min_size <= pool_max_size:
            raise ConfigurationError(
                f"pool_min_size={pool_min_size} must be between 0 and pool_max_size "
                f"({pool_max_size})"
            )
        if read_retries < 0:
            raise ConfigurationError(f"read_retries={read_retries} must be 0 or more")
        self.dsn = dsn
        self.schema = schema
        self._q = schema_sql.quote_schema(schema)
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.read_retries = read_retries
        self.migrate = migrate
        self.application_name = application_name
        self.clock = clock
        self._pool: ConnectionPool | None = None
        # The client-side backstop for a server or network that does not answer at all: the
        # connections in use -> the time (monotonic) by which their statement must be done, and
        # one watchdog timer for the store that terminates the late ones (`_watch`). A timer
        # per statement (asyncpg's command_timeout) cost two timers armed and cancelled per
        # update.
        self._busy: dict[Any, float] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._open_lock = asyncio.Lock()
        # Lease statements running and requests waiting to go out together (lease_and_load).
        self._leasing = 0
        self._lease_slots = max(1, pool_max_size // 4)
        self._lease_queue: builtins.list[tuple[str, str, float, asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Future[None]] = set()
        self._mark_prefix = uuid.uuid4().hex[:16]
        self._marks = itertools.count()
        self._closed = False
        parts = urlsplit(dsn)
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
        self._sql = self._render_statements()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        """Build a store from a URL; our options come out of the query string, the rest of it
        is passed to asyncpg."""
        parts = urlsplit(url)
        ours: dict[str, Any] = {}
        passthrough: list[tuple[str, str]] = []
        known = {
            "schema", "pool_min_size", "pool_max_size", "command_timeout", "connect_timeout",
            "read_retries", "migrate", "application_name",
        }
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in known:
                ours[name] = value
            else:
                passthrough.append((name, value))
        ours.update(options)
        dsn = urlunsplit(parts._replace(query=urlencode(passthrough)))
        kwargs: dict[str, Any] = {
            "schema": str(ours.pop("schema", DEFAULT_SCHEMA)),
            "pool_min_size": _int_option(ours, "pool_min_size", 1),
            "pool_max_size": _int_option(ours, "pool_max_size", 10),
            "command_timeout": _float_option(ours, "command_timeout", 5.0),
            "connect_timeout": _float_option(ours, "connect_timeout", 5.0),
            "read_retries": _int_option(ours, "read_retries", 2),
            "migrate": _bool_option(ours, "migrate", True),
            "application_name": str(ours.pop("application_name", "chatstate")),
        }
        for name in ("clock", "codec"):
            if name in ours:
                kwargs[name] = ours.pop(name)
        if ours:
            raise ConfigurationError(
                f"unknown PostgreSQL store option(s): {', '.join(sorted(ours))}; known: "
                f"{', '.join(sorted(known))}"
            )
        return cls(dsn, **kwargs)

    def _render_statements(self) -> dict[str, str]:
        q = self._q
        # date_part gives the float8 itself; extract() computes a numeric first (PostgreSQL 14+).
        now = "coalesce({}::float8, date_part('epoch', clock_timestamp()))"
        delete_rows = (
            f"m AS (DELETE FROM {q}.history WHERE sid IN (SELECT num FROM d)), "
            f"su AS (DELETE FROM {q}.summaries WHERE session_id IN (SELECT id FROM d)) "
        )
        # History rows are keyed by the session's number (see postgres_schema, version 3).
        sid = f"sid = (SELECT num FROM {q}.sessions WHERE id = $1)"
        now4 = now.format("$4")
        # A lost lease is harmless (UNLOGGED table; any later commit flushes the WAL before
        # it): the lease's transaction commits without waiting for a WAL flush (set_config).
        current = f"FROM {q}.sessions WHERE key = $1 AND is_current"
        commit_call = (
            f"{q}.commit_session("
            + ", ".join(f"${i}" for i in range(1, _COMMIT_ARGS + 1))
            + ")"
        )
        # The usual commit (postgres_schema, version 13): one UPDATE of the current row,
        # guarded by id, version and the lease (held, unexpired, not released), releasing the
        # lease in the same row, and (commit_fast_history) the commit's history rows: a CTE
        # inserting nothing still cost ~20 us of executor start-up per commit, so a commit
        # without history has a statement of its own. Its parameters are `_fast_arguments` of
        # the commit's. No row: nothing was written, and the general
        # path (`commit_session`) decides. The fallback is not a branch of this statement:
        # initialising a function scan and an Append on every commit cost about a tenth of
        # the server's time per update with 64 updates at a time.
        bucket = f"floor(${{}}::float8 / {schema_sql.TIME_BUCKET_SECONDS})::bigint"
        commit_fast = (
            f"WITH s AS (UPDATE {q}.sessions SET status = $5, flow = $6, step = $7, "
            "created_at = $8, last_activity = $9, warn_at = $10, expires_at = $11, "
            "purge_at = $12, close_reason = $13, messages = $14, tokens = $15, "
            "history_count = history_count + $20::bigint, "
            "labels = coalesce($16::jsonb -> 'labels', '{}'::jsonb), "
            f"activity_bucket = {bucket.format(9)}, warn_bucket = {bucket.format(10)}, "
            f"expire_bucket = {bucket.format(11)}, purge_bucket = {bucket.format(12)}, "
            "version = $4, record = $16, commit_mark = $25, "
            "released_token = CASE WHEN $18::boolean THEN $17::bigint ELSE released_token END "
            "WHERE key = $1 AND is_current AND id = $2 AND version = $3 "
            "AND ($17::bigint IS NULL OR (released_token IS DISTINCT FROM $17::bigint AND "
            f"EXISTS (SELECT FROM {q}.leases l WHERE l.key = $1 AND l.token = $17::bigint "
            f"AND l.expires_at > {now.format('$19')}))) RETURNING num)"
        )
        commit_fast_history = (
            f"{commit_fast}, "
            f"h AS (INSERT INTO {q}.history (sid, seq, n, body, txt) "
            "SELECT s.num, h.seq, h.n, h.body, h.txt FROM s, unnest($21::bigint[], "
            "$22::integer[], $23::bytea[], $24::text[]) AS h(seq, n, body, txt)) "
            "SELECT 1 FROM s"
        )
        # Without history: a plain UPDATE (no CTE, no count to add), the mark is $20 and the
        # buckets come as $21-$24 (callgrind on a replay of the benchmark's statements: 266k
        # -> 250k server instructions per commit).
        commit_fast = (
            commit_fast.removeprefix("WITH s AS (").removesuffix(" RETURNING num)")
            .replace("history_count = history_count + $20::bigint, ", "")
            .replace("commit_mark = $25", "commit_mark = $20")
            .replace(f"activity_bucket = {bucket.format(9)}", "activity_bucket = $21")
            .replace(f"warn_bucket = {bucket.format(10)}", "warn_bucket = $22")
            .replace(f"expire_bucket = {bucket.format(11)}", "expire_bucket = $23")
            .replace(f"purge_bucket = {bucket.format(12)}", "purge_bucket = $24")
            + " RETURNING 1"
        )
        assert "WITH" not in commit_fast and "bucket = floor" not in commit_fast
        sql = {
            "load": f"SELECT record FROM {q}.sessions WHERE key = $1 AND is_current",
            "load_by_id": f"SELECT record FROM {q}.sessions WHERE id = $1",
            # One statement, one transaction without a WAL flush (postgres_schema, version 13):
            # take (or create) the key's lease row when it is free (expired, ours, or released
            # by the current session's last commit) and read the current record with the same
            # snapshot. No row: another owner holds the lease. (An UPDATE falling back to an
            # INSERT in a second CTE cost more server time than the upsert.) A plain upsert
            # whose RETURNING reads the record: the subqueries share the statement's snapshot,
            # and the released token is only read when the lease is neither expired nor ours
            # (callgrind: 188k -> 178k server instructions against CTEs).
            "lease_and_load": (
                f"INSERT INTO {q}.leases AS l (key, owner, token, expires_at) "
                f"VALUES ($1, $2, nextval('{q}.lease_token'), {now4} + $3::float8) "
                "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
                f"expires_at = excluded.expires_at WHERE l.expires_at <= {now4} "
                f"OR l.owner = excluded.owner OR l.token = (SELECT released_token {current}) "
                f"RETURNING l.token, l.expires_at, (SELECT record {current}), "
                "set_config('synchronous_commit', 'off', true)"
            ),
            # The same for several keys (distinct, locked in key order so that two batches
            # never wait for each other in a cycle); the rows say which keys were taken.
            "lease_and_load_many": (
                f"INSERT INTO {q}.leases AS l (key, owner, token, expires_at) "
                f"SELECT r.key, r.owner, nextval('{q}.lease_token'), {now4} + r.ttl "
                "FROM unnest($1::text[], $2::text[], $3::float8[]) AS r(key, owner, ttl) "
                "ORDER BY r.key "
                "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
                f"expires_at = excluded.expires_at WHERE l.expires_at <= {now4} "
                "OR l.owner = excluded.owner OR l.token = (SELECT s.released_token "
                f"FROM {q}.sessions s WHERE s.key = l.key AND s.is_current) "
                "RETURNING l.key, l.token, l.expires_at, (SELECT s.record "
                f"FROM {q}.sessions s WHERE s.key = l.key AND s.is_current), "
                "set_config('synchronous_commit', 'off', true)"
            ),
            # The general path (postgres_schema, version 13): new and replaced sessions,
            # conflicts, lost leases, retried commits, drops and summaries.
            "commit": f"SELECT outcome, actual FROM {commit_call}",
            "commit_fast": commit_fast,
            "commit_fast_history": commit_fast_history,
            # A lease released by its commit (postgres_schema, version 13) is not renewed.
            "renew": (
                f"UPDATE {q}.leases SET expires_at = {now.format('$3')} + $4 "
                f"WHERE key = $1 AND token = $2 AND expires_at > {now.format('$3')} "
                f"AND token IS DISTINCT FROM (SELECT released_token FROM {q}.sessions "
                "WHERE key = $1 AND is_current) RETURNING expires_at"
            ),
            # A released lease keeps its row, free to anyone (postgres_schema, version 8).
            "release": f"UPDATE {q}.leases SET expires_at = 0 WHERE key = $1 AND token = $2",
            "delete": (
                f"WITH d AS (DELETE FROM {q}.sessions WHERE key = $1 AND "
                "CASE WHEN $2::text IS NULL THEN is_current ELSE id = $2 END "
                "RETURNING id, num, released_token), "
                + delete_rows
                # The key's lease row goes too when it is free: released, or released by the
                # deleted session's last commit (postgres_schema, version 13).
                + f", fl AS (DELETE FROM {q}.leases WHERE key = $1 AND (expires_at = 0 "
                "OR token IN (SELECT released_token FROM d)) AND EXISTS (SELECT FROM d)) "
                "SELECT count(*) FROM d"
            ),
            # Only while the current record still holds the unreadable document ($5, NULL
            # when the bytes are not JSON and so cannot be what the column holds): a record
            # written meanwhile by another writer stays.
            "quarantine": (
                f"WITH d AS (DELETE FROM {q}.sessions WHERE key = $1 AND is_current "
                "AND record = $5 RETURNING id, num, released_token), "
                + delete_rows
                # A lease released by the removed session's last commit stays free.
                + f", fl AS (UPDATE {q}.leases SET expires_at = 0 WHERE key = $1 "
                "AND token IN (SELECT released_token FROM d))"
                + f", ins AS (INSERT INTO {q}.quarantine (key, reason, at, raw) "
                f"VALUES ($1, $2, {now.format('$3')}, $4)) SELECT count(*) FROM d"
            ),
            "list_quarantined": (
                f"SELECT key, reason, at, raw FROM {q}.quarantine ORDER BY id DESC LIMIT $1"
            ),
            # History rows hold the messages of one commit (postgres_schema, version 10),
            # keyed by their newest seq. The tail: the newest rows below `before` until they
            # hold `limit` messages (a running count of `n`; the scan stops after `limit` rows),
            # and with a `before`, the row holding it (its older messages may belong in).
            "read_tail": (
                f"SELECT body, txt FROM (SELECT body, txt, sum(n) OVER (ORDER BY seq DESC) - n "
                f"AS newer FROM {q}.history WHERE {sid} AND seq < $2 ORDER BY seq DESC "
                "LIMIT $3) t WHERE newer < $3"
            ),
            "read_tail_before": (
                f"(SELECT body, txt FROM {q}.history WHERE {sid} AND seq >= $2 ORDER BY seq "
                "LIMIT 1) UNION ALL "
                f"(SELECT body, txt FROM (SELECT body, txt, sum(n) OVER (ORDER BY seq DESC) - n "
                f"AS newer FROM {q}.history WHERE {sid} AND seq < $2 ORDER BY seq DESC "
                "LIMIT $3) t WHERE newer < $3)"
            ),
            # The rows ending inside the range, and the next one (it may start inside).
            "read_range": (
                f"(SELECT body, txt FROM {q}.history WHERE {sid} AND seq BETWEEN $2 AND $3) "
                f"UNION ALL (SELECT body, txt FROM {q}.history WHERE {sid} AND seq > $3 "
                "ORDER BY seq LIMIT 1)"
            ),
            # The row a drop ends in (the first row whose newest message is kept).
            "drop_boundary": (
                f"SELECT seq, body, txt FROM {q}.history WHERE {sid} AND seq > $2 "
                "ORDER BY seq LIMIT 1"
            ),
            "count_messages": f"SELECT history_count FROM {q}.sessions WHERE id = $1",
            "search": (
                f"SELECT seq, body, txt FROM {q}.history WHERE {sid} AND seq < $4 "
                "AND to_tsvector('simple'::regconfig, txt) @@ to_tsquery('simple', $2) "
                "ORDER BY seq DESC LIMIT $3"
            ),
            "list_summaries": (
                f"SELECT record FROM {q}.summaries WHERE session_id = $1 "
                "ORDER BY end_seq, start_seq"
            ),
            "incr": (
                f"INSERT INTO {q}.counters AS c (name, value) "
                "SELECT * FROM unnest($1::text[], $2::bigint[]) "
                "ON CONFLICT (name) DO UPDATE SET value = c.value + excluded.value"
            ),
            "read_counters": (
                f"SELECT name, value FROM {q}.counters WHERE starts_with(name, $1) ORDER BY name"
            ),
            "ping": "SELECT 1",
        }
        columns = {
            "warn": ("warn_at", "warn_bucket"),
            "expire": ("expires_at", "expire_bucket"),
            "purge": ("purge_at", "purge_bucket"),
        }
        for kind, (column, bucket) in columns.items():
            # One statement: pick the due rows nobody else is claiming (SKIP LOCKED) through
            # the partial index on the minute bucket (the oldest buckets first, sorted within),
            # push them to now + claim_seconds, return the old due time.
            sql[f"claim_{kind}"] = (
                f"WITH due AS (SELECT id, {column} AS at FROM {q}.sessions "
                f"WHERE {bucket} <= {_bucket(1)} AND {column} <= $1 "
                f"ORDER BY {bucket}, {column} LIMIT $2 FOR UPDATE SKIP LOCKED) "
                f"UPDATE {q}.sessions AS s SET {column} = $1 + $3, "
                f"{bucket} = floor(($1 + $3) / {schema_sql.TIME_BUCKET_SECONDS})::bigint FROM due "
                "WHERE s.id = due.id RETURNING s.key, s.id, due.at"
            )
        return sql

    # -- lifetime ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self._ready()

    async def _ready(self) -> ConnectionPool:
        pool = self._pool
        if pool is not None:
            return pool
        async with self._open_lock:
            if self._pool is not None:
                return self._pool
            self._closed = False
            pool = ConnectionPool(
                self._connect, min_size=self.pool_min_size, max_size=self.pool_max_size,
                max_idle=300.0,
            )
            try:
                await pool.start()
                conn = await pool.acquire(self.connect_timeout)
                self._watch_over(conn, self._backstop + _MIGRATION_BACKSTOP)
                try:
                    await self._check_schema(conn)
                finally:
                    self._busy.pop(conn, None)
                    pool.release(conn)
            except BaseException as exc:
                pool.terminate()
                if _is_unavailable(exc):
                    raise self._unavailable(exc) from exc
                raise
            self._pool = pool
            return pool

    async def _connect(self) -> Any:
        conn = await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout,
            # The server gives up first (statement_timeout: a clean error, and it also stops a
            # statement whose client is gone); the store's watchdog is the backstop for a
            # server or network that does not answer at all (`_run`, `_watch`): no timer per
            # statement.
            command_timeout=None,
            # jit off: JIT compilation only slows the store's small statements down.
            server_settings={
                "application_name": self.application_name,
                "jit": "off",
                "statement_timeout": str(max(1, round(self.command_timeout * 1000))),
            },
        )
        try:
            await _init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _check_schema(self, conn: Any) -> None:
        table = f"{self._q}.{schema_sql.MIGRATIONS_TABLE}"
        try:
            newest = await conn.fetchval(f"SELECT max(version) FROM {table}")
        except pgerr.UndefinedTableError:
            newest = None
        if newest == schema_sql.LATEST_VERSION:
            return  # the usual case: one cheap query, no lock
        applied = await schema_sql.apply_migrations(conn, self.schema, upgrade=self.migrate)
        if applied:
            log.info("PostgreSQL schema %s upgraded to version(s) %s", self.schema, applied)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._busy.clear()
        if pool is not None:
            await pool.close(self.command_timeout)

    async def ping(self) -> None:
        await self._read("ping", lambda c: c.fetchval(self._sql["ping"]))

    # -- plumbing -----------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return StoreUnavailable(
            f"PostgreSQL at {self._where} (schema {self.schema}) did not answer ({reason}); "
            "check that the server is up. The store reconnects by itself when it is back"
        )

    def _now(self) -> float | None:
        """The time used for leases: the injected clock, or None for the server's clock."""
        return self.clock.now() if self.clock is not None else None

    async def _run(
        self, op: str, fn: Callable[[Any], Awaitable[T]], *, retries: int
    ) -> T:
        """Run `fn(connection)`; connection faults become StoreUnavailable. A failure to
        acquire a connection is always retried (nothing was sent); a failure while running
        only `retries` times (reads)."""
        delay = 0.05
        acquire_retries = max(retries, 2)
        attempt = 0
        while True:
            attempt += 1
            # The hot path: an open pool with an idle connection, taken without awaiting.
            pool = self._pool
            conn = pool.try_acquire() if pool is not None else None
            if conn is None:
                try:
                    pool = await self._ready()
                    conn = await pool.acquire(self.connect_timeout)
                except StoreUnavailable:
                    if attempt > acquire_retries:
                        raise
                    await asyncio.sleep(delay)
                    delay *= 4
                    continue
                except PoolClosed as exc:
                    raise self._unavailable(exc) from exc
                except BaseException as exc:
                    if not _is_unavailable(exc):
                        raise
                    if attempt > acquire_retries:
                        raise self._unavailable(exc) from exc
                    log.debug("postgres %s: acquiring a connection failed (%s), retrying", op, exc)
                    await asyncio.sleep(delay)
                    delay *= 4
                    continue
            assert pool is not None
            self._watch_over(conn, self._backstop)
            try:
                return await fn(conn)
            except pgerr.PostgresError as exc:
                # A server error leaves the connection usable, unless the server is going away.
                if not _is_unavailable(exc):
                    raise
                pool.discard(conn)
                if attempt > retries:
                    raise self._unavailable(exc) from exc
                log.debug("postgres %s failed (%s), retrying", op, exc)
            except BaseException as exc:
                # Anything else (the connection died, a client-side timeout or a cancellation
                # mid-statement) leaves the connection in an unknown protocol state: close it.
                pool.discard(conn)
                if not _is_unavailable(exc):
                    raise
                if attempt > retries:
                    raise self._unavailable(exc) from exc
                log.debug("postgres %s failed (%s), retrying", op, exc)
            finally:
                self._busy.pop(conn, None)
                pool.release(conn)
            await asyncio.sleep(delay)
            delay *= 4

    @property
    def _backstop(self) -> float:
        return self.command_timeout + _CLIENT_TIMEOUT_MARGIN

    def _watch_over(self, conn: Any, seconds: float) -> None:
        """`conn` is in use: the watchdog terminates it if it is still busy in `seconds`."""
        self._busy[conn] = time.monotonic() + seconds
        if self._watchdog is None:
            self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        # A hung statement is cut within a quarter of the backstop after its deadline.
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._backstop / 4, self._watch)

    def _watch(self) -> None:
        """Terminate the connections whose statement is past its deadline (the awaiting call
        sees the connection closed: StoreUnavailable); sleep while any connection is busy."""
        self._watchdog = None
        now = time.monotonic()
        busy = self._busy
        for conn, deadline in builtins.list(busy.items()):
            if deadline <= now:
                del busy[conn]
                log.warning("postgres: no answer within %.1f s, closing the connection",
                            self._backstop)
                conn.terminate()
        if busy:
            self._arm_watchdog()

    def _read(self, op: str, fn: Callable[[Any], Awaitable[T]]) -> Awaitable[T]:
        return self._run(op, fn, retries=self.read_retries)

    def _write(self, op: str, fn: Callable[[Any], Awaitable[T]]) -> Awaitable[T]:
        return self._run(op, fn, retries=0)

    def _decode(self, raw: bytes, key: str) -> SessionRecord:
        return self.codec.decode(raw, key)

    # -- records ----------------------------------------------------------------------------

    async def load(self, key: str) -> SessionRecord | None:
        raw = await self._read("load", lambda c: c.fetchval(self._sql["load"], key))
        return None if raw is None else self._decode(raw, key)

    async def load_by_id(self, session_id: str) -> SessionRecord | None:
        row = await self._read(
            "load_by_id", lambda c: c.fetchval(self._sql["load_by_id"], session_id)
        )
        return None if row is None else self._decode(row, session_id)

    async def commit(
        self,
        record: SessionRecord,
        *,
        expected: int,
        lease: Lease | None = None,
        release: bool = False,
        history: HistoryChanges | None = None,
    ) -> None:
        key = record.key
        if record.version != expected + 1:
            raise ConflictError(key, expected, record.version - 1)
        if lease is not None and lease.key != key:
            raise ConfigurationError(
                f"the lease is for session {lease.key!r}, not {key!r}; commit with its own lease"
            )
        split = None
        if history is not None and history.drop_messages_through is not None:
            split = await self._drop_split(record.id, history.drop_messages_through)
        args = self.commit_arguments(record, expected, lease, release, history, split=split)
        # The usual commit first (an update of a stored session appending history), then the
        # general path when it wrote nothing; a first commit goes to the general path at once.
        fast = expected > 0 and (
            history is None or not (history.summaries or history.drop_summaries
                                    or history.drop_messages_through is not None))
        sql = self._sql

        name, fast_args = _fast_arguments(args)

        async def run(conn: Any) -> Any:
            if fast and await conn.fetchval(sql[name], *fast_args):
                return _APPLIED
            return await conn.fetchrow(sql["commit"], *args)

        try:
            # Retried like a read: the general path recognises a commit it already applied.
            row = await self._read("commit", run)
        except _CONFLICT:
            raise ConflictError(key, expected, None) from None
        outcome = row[0]
        if outcome == 1:
            assert lease is not None
            raise LeaseLost(key, lease.token)
        if outcome == 2:
            raise ConflictError(key, expected, row[1])

    async def _drop_split(
        self, session_id: str, through: int
    ) -> tuple[int, int, bytes, str] | None:
        """The history row a drop through `through` ends inside, re-encoded with the messages
        it keeps: (row seq, n, body, txt); None when the drop ends between rows."""
        row = await self._read(
            "drop_boundary",
            lambda c: c.fetchrow(self._sql["drop_boundary"], session_id, through),
        )
        if row is None:
            return None
        messages = self._row_messages(row["body"], row["txt"])
        kept = [m for m in messages if m.seq > through]
        if len(kept) == len(messages):
            return None
        _, ns, bodies, txts = self._history_rows(kept, limit=len(kept))
        return row["seq"], ns[0], bodies[0], txts[0]

    def _history_rows(
        self, messages: Sequence[Message], limit: int = schema_sql.HISTORY_ROW_MESSAGES
    ) -> tuple[_Ints, _Ints, builtins.list[bytes], builtins.list[str]]:
        """Messages as history rows of at most `limit` messages (postgres_schema, version 10):
        (newest seqs, counts, bodies, texts)."""
        pack = self.codec.pack_message
        searchable = self.codec.encryptor is None
        seqs: _Ints = []
        ns: _Ints = []
        bodies: builtins.list[bytes] = []
        txts: builtins.list[str] = []
        for start in range(0, len(messages), limit):
            chunk = messages[start:start + limit]
            items: builtins.list[int | bytes] = []
            texts: builtins.list[str] = []
            for m in chunk:
                content = m.content
                if searchable and isinstance(content, str) and "\x00" not in content:
                    items.append(len(content))
                    items.append(pack(msgspec.structs.replace(m, content="")))
                    texts.append(content)
                else:
                    text = m.text.replace("\x00", " ") if searchable else ""
                    items.append(-1 - len(text))
                    items.append(pack(m))
                    texts.append(text)
            seqs.append(max(m.seq for m in chunk))
            ns.append(len(chunk))
            body = _ROW_ENCODER.encode(items)
            deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,
                                       _BODY_ZDICT)
            packed = b"\x00" + deflate.compress(body) + deflate.flush()
            bodies.append(packed if len(packed) < len(body) else body)
            txts.append("".join(t + "\n" for t in texts))
        return seqs, ns, bodies, txts

    def _row_messages(self, body: bytes, txt: str) -> _Messages:
        """The messages of one history row, in the order they were appended."""
        decode = self.codec.decode_message
        first = body[:1]
        if first == b"{":  # a message written before version 10: its JSON form
            return [decode(body)]
        if first == b"\x00":  # deflated with the preset dictionary
            inflate = zlib.decompressobj(-15, _BODY_ZDICT)
            body = inflate.decompress(memoryview(body)[1:]) + inflate.flush()
        items = _ROW_DECODER.decode(body)
        out: _Messages = []
        pos = 0
        for i in range(0, len(items), 2):
            k = items[i]
            raw = items[i + 1]
            assert isinstance(k, int) and isinstance(raw, bytes)
            message = decode(raw)
            if k >= 0:
                message.content = txt[pos:pos + k]
                pos += k + 1
            else:
                pos += -k  # its search text and the newline
            out.append(message)
        return out

    def commit_arguments(
        self,
        record: SessionRecord,
        expected: int,
        lease: Lease | None = None,
        release: bool = False,
        history: HistoryChanges | None = None,
        *,
        split: tuple[int, int, bytes, str] | None = None,
    ) -> tuple[Any, ...]:
        """The parameters of the commit function for one commit (encodes before any I/O, so
        InvalidDataError and RecordTooLarge leave the database untouched). `split` is the row a
        drop ends inside, re-encoded (see `_drop_split`)."""
        key = record.key
        raw = self.codec.encode(record)  # InvalidDataError / RecordTooLarge before any I/O
        rows: tuple[Any, ...] = (None, None, None, None)
        added = 0
        summaries = None
        drop_through = None
        drop_summaries = False
        if history:
            if history.append:
                rows = self._history_rows(history.append)
                added = len(history.append)
            if history.summaries:
                summaries = _json_array([self.codec.encode_summary(s) for s in history.summaries])
            drop_through = history.drop_messages_through
            drop_summaries = history.drop_summaries
        flow = record.flow
        usage = record.usage
        platform, scope = key.split(":", 2)[:2]
        return (
            key, record.id, expected, record.version,
            getattr(record.status, "value", record.status), platform, scope,
            flow.name if flow is not None else None, flow.step if flow is not None else None,
            record.created_at, record.last_activity,
            record.due_at("warn"), record.due_at("expire"), record.due_at("purge"),
            record.close_reason, record.counters.messages,
            usage.input_tokens + usage.output_tokens, raw,
            lease.token if lease is not None else None, bool(release and lease is not None),
            self._now(), *rows, added, summaries, drop_through, drop_summaries,
            # The commit's mark: the same for every attempt of this call, so a retry can tell
            # its own applied commit from an identical one by another writer. A random prefix
            # per store and a counter (uuid text: no urandom call per commit).
            f"{self._mark_prefix}{next(self._marks):016x}",
            *(split if split is not None else (None, None, None, None)),
        )

    async def delete(self, key: str, session_id: str | None = None) -> bool:
        deleted = await self._write(
            "delete", lambda c: c.fetchval(self._sql["delete"], key, session_id)
        )
        return bool(deleted)

    async def quarantine(self, key: str, raw: bytes, reason: str) -> None:
        raw = bytes(raw)
        document = raw if _is_json(raw) else None
        moved = await self._write(
            "quarantine",
            lambda c: c.fetchval(
                self._sql["quarantine"], key, reason, self._now(), raw, document
            ),
        )
        if moved:
            log.warning("quarantined the unreadable session %s: %s", key, reason)

    async def list_quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._read(
            "list_quarantined", lambda c: c.fetch(self._sql["list_quarantined"], limit)
        )
        return [
            {"key": r["key"], "reason": r["reason"], "at": r["at"], "raw": bytes(r["raw"])}
            for r in rows
        ]

    async def _put_raw(self, key: str, raw: bytes) -> None:
        """Test/maintenance hook (see `Store`): store `raw` as the current record of `key`
        unchecked, creating a current row if there is none. The column is JSONB, so `raw` must
        be a JSON document (ValueError otherwise); it reads back in JSONB's canonical text."""
        doc = bytes(raw)
        if not _is_json(doc):
            raise ValueError(
                "PostgresStore keeps records in a JSONB column: _put_raw takes a JSON document "
                f"(UTF-8), not {doc[:40]!r}"
            )
        platform, _, rest = key.partition(":")
        scope = rest.partition(":")[0]
        query = (
            f"WITH u AS (UPDATE {self._q}.sessions SET record = $2 WHERE key = $1 AND is_current "
            f"RETURNING id) INSERT INTO {self._q}.sessions (id, key, is_current, status, "
            "platform, scope, created_at, last_activity, activity_bucket, version, record) "
            "SELECT $3, $1, true, 'active', $4, $5, 0, 0, 0, 1, $2 "
            "WHERE NOT EXISTS (SELECT 1 FROM u)"
        )
        try:
            await self._write(
                "put_raw",
                lambda c: c.execute(query, key, doc, f"raw-{uuid.uuid4().hex}", platform, scope),
            )
        except pgerr.UntranslatableCharacterError as exc:  # e.g. "\u0000" inside a string
            raise ValueError(f"JSONB cannot hold this document: {exc}") from None

    async def list(
        self, filter: SessionFilter | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        if limit <= 0:
            return Page(items=[], next_cursor=None)
        where = _Where().apply(filter)
        if cursor is not None:
            after_activity, after_id = _decode_cursor(cursor)
            where.params.extend([after_activity, after_id])
            n = len(where.params)
            # After the cursor in (last_activity desc, id asc); the first term bounds the
            # index range, the second skips what the previous page returned.
            where.terms.append(
                f"activity_bucket <= {_bucket(n - 1)} AND last_activity <= ${n - 1} "
                f"AND (last_activity < ${n - 1} OR id > ${n})"
            )
        where.params.append(limit + 1)
        # The index orders by minute bucket; within one the rows are sorted (incrementally).
        query = (
            f"SELECT id, key, last_activity, record FROM {self._q}.sessions{where.sql} "
            f"ORDER BY activity_bucket DESC, last_activity DESC, id LIMIT ${len(where.params)}"
        )
        rows = await self._read("list", lambda c: c.fetch(query, *where.params))
        more = len(rows) > limit
        rows = rows[:limit]
        items: list[SessionRecord] = []
        for row in rows:
            try:
                items.append(self._decode(row["record"], row["key"]))
            except CorruptRecordError as exc:
                log.warning("listing skips the unreadable session %s: %s", row["key"], exc)
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = _encode_cursor(last["last_activity"], last["id"])
        return Page(items=items, next_cursor=next_cursor)

    async def count(self, filter: SessionFilter | None = None) -> SessionStats:
        where = _Where().apply(filter)
        query = (
            f"SELECT status, platform, count(*) AS n FROM {self._q}.sessions{where.sql} "
            "GROUP BY status, platform"
        )
        rows = await self._read("count", lambda c: c.fetch(query, *where.params))
        stats = SessionStats(by_status={}, by_platform={})
        for row in rows:
            n = int(row["n"])
            stats.total += n
            stats.by_status[row["status"]] = stats.by_status.get(row["status"], 0) + n
            stats.by_platform[row["platform"]] = stats.by_platform.get(row["platform"], 0) + n
        return stats

    async def stats(
        self, filter: SessionFilter | None = None, *, labels: Sequence[str] = ()
    ) -> SessionStats:
        where = _Where().apply(filter)
        # One scan, five groupings. GROUPING() has a bit set per column *not* grouped by:
        # status=16, platform=8, close_reason=4, flow=2, step=1.
        query = (
            "SELECT GROUPING(status, platform, close_reason, flow, step) AS g, status, "
            "platform, close_reason, flow, step, count(*) AS n, "
            "count(*) FILTER (WHERE status = 'active') AS active, "
            "coalesce(sum(messages), 0) AS messages, coalesce(sum(tokens), 0) AS tokens, "
            "avg(greatest(last_activity - created_at, 0)) AS duration "
            f"FROM {self._q}.sessions{where.sql} "
            "GROUP BY GROUPING SETS ((), (status), (platform), (close_reason), (flow, step))"
        )
        label_query = None
        label_params: list[Any] = []
        if labels:
            label_where = _Where().apply(filter)
            label_where.add("l.key = ANY({}::text[])", list(labels))
            label_query = (
                f"SELECT l.key AS name, l.value, count(*) AS n FROM {self._q}.sessions, "
                f"jsonb_each_text(labels) AS l{label_where.sql} GROUP BY l.key, l.value"
            )
            label_params = label_where.params

        async def run(conn: Any) -> tuple[list[Any], list[Any]]:
            rows = await conn.fetch(query, *where.params)
            label_rows = await conn.fetch(label_query, *label_params) if label_query else []
            return rows, label_rows

        rows, label_rows = await self._read("stats", run)
        stats = SessionStats(
            by_status={}, by_platform={}, by_close_reason={}, by_flow_step={},
            by_label={name: {} for name in labels},
        )
        for row in rows:
            g, n = row["g"], int(row["n"])
            if g == 0b11111:
                stats.total = n
                stats.messages = int(row["messages"])
                stats.tokens = int(row["tokens"])
                stats.avg_duration_seconds = float(row["duration"] or 0.0)
            elif g == 0b01111:
                stats.by_status[row["status"]] = n
            elif g == 0b10111:
                stats.by_platform[row["platform"]] = n
            elif g == 0b11011:
                if row["close_reason"] is not None:
                    stats.by_close_reason[row["close_reason"]] = n
            elif g == 0b11100:
                if row["flow"] is not None and row["active"]:
                    name = f"{row['flow']}:{row['step'] or ''}"
                    stats.by_flow_step[name] = int(row["active"])
        for row in label_rows:
            stats.by_label[row["name"]][row["value"]] = int(row["n"])
        return stats

    # -- history ----------------------------------------------------------------------------

    def _messages(self, rows: Sequence[Any]) -> builtins.list[Message]:
        """The messages of history rows, ordered by seq."""
        out: _Messages = []
        for row in rows:
            out.extend(self._row_messages(row["body"], row["txt"]))
        out.sort(key=_by_seq)
        return out

    async def read_tail(
        self, ref: SessionRef, limit: int, *, before_seq: int | None = None
    ) -> builtins.list[Message]:
        if limit <= 0:
            return []
        if before_seq is None:
            rows = await self._read(
                "read_tail", lambda c: c.fetch(self._sql["read_tail"], ref.id, _MAX_SEQ, limit)
            )
            messages = self._messages(rows)
        else:
            rows = await self._read(
                "read_tail",
                lambda c: c.fetch(self._sql["read_tail_before"], ref.id, before_seq, limit),
            )
            messages = [m for m in self._messages(rows) if m.seq < before_seq]
        return messages[-limit:]

    async def read_range(self, ref: SessionRef, start_seq: int, end_seq: int) -> _Messages:
        if end_seq < start_seq:
            return []
        rows = await self._read(
            "read_range",
            lambda c: c.fetch(self._sql["read_range"], ref.id, start_seq, end_seq),
        )
        return [m for m in self._messages(rows) if start_seq <= m.seq <= end_seq]

    async def count_messages(self, ref: SessionRef) -> int:
        # Maintained by every commit on the session's row: no scan of the conversation.
        n = await self._read(
            "count_messages", lambda c: c.fetchval(self._sql["count_messages"], ref.id)
        )
        return int(n or 0)

    async def search_messages(self, ref: SessionRef, query: str, limit: int = 20) -> _Messages:
        """Full-text search (PostgreSQL 'simple' configuration): messages holding every word of
        `query` as a word or the start of a word, case-insensitive, newest first. Encrypted
        history cannot be indexed, so it falls back to scanning."""
        words = _WORD_RE.findall(query.lower())
        if self.codec.encryptor is not None or not words:
            return await super().search_messages(ref, query, limit)
        tsquery = " & ".join(f"'{w}':*" for w in words)
        # A row matches when its messages hold the words together; each message is checked on
        # its own here, newest first, paging back until `limit` are found.
        found: _Messages = []
        before = _MAX_SEQ
        page = max(limit, 8)
        while len(found) < limit:
            statement = _fetch(self._sql["search"], ref.id, tsquery, page, before)
            rows = await self._read("search", statement)
            for row in rows:
                messages = self._row_messages(row["body"], row["txt"])
                messages.sort(key=_by_seq, reverse=True)
                found.extend(m for m in messages if _matches(m.text, words))
            if len(rows) < page:
                break
            before = rows[-1]["seq"]
        return found[:limit]

    async def list_summaries(self, ref: SessionRef) -> builtins.list[Summary]:
        rows = await self._read(
            "list_summaries", lambda c: c.fetch(self._sql["list_summaries"], ref.id)
        )
        return [self.codec.decode_summary(row["record"]) for row in rows]

    # -- due index --------------------------------------------------------------------------

    async def claim_due(
        self, kind: str, now: float, limit: int, *, claim_seconds: float = 30.0
    ) -> builtins.list[DueItem]:
        if kind not in DUE_KINDS:
            raise ValueError(f"unknown due kind {kind!r}; use one of {DUE_KINDS}")
        if limit <= 0:
            return []
        statement = self._sql[f"claim_{kind}"]
        # A claim is a write, but retrying one whose answer was lost only delays those items
        # by claim_seconds (they come back), so it is treated like a read.
        rows = await self._read(
            "claim_due",
            lambda c: c.fetch(statement, float(now), limit, float(claim_seconds)),
        )
        items = [
            DueItem(key=r["key"], session_id=r["id"], kind=kind, due_at=r["at"]) for r in rows
        ]
        items.sort(key=lambda item: item.due_at)
        return items

    # -- leases -----------------------------------------------------------------------------

    async def lease_and_load(
        self, key: str, owner: str, ttl: float
    ) -> tuple[Lease | None, SessionRecord | None]:
        # At most `_lease_slots` lease statements run at once; requests arriving meanwhile
        # wait and go out together in one statement (`_flush_leases`): with 64 updates at a
        # time a lease costs the server about half the instructions in batches of six, while
        # one update at a time never waits.
        if self._leasing < self._lease_slots:
            self._leasing += 1
            try:
                row = await self._read(
                    "lease_and_load",
                    lambda c: c.fetchrow(
                        self._sql["lease_and_load"], key, owner, float(ttl), self._now()),
                )
            finally:
                self._leasing -= 1
                if self._lease_queue:
                    self._start_lease_flush()
            return self._leased(key, owner, row)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._lease_queue.append((key, owner, float(ttl), waiter))
        return self._leased(key, owner, await waiter)

    def _leased(
        self, key: str, owner: str, row: Any
    ) -> tuple[Lease | None, SessionRecord | None]:
        """A lease statement's row for `key` (token, expires_at, record; None: held by
        another owner) as lease_and_load's answer."""
        if row is None:
            return None, None
        lease = Lease(key=key, owner=owner, token=row[0], expires_at=row[1])
        raw = row[2]
        if raw is None:
            return lease, None
        try:
            return lease, self._decode(raw, key)
        except CorruptRecordError as exc:
            raise corrupt_with_lease(exc, lease) from None

    def _start_lease_flush(self) -> None:
        self._leasing += 1
        task = asyncio.ensure_future(self._flush_leases())
        self._flushes.add(task)  # keep a reference until it finishes
        task.add_done_callback(self._flushes.discard)

    async def _flush_leases(self) -> None:
        """Send the waiting lease requests, up to `_LEASE_BATCH` distinct keys per statement,
        until none waits (holds one of the lease slots meanwhile)."""
        try:
            while self._lease_queue:
                batch = self._next_lease_batch()
                if batch:
                    await self._lease_batch(batch)
        finally:
            self._leasing -= 1
            if self._lease_queue and self._leasing < self._lease_slots:
                self._start_lease_flush()

    def _next_lease_batch(self) -> builtins.list[tuple[str, str, float, asyncio.Future[Any]]]:
        """Waiting requests of distinct keys (a key asked twice waits for the next batch: one
        statement cannot upsert a row twice); requests given up meanwhile are dropped."""
        batch: builtins.list[tuple[str, str, float, asyncio.Future[Any]]] = []
        later: builtins.list[tuple[str, str, float, asyncio.Future[Any]]] = []
        keys: set[str] = set()
        for request in self._lease_queue:
            if request[3].done():
                continue
            if request[0] in keys or len(batch) >= _LEASE_BATCH:
                later.append(request)
            else:
                keys.add(request[0])
                batch.append(request)
        self._lease_queue[:] = later
        return batch

    async def _lease_batch(
        self, batch: builtins.list[tuple[str, str, float, asyncio.Future[Any]]]
    ) -> None:
        keys = [r[0] for r in batch]
        owners = [r[1] for r in batch]
        ttls = [r[2] for r in batch]
        try:
            rows = await self._read(
                "lease_and_load",
                lambda c: c.fetch(self._sql["lease_and_load_many"], keys, owners, ttls,
                                  self._now()),
            )
        except Exception as exc:
            for *_, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is shutting down): so are its requests
            for *_, waiter in batch:
                waiter.cancel()
            raise
        taken = {row[0]: row[1:] for row in rows}
        for key, owner, _, waiter in batch:
            row = taken.get(key)
            if not waiter.done():
                waiter.set_result(row)
            elif row is not None:
                # Its caller gave up while the statement ran: free the lease it would hold.
                lease = Lease(key=key, owner=owner, token=row[0], expires_at=row[1])
                task = asyncio.ensure_future(self._release_quietly(lease))
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)

    async def _release_quietly(self, lease: Lease) -> None:
        try:
            await self.release(lease)
        except Exception:
            log.warning("could not release the abandoned lease of %s", lease.key, exc_info=True)

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        expires_at = await self._read(
            "renew",
            lambda c: c.fetchval(
                self._sql["renew"], lease.key, lease.token, self._now(), float(ttl)
            ),
        )
        if expires_at is None:
            return None
        return Lease(key=lease.key, owner=lease.owner, token=lease.token, expires_at=expires_at)

    async def release(self, lease: Lease) -> None:
        await self._read(
            "release", lambda c: c.execute(self._sql["release"], lease.key, lease.token)
        )

    # -- counters ---------------------------------------------------------------------------

    async def incr(self, counters: dict[str, int]) -> None:
        if not counters:
            return
        # Sorted so that concurrent multi-counter increments lock rows in one order.
        names = sorted(counters)
        values = [int(counters[name]) for name in names]
        await self._write("incr", lambda c: c.execute(self._sql["incr"], names, values))

    async def read_counters(self, prefix: str = "") -> dict[str, int]:
        rows = await self._read(
            "read_counters", lambda c: c.fetch(self._sql["read_counters"], prefix)
        )
        return {row["name"]: int(row["value"]) for row in rows}


async def upgrade(url: str) -> list[int]:
    """Create or upgrade the chatstate schema named by `url` (``?schema=``, default
    ``chatstate``); return the migration versions applied (empty when already current).
    This is what ``chatstate db upgrade`` runs. A schema newer than this code raises
    `SchemaError` and is left unchanged."""
    store = PostgresStore.from_url(url, migrate=True)
    try:
        conn = await asyncpg.connect(store.dsn, timeout=store.connect_timeout,
                                     command_timeout=max(store.command_timeout, 60.0))
    except _UNAVAILABLE as exc:
        raise store._unavailable(exc) from exc
    try:
        return await schema_sql.apply_migrations(conn, store.schema, upgrade=True)
    finally:
        await conn.close()
