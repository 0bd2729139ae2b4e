"""RedisStore: sessions in Redis or Redis Cluster, on redis-py's asyncio client with hiredis.

URLs::

    redis://[user:password@]host:6379/0?prefix=mybot&max_connections=50&socket_timeout=5
    rediss://...                                  (TLS)
    redis+cluster://host:7000,host:7001?prefix=mybot&buckets=16

Query options: ``prefix`` (or ``namespace``), ``max_connections`` (or ``pool_size``),
``socket_timeout`` (or ``timeout``), ``connect_timeout``, ``retries``, ``buckets`` (Cluster only),
``gc_margin`` (seconds), ``format`` (``json`` or ``msgpack``).

Cost of an update: `lease_and_load` is one script call with a plain read of the record behind
it in the same write, and `commit(..., release=True)` is one script call, so a serialised update
costs two round trips. On standalone Redis the scripts run
on the store's own lean connection pool (see `_LeanPool`, `RedisStore._evalsha`): redis-py's
client layer cost more client time per update than the requests themselves.

Data layout, version 7 (P = prefix, B = the session base, K = canonical session key)::

    B:r           hash  the key's lease: l = "<expiry><fencing token>:<owner>" (expiry all
                        zeros once released; token and owner stay); and its current session:
                        id, and the row fields below
    B:s:<id>      hash  the row of a session that a newer one replaced at the key:
                        b (record), v, ag (aggregate contribution), nm, nk, nd (sums), st, fl,
                        sp (filter fields), gc, c (mark of the commit that wrote it), w, x, p
                        (due times, '' = none), wi, xi, pi (where its due entries sit),
                        la (-last_activity, exact), lg (its listing group, the minute),
                        cm, cd (the sums as the aggregates hold them, while a fold is due)
    B:h:<id>      list  history, oldest first: 4-byte seq + message (Codec.pack_message's
                        form); a few bytes per entry where a sorted set costs ~100
    B:m:<id>      zset  score end_seq -> summary
    I:due:<kind>  zset  score time -> "K id"      one per kind (warn, expire, purge); lazy:
                        an entry sits at or before the session's due time (see below)
    I:recent      zset  score -minute of last_activity -> "id K"  listing index, current and
                        replaced: its order gives the minutes newest first; a listing sorts
                        each minute by the exact time (the row's la) and id
    I:agg         hash  field -> count            totals by status/platform/reason/step/label,
                        and the sums m (messages), k (tokens), d (duration, ms)
    I:dirty       set   "K id"                    rows whose sums m, d wait for a fold
    I:ids         hash  id -> K                   finds replaced sessions by id
    I:q           list  quarantined records
    I:layout      string  the layout version ("7")

The current session lives in the pointer hash itself, so an update touches one session key:
`lease_and_load` is one HMGET and one HSET of B:r in its script and an HGET of the record
outside it, and a commit one HMGET and one HSET of B:r
plus only the index entries that must change (compared with the row's previous lg, wi, xi, pi
and mt fields, read by that same HMGET). The message and duration sums change with every
message, so the aggregates take them lazily: a commit files its row in I:dirty once (keeping the
folded values in cm, cd), and `stats()` folds the filed rows into I:agg first (FOLD, in calls of
at most SCAN_BUDGET rows); `count()` needs no fold. The listing index holds minutes, so only the
first commit of a session in a minute moves its entry; a listing page reads whole minutes (in
calls of at most SCAN_BUDGET entries) and sorts them exactly, then fetches the page's records.
The due index is lazy, as the MemoryStore's: a commit whose due time moved later (a sliding idle
deadline, every message) leaves the entry where it is, and `claim_due` moves an early entry to
the real time instead of handing it out. Lease times are fixed-width microsecond strings,
compared as strings by the scripts. Layouts 5 and 6 are marked 7 at `open()` (their rows need
no change; a pointer's lease moves into 'l' at its next lease); layouts 1 to 4 are refused with
a ConfigurationError: start on an empty prefix.

Standalone Redis: B = ``P:{K}`` and I = ``P`` (one global index of each kind). Every script
touches the session's keys and the global index keys together, atomically.

Redis Cluster: a script may only touch keys of one hash slot, and the indexes must change in the
same atomic step as the record (a client-side follow-up write could be lost between the two, or
be applied by a commit that lost its compare-and-set, leaving a wrong timer). So on Cluster the
indexes are sharded into ``buckets`` (default 16) and a session lives in the slot of its bucket:
B = ``P:{b<n>}:K`` and I = ``P:{b<n>}`` with n = crc32(K) % buckets. All keys of one session still
share one hash tag, and every commit stays one atomic script. Claims, listings and counts visit
the buckets (at most `buckets` small calls, independent of the number of sessions). Raise
``buckets`` to spread a large cluster over more slots; it cannot change once data is stored.

Time: lease and due times come from the store's `clock` (client side, passed to the scripts),
so the same code runs under a FakeClock in tests. Native key expiry is only a garbage-collection
backstop: a closed record's keys expire ``gc_margin`` after its ``purge_at`` (the lifecycle purges
them through the due index first), and a pointer that holds only a lease (no session) expires a
day after it was taken.

Failures: a server that cannot be reached or does not answer in time, and one that refuses work
(out of memory, a long-running script, failing snapshots), raise StoreUnavailable; nothing is
half-written (see `_run`, `_refusal`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import logging
import math
import os
import random
import socket
import zlib
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec

from ..clock import Clock, SystemClock
from ..codec import Codec
from ..errors import (
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    InvalidDataError,
    LeaseLost,
    StoreUnavailable,
)
from ..model import HistoryChanges, Message, SessionRecord, SessionRef, Status, Summary
from . import redis_scripts as lua
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

try:
    import redis.asyncio as aioredis
    from hiredis import pack_command as _hiredis_pack
    from redis import exceptions as rexc
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import Connection, SSLConnection
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "RedisStore needs redis-py; install it with: pip install 'chatstate[redis]'"
    ) from exc

log = logging.getLogger("chatstate.stores.redis")

T = TypeVar("T")
_json_encode = msgspec.json.Encoder().encode

DEFAULT_PREFIX = "chatstate"
DEFAULT_CLUSTER_BUCKETS = 16
# A pointer hash holding only a lease and its token counter (no session) expires after this.
_POINTER_BACKSTOP_MS = lua.POINTER_BACKSTOP_MS
POINTER_BACKSTOP = _POINTER_BACKSTOP_MS / 1000
QUARANTINE_KEEP = 30 * 86_400.0  # history of a quarantined session is kept this long
QUARANTINE_CAP = 1000  # newest quarantined records kept per bucket
SCAN_BUDGET = 2000  # index entries one scan call examines at most (bounds its server time)

# Errors that mean "the server could not be reached or did not answer": nothing we sent can be
# trusted to have happened, so they become StoreUnavailable (after safe retries).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.ClusterError,
    rexc.RedisClusterException,
    rexc.ReadOnlyError,
    OSError,
    asyncio.TimeoutError,
)

# Error replies of a server that is up but refuses work for now: out of memory (maxmemory),
# a script running too long (BUSY), snapshots failing (MISCONF), too few replicas. A script is
# refused at its first write (Redis lets a script without flags start, and refuses a denied
# write only while the script has written nothing), so nothing was half-written: the store
# reports StoreUnavailable as for a dead server, without retrying (the condition outlasts a
# backoff, and retries would add to a loaded server's work).
_REFUSAL_CODES = ("BUSY", "MISCONF", "NOREPLICAS")


def _refusal(exc: rexc.ResponseError) -> str | None:
    """What the server refused with, or None for any other error reply (a bug: raised as is)."""
    if isinstance(exc, rexc.OutOfMemoryError):  # redis-py strips the OOM code from the text
        return f"out of memory: {exc}"
    text = str(exc)
    return text if text.startswith(_REFUSAL_CODES) else None


_FILTER_FIELDS = ("status", "platform", "scope", "flow", "step", "key_prefix")
_ALL_FILTERS = (*_FILTER_FIELDS, "updated_since", "updated_before")
_LABEL_SEP = "\x1f"
_DUE_FIELDS = {"warn": "w", "expire": "x", "purge": "p"}  # row field of each due time


def _float(value: str | float) -> str:
    """A float as Redis and Lua read it back exactly."""
    return repr(float(value))


_EXPIRED = "x" * 17  # a lease expiry that no stored lease field has (see RedisStore.commit)


def _us(value: float) -> str:
    """A time as the lease fields hold it: whole microseconds, zero-padded to a fixed width, so
    that the scripts compare two times as strings (no number parsing on the hot path)."""
    return f"{max(0, round(value * 1_000_000)):017d}"


def _history_entry(seq: int, packed: bytes) -> bytes:
    """A history list entry: the seq in 4 bytes big-endian, then the packed message."""
    if not 0 <= seq < 1 << 32:
        raise InvalidDataError(f"message seq {seq} is out of range (0 .. 2**32 - 1)")
    return seq.to_bytes(4, "big") + packed


LISTING_GROUP = 60  # seconds: the listing index holds a session at its minute


def _listing_group(last_activity: float) -> int:
    """The listing index's score of a time: -floor(t / LISTING_GROUP) (newest first)."""
    return -math.floor(last_activity / LISTING_GROUP)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _HiredisPacking:
    """Packs requests with hiredis (C) instead of redis-py's Python loop: a commit carries about
    30 arguments, and packing them was the client's largest single cost per update. Requests
    hiredis cannot pack (unusual argument types) fall back to redis-py."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if args and isinstance(args[0], str):
            # As redis-py does: a command name such as "SCRIPT LOAD" is sent as two words.
            try:
                return [_hiredis_pack((*args[0].split(), *args[1:]))]
            except TypeError:
                pass
        return super().pack_command(*args)  # type: ignore[misc]


class _PlainConnection(_HiredisPacking, Connection):
    pass


class _TLSConnection(_HiredisPacking, SSLConnection):
    pass


class _LeanPool(aioredis.ConnectionPool):
    """redis-py's plain pool without its per-request extras (a lock, metrics, events and a
    readiness probe on every checkout: more client time than the request itself). The store's
    semaphore keeps requests within max_connections, and a connection whose request failed or
    was cancelled is disconnected before it comes back (redis-py's reads and writes do that, as
    does `RedisStore._evalsha`), so a pooled connection never holds an unread reply."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = self.get_available_connection()
        try:
            await connection.connect()  # at once when connected
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: Any) -> None:
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():
            await connection.disconnect()
        self._available_connections.append(connection)


class _Layout:
    """Key names. See the module docstring for the standalone and Cluster layouts."""

    def __init__(self, prefix: str, buckets: int | None) -> None:
        self.prefix = prefix
        self.buckets = buckets  # None: standalone (one global index)

    @property
    def all_buckets(self) -> list[int]:
        return list(range(self.buckets)) if self.buckets else [0]

    def bucket(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.buckets if self.buckets else 0

    def base(self, key: str) -> str:
        if self.buckets:
            return f"{self.prefix}:{{b{self.bucket(key)}}}:{key}"
        return f"{self.prefix}:{{{key}}}"

    def row_head_tail(self, bucket: int) -> tuple[str, str, str]:
        """(head, row tail, pointer tail): the row key of (key, id) is head + key + row tail +
        id and the pointer key of key is head + key + pointer tail (for the server-side
        scans)."""
        if self.buckets:
            return f"{self.prefix}:{{b{bucket}}}:", ":s:", ":r"
        return f"{self.prefix}:{{", "}:s:", "}:r"

    def index(self, bucket: int, name: str) -> str:
        if self.buckets:
            return f"{self.prefix}:{{b{bucket}}}:{name}"
        return f"{self.prefix}:{name}"

    def counters(self) -> str:
        return f"{self.prefix}:{{counters}}"


class _Contribution:
    """What one stored row adds to the aggregates, and its filter fields."""

    @staticmethod
    def meta(record: SessionRecord, purge: str, backstop: bool) -> bytes:
        """The commit script's `meta` argument: what rarely changes, packed so that the script
        compares one string (see redis_scripts.COMMIT): status, flow, step, whether a GC
        backstop is set, purge due time, tokens used, and the categorical contribution (counts
        by status, platform, close reason, flow step, label)."""
        status = record.status.value
        contribution: list[Any] = ["t", 1, "s:" + status, 1, "p:" + record.platform, 1]
        if record.close_reason:
            contribution += ["c:" + record.close_reason, 1]
        flow = record.flow
        if flow is not None and record.status is Status.ACTIVE:
            contribution.append(f"f:{flow.name}:{flow.step or ''}")
            contribution.append(1)
        if record.labels:
            for name, value in sorted(record.labels.items()):
                contribution += [f"l:{name}{_LABEL_SEP}{value}", 1]
        usage = record.usage
        return _json_encode([
            status, flow.name if flow else "", (flow.step or "") if flow else "",
            "1" if backstop else "0", purge, usage.input_tokens + usage.output_tokens,
            contribution,
        ])


def _stats_from(fields: dict[str, int], labels: Sequence[str]) -> SessionStats:
    stats = SessionStats()
    stats.by_status, stats.by_platform, stats.by_close_reason = {}, {}, {}
    stats.by_flow_step, stats.by_label = {}, {name: {} for name in labels}
    for field, amount in fields.items():
        if amount == 0:
            continue
        if field == "t":
            stats.total = amount
        elif field == "m":
            stats.messages = amount
        elif field == "k":
            stats.tokens = amount
        elif field.startswith("s:"):
            stats.by_status[field[2:]] = amount
        elif field.startswith("p:"):
            stats.by_platform[field[2:]] = amount
        elif field.startswith("c:"):
            stats.by_close_reason[field[2:]] = amount
        elif field.startswith("f:"):
            stats.by_flow_step[field[2:]] = amount
        elif field.startswith("l:"):
            name, _, value = field[2:].partition(_LABEL_SEP)
            if name in stats.by_label:
                stats.by_label[name][value] = amount
    if stats.total:
        stats.avg_duration_seconds = fields.get("d", 0) / 1000.0 / stats.total
    return stats


def _encode_cursor(score: str, member: str) -> str:
    raw = msgspec.json.encode([score, member])
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        score, member = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()))
        float(score)
        return str(score), str(member)
    except (ValueError, TypeError, binascii.Error, msgspec.DecodeError):
        raise ConfigurationError(
            f"listing cursor {cursor!r} is not one this store returned; pass back next_cursor "
            "exactly or start again without a cursor"
        ) from None


class RedisStore(Store):
    """Sessions in Redis (standalone or Cluster). Safe for many processes (`shared`)."""

    shared = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        max_connections: int = 50,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retries: int = 2,
        buckets: int | None = None,
        gc_margin: float = 86_400.0,
        codec: Codec | None = None,
        codec_format: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if codec is None and codec_format is not None:
            if codec_format not in ("json", "msgpack"):
                raise ConfigurationError(
                    f"format={codec_format!r} is not valid; use 'json' or 'msgpack'"
                )
            codec = Codec(format=codec_format)  # type: ignore[arg-type]
        super().__init__(codec=codec)
        if not prefix or any(c in prefix for c in "{} \n"):
            raise ConfigurationError(
                f"Redis key prefix {prefix!r} is not valid: use a non-empty name without "
                "braces or whitespace, e.g. prefix=mybot"
            )
        self.url = url
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("redis", "rediss", "redis+cluster"):
            raise ConfigurationError(
                f"RedisStore takes redis://, rediss:// or redis+cluster:// URLs, not {url!r}"
            )
        self.cluster = scheme == "redis+cluster"
        if buckets is not None and not self.cluster:
            raise ConfigurationError("buckets= applies to redis+cluster:// URLs only")
        if self.cluster:
            buckets = DEFAULT_CLUSTER_BUCKETS if buckets is None else buckets
            if not 1 <= buckets <= 16384:
                raise ConfigurationError(f"buckets={buckets} is not valid; use 1..16384")
        for name, value in (
            ("max_connections", max_connections), ("socket_timeout", socket_timeout),
            ("connect_timeout", connect_timeout),
        ):
            if not value > 0:
                raise ConfigurationError(f"{name}={value!r} must be positive")
        if retries < 0:
            raise ConfigurationError(f"retries={retries!r} must be 0 or more")
        self.layout = _Layout(prefix, buckets)
        self.prefix = prefix
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.gc_margin = gc_margin
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._client: Any = None
        # redis-py's pools fail a request (MaxConnectionsError) instead of waiting when they
        # are full, so requests beyond the pool size queue here (a semaphore costs far less per
        # request than redis-py's BlockingConnectionPool, with its condition and timer).
        self._slots = asyncio.Semaphore(max_connections)
        self._scripts: dict[str, Any] = {}
        self._commit_index_keys: dict[int, str] = {}

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """Build a store from a URL; query options (see the module docstring) and keyword
        options are merged, keywords winning."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        aliases = {
            "namespace": "prefix", "pool_size": "max_connections", "timeout": "socket_timeout",
            "format": "codec_format",
        }
        converters: dict[str, Callable[[str], Any]] = {
            "prefix": str, "max_connections": int, "socket_timeout": float,
            "connect_timeout": float, "retries": int, "buckets": int, "gc_margin": float,
            "codec_format": str,
        }
        kwargs: dict[str, Any] = {}
        for name, value in query.items():
            target = aliases.get(name, name)
            if target not in converters:
                known = ", ".join(sorted(set(converters) | set(aliases)))
                raise ConfigurationError(
                    f"unknown Redis store option {name!r}; use one of: {known}"
                )
            try:
                kwargs[target] = converters[target](value)
            except ValueError:
                raise ConfigurationError(
                    f"Redis store option {name}={value!r} is not valid"
                ) from None
        kwargs.update({aliases.get(k, k): v for k, v in options.items()})
        bare = parts._replace(query="").geturl()
        return cls(bare, **kwargs)

    def _make_client(self) -> Any:
        parts = urlsplit(self.url)
        common: dict[str, Any] = {
            # No socket timeout inside redis-py: with one, every write runs under
            # asyncio.wait_for (a task per request) and every read under a timer; `_run`
            # bounds each attempt as a whole instead.
            "socket_timeout": None,
            "socket_connect_timeout": self.connect_timeout,
            "socket_keepalive": True,
            "health_check_interval": 30,
            # Our own loop retries what is safe to retry; redis-py must not retry writes.
            "retry": Retry(NoBackoff(), 0),
        }
        if parts.username:
            common["username"] = unquote(parts.username)
        if parts.password:
            common["password"] = unquote(parts.password)
        if self.cluster:
            nodes = []
            for item in parts.netloc.rpartition("@")[2].split(","):
                host, _, port = item.strip().rpartition(":")
                if not host or not port.isdigit():
                    raise ConfigurationError(
                        f"redis+cluster URL {self.url!r} must list host:port,host:port"
                    )
                nodes.append(ClusterNode(host.strip("[]"), int(port)))
            return RedisCluster(
                startup_nodes=nodes, max_connections=self.max_connections,
                require_full_coverage=True, **common,
            )
        tls = urlsplit(self.url).scheme.lower() == "rediss"
        pool = _LeanPool.from_url(
            self.url, max_connections=self.max_connections,
            connection_class=_TLSConnection if tls else _PlainConnection, **common,
        )
        return aioredis.Redis(connection_pool=pool)

    # -- lifetime ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        client = self._make_client()
        scripts = {
            name: client.register_script(getattr(lua, name))
            for name in ("LEASE_AND_LOAD", "RENEW", "RELEASE", "COMMIT", "REMOVE", "HISTORY_TAIL",
                         "HISTORY_RANGE", "CLAIM_DUE", "SCAN", "FETCH", "PUT_RAW", "LAYOUT", "FOLD")
        }
        self._client, self._scripts = client, scripts
        try:
            # Load every script up front so the first update already runs in one round trip.
            await self._run(lambda: self._load_scripts(client), retry=True)
            await self._check_layout()
        except (StoreUnavailable, ConfigurationError):
            self._client, self._scripts = None, {}
            await self._dispose(client)
            raise

    async def _check_layout(self) -> None:
        """Refuse data written in another layout instead of misreading it."""
        layout = self.layout
        for bucket in layout.all_buckets:
            keys = [layout.index(bucket, name) for name in ("layout", "agg", "recent")]
            found = _text(await self._script(
                "LAYOUT", keys, [lua.LAYOUT_VERSION, *lua.LAYOUT_UPGRADED_IN_PLACE], retry=True,
            ))
            if found != lua.LAYOUT_VERSION:
                raise ConfigurationError(
                    f"Redis prefix {self.prefix!r} holds data in store layout {found}; this "
                    f"version of chatstate reads layout {lua.LAYOUT_VERSION} only. Use a new "
                    "prefix (?prefix=...) or delete the keys under this one"
                )

    async def _load_scripts(self, client: Any) -> None:
        # (On Cluster, redis-py sends SCRIPT LOAD to every primary.)
        for script in self._scripts.values():
            await client.script_load(script.script)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._dispose(client)

    @staticmethod
    async def _dispose(client: Any) -> None:
        try:
            await client.aclose()
        except Exception:  # closing a dead connection must not fail close()
            log.debug("error while closing the Redis client", exc_info=True)

    async def ping(self) -> None:
        await self._run(lambda: self._c.ping(), retry=True)

    @property
    def _c(self) -> Any:
        if self._client is None:
            raise StoreUnavailable("RedisStore is not open; call `await store.open()` first")
        return self._client

    async def _ensure(self) -> None:
        if self._client is None:
            await self.open()

    # -- fault handling ---------------------------------------------------------------------

    async def _run(self, call: Callable[[], Awaitable[T]], *, retry: bool) -> T:
        """Run one request; connection faults and refusals become StoreUnavailable within a
        bounded time.

        `retry` is true only for requests whose repetition is harmless (reads, lease scripts,
        the commit script, which recognises its own earlier success). Each attempt (waiting for
        a connection slot, connecting if need be, writing, reading) is bounded by
        2 * socket_timeout + connect_timeout; attempts are separated by a short jittered
        backoff. (redis-py itself runs without a socket timeout, see `_make_client`: a
        cancelled read or write disconnects its connection, so nothing half-read is reused.)"""
        attempts = 1 + (self.retries if retry else 0)
        deadline = 2 * self.socket_timeout + self.connect_timeout
        for attempt in range(attempts):
            try:
                async with asyncio.timeout(deadline):
                    async with self._slots:
                        return await call()
            except _UNAVAILABLE as exc:
                if attempt + 1 >= attempts:
                    raise StoreUnavailable(
                        f"Redis at {self._where()} did not answer ({type(exc).__name__}: {exc}); "
                        "check that the server is running and reachable"
                    ) from exc
                log.debug("Redis request failed (%s); retrying", exc)
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt) * (0.5 + random.random()))
            except rexc.ResponseError as exc:
                refused = _refusal(exc)
                if refused is None:
                    raise
                raise StoreUnavailable(
                    f"Redis at {self._where()} refused the request ({refused}); nothing was "
                    "written"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _where(self) -> str:
        return urlsplit(self.url).netloc.rpartition("@")[2] or "?"

    async def _script(self, name: str, keys: list[str], args: list[Any], *, retry: bool) -> Any:
        await self._ensure()
        script = self._scripts[name]
        if self.cluster:
            return await self._run(lambda: script(keys=keys, args=args), retry=retry)
        return await self._run(lambda: self._evalsha(script, keys, args), retry=retry)

    async def _script_then(
        self, name: str, keys: list[str], args: list[Any], command: tuple[Any, ...]
    ) -> tuple[Any, Any]:
        """Run script `name` and a plain `command` right behind it, in one round trip; return
        both answers. Retried like a script call, so `command` must be a read."""
        await self._ensure()
        script = self._scripts[name]
        if self.cluster:  # both name keys of one slot: one node, one round trip
            async def on_cluster() -> tuple[Any, Any]:
                pipe = self._client.pipeline(transaction=False)
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                pipe.execute_command(*command)
                try:
                    first, second = await pipe.execute()
                except rexc.NoScriptError:
                    return await self._script_once_loaded(script, keys, args, command)
                return first, second
            return await self._run(on_cluster, retry=True)
        return await self._run(lambda: self._evalsha_then(script, keys, args, command),
                               retry=True)

    async def _evalsha_then(
        self, script: Any, keys: list[str], args: list[Any], command: tuple[Any, ...]
    ) -> tuple[Any, Any]:
        """`_evalsha` followed by `command` in the same write; both replies are read."""
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        lost = False
        try:
            await conn.send_packed_command(conn.pack_commands(
                [("EVALSHA", script.sha, len(keys), *keys, *args), command]
            ))
            try:
                first = await conn.read_response()
            except rexc.NoScriptError:
                lost = True
            second = await conn.read_response()
        except BaseException:
            await conn.disconnect()  # a reply may be left unread
            raise
        finally:
            await pool.release(conn)
        if lost:
            return await self._script_once_loaded(script, keys, args, command)
        return first, second

    async def _script_once_loaded(
        self, script: Any, keys: list[str], args: list[Any], command: tuple[Any, ...]
    ) -> tuple[Any, Any]:
        """The server lost the script (SCRIPT FLUSH, a restart): redis-py's Script loads it
        again; then `command` (two round trips, once)."""
        first = await script(keys=keys, args=args)
        return first, await self._client.execute_command(*command)

    async def _evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on a pooled connection directly: redis-py's client layer (command dispatch,
        events, metrics, its own retry wrapper) cost more client time per update than the
        request itself. A script the server lost (SCRIPT FLUSH, a restart) falls back to
        redis-py's Script, which loads it again."""
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return await conn.read_response()
        except rexc.NoScriptError:
            pass
        except BaseException:
            # Anything else may leave a reply unread on the connection: drop it.
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        return await script(keys=keys, args=args)

    # -- records ----------------------------------------------------------------------------

    def _decode(self, blob: bytes | None, key: str) -> SessionRecord | None:
        if blob is None:
            return None
        try:
            return self.codec.decode(blob, key)
        except CorruptRecordError as exc:
            exc.raw = blob  # the stored bytes, so quarantine() can tell they are still there
            raise

    async def load(self, key: str) -> SessionRecord | None:
        await self._ensure()
        pointer = f"{self.layout.base(key)}:r"
        blob = await self._run(partial(self._c.hget, pointer, "b"), retry=True)
        return self._decode(blob, key)

    async def load_by_id(self, session_id: str) -> SessionRecord | None:
        await self._ensure()
        for bucket in self.layout.all_buckets:
            ids = self.layout.index(bucket, "ids")
            found = await self._run(partial(self._c.hget, ids, session_id), retry=True)
            if found is None:
                continue
            key = _text(found)
            base = self.layout.base(key)
            # The current session's row is in the pointer; a replaced one has its own. (A
            # session moves from the pointer to its row atomically, so reading the pointer
            # first never misses it.)
            current, blob = await self._run(
                partial(self._c.hmget, f"{base}:r", "id", "b"), retry=True
            )
            if current is None or _text(current) != session_id:
                blob = await self._run(partial(self._c.hget, f"{base}:s:{session_id}", "b"),
                                       retry=True)
            return self._decode(blob, key)
        return None

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
            raise ConfigurationError(f"lease for {lease.key!r} used to commit {key!r}")
        blob = self.codec.encode(record)
        base = self.layout.base(key)
        sid = record.id
        now = self.clock.now()
        gc_ms = 0
        purge = ""
        if record.purge_at is not None:
            purge = _float(record.purge_at)
            # A backstop, never sooner than gc_margin from now: a purge_at in the past (a
            # retention of zero, an import of old sessions, a clock far behind the server's)
            # must not make the key vanish before the lifecycle purges it.
            gc_ms = math.ceil(max(self.gc_margin, record.purge_at - now + self.gc_margin) * 1000)
        warn, expires = record.due_at("warn"), record.due_at("expire")
        last_activity, created_at = record.last_activity, record.created_at
        extras = ""
        if history or gc_ms:
            spec = ""
            if history:
                drop = history.drop_messages_through
                spec = (f"{len(history.append)} {len(history.summaries)} "
                        f"{'-' if drop is None else int(drop)} {int(history.drop_summaries)}")
            extras = f"{gc_ms};{spec}"
        mark = os.urandom(12).hex()
        now_us = _us(now)
        held = released = ""
        if lease is not None:
            # The lease field as this lease wrote it, compared whole by the script (see
            # redis_scripts.COMMIT); once run out by our clock, its expiry can never match.
            holder = f"{lease.token}:{lease.owner}"
            expiry = _us(lease.expires_at)
            held = (expiry if expiry > now_us else _EXPIRED) + holder
            if release:
                released = lua.RELEASED + holder
        keys = [f"{base}:r", self._index_prefix(key)]
        args: list[Any] = [
            expected, sid, blob, mark, held, now_us,
            _float(-last_activity), f"{_listing_group(last_activity)}*",
            "" if warn is None else _float(warn), "" if expires is None else _float(expires),
            record.counters.messages, round(max(0.0, last_activity - created_at) * 1000),
            _Contribution.meta(record, purge, gc_ms > 0), released,
        ]
        if extras:
            args.append(extras)
        if history:
            pack = self.codec.pack_message
            for message in history.append:
                args.append(_history_entry(message.seq, pack(message)))
            for summary in history.summaries:
                args += [summary.end_seq, self.codec.encode_summary(summary)]
        # Retrying is safe: every attempt carries the same random mark, stored with the row,
        # so an attempt that finds its own mark knows that an earlier one whose answer was lost
        # was applied. Content is never compared: another writer may commit identical bytes.
        answer = await self._script("COMMIT", keys, args, retry=True)
        if answer == 1:
            return
        answer = _text(answer)
        if answer[0] == "l":
            assert lease is not None
            raise LeaseLost(key, lease.token)
        raise ConflictError(key, expected, int(answer[1:]) or None)

    def _index_prefix(self, key: str) -> str:
        """The index prefix of the key's bucket, built once per bucket: the commit script names
        the index keys from it when it needs them."""
        bucket = self.layout.bucket(key)
        name = self._commit_index_keys.get(bucket)
        if name is None:
            name = self._commit_index_keys[bucket] = self.layout.index(bucket, "")
        return name

    def _remove_keys(self, key: str) -> list[str]:
        layout = self.layout
        bucket = layout.bucket(key)
        base = layout.base(key)
        return [
            f"{base}:r", f"{base}:s:", f"{base}:h:", f"{base}:m:",
            *(layout.index(bucket, f"due:{kind}") for kind in DUE_KINDS),
            layout.index(bucket, "recent"), layout.index(bucket, "agg"),
            layout.index(bucket, "ids"), layout.index(bucket, "quarantine"),
        ]

    async def delete(self, key: str, session_id: str | None = None) -> bool:
        args = [key, session_id or "", "delete", "", 0, QUARANTINE_CAP, "", _POINTER_BACKSTOP_MS]
        removed = await self._script("REMOVE", self._remove_keys(key), args, retry=True)
        return bool(removed)

    async def _put_raw(self, key: str, raw: bytes) -> None:
        """Test/maintenance hook (see `Store`): store `raw` as the current record's bytes
        unchecked. Indexes keep what the last commit wrote."""
        base = self.layout.base(key)
        done = await self._script("PUT_RAW", [f"{base}:r"], [bytes(raw)], retry=True)
        if not done:
            raise LookupError(f"no current record at {key!r} to overwrite")

    async def quarantine(self, key: str, raw: bytes, reason: str) -> None:
        entry = msgspec.msgpack.encode(
            {"key": key, "reason": reason, "at": self.clock.now(), "raw": raw}
        )
        args = [
            key, "", "quarantine", entry, int(QUARANTINE_KEEP * 1000), QUARANTINE_CAP, raw,
            _POINTER_BACKSTOP_MS,
        ]
        # Not retried: a repeat would file the record twice.
        await self._script("REMOVE", self._remove_keys(key), args, retry=False)

    async def list_quarantined(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        await self._ensure()
        found: list[dict[str, Any]] = []
        for bucket in self.layout.all_buckets:
            name = self.layout.index(bucket, "quarantine")
            raw = await self._run(partial(self._c.lrange, name, 0, limit - 1), retry=True)
            for item in raw:
                entry = msgspec.msgpack.decode(item)
                entry["raw"] = bytes(entry.get("raw", b""))
                found.append(entry)
        found.sort(key=lambda e: e.get("at", 0.0), reverse=True)
        return found[:limit]

    # -- listing and counting (server side, never loading every record) ----------------------

    async def _scan(
        self, bucket: int, filter: SessionFilter, mode: str, want: int,
        position: tuple[str, str] | None, cursor: tuple[str, str] | None = None,
    ) -> tuple[str, tuple[str, str], list[Any]]:
        """One SCAN call (see redis_scripts.SCAN): (state, position to continue from, rows)."""
        head, tail, pointer_tail = self.layout.row_head_tail(bucket)
        # Index scores are listing groups, -floor(last_activity / G): updated_before and a
        # cursor bound them from below, updated_since from above (the exact bounds on 'la'
        # are checked by the script).
        before, since = filter.updated_before, filter.updated_since
        if position is not None:
            min_score, after = position
        else:
            lows = []
            if before is not None:
                lows.append(_listing_group(before))
            if cursor is not None:
                lows.append(_listing_group(-float(cursor[0])))
            min_score, after = (str(max(lows)) if lows else "-inf"), ""
        max_score = "+inf" if since is None else str(_listing_group(since))
        args = [
            min_score, after, max_score, SCAN_BUDGET, want, mode, head, tail,
            *(getattr(filter, name) or "" for name in _FILTER_FIELDS), pointer_tail,
            "" if before is None else _float(-before), "" if since is None else _float(-since),
            *(cursor if cursor is not None else ("", "")),
        ]
        result = await self._script(
            "SCAN", [self.layout.index(bucket, "recent")], args, retry=True
        )
        return _text(result[0]), (_text(result[1]), _text(result[2])), result[3:]

    async def list(
        self, filter: SessionFilter | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        if limit <= 0:
            return Page(items=[], next_cursor=cursor)
        flt = filter or SessionFilter()
        start = _decode_cursor(cursor) if cursor else None
        # Each bucket yields whole listing groups (minutes) until it has limit + 1 matches;
        # every match of a bucket that was not returned sorts after those returned, so the
        # first `limit` of the merged, exactly sorted matches are the page.
        matches: list[tuple[float, str, int]] = []
        for bucket in self.layout.all_buckets:
            position: tuple[str, str] | None = None
            got = 0
            while True:
                state, last, rows = await self._scan(
                    bucket, flt, "list", max(0, limit + 1 - got), position, start
                )
                for i in range(0, len(rows), 2):
                    matches.append((float(rows[i + 1]), _text(rows[i]), bucket))
                    got += 1
                if state != "2":
                    break
                position = last
        matches.sort(key=lambda m: (m[0], m[1]))
        more = len(matches) > limit
        matches = matches[:limit]
        blobs: builtins.list[bytes | None] = await self._fetch(matches)
        items: list[SessionRecord] = []
        for (_score, member, _bucket), blob in zip(matches, blobs, strict=True):
            if blob is None:
                continue  # deleted since it was listed
            try:
                items.append(self.codec.decode(blob, member.partition(" ")[2]))
            except CorruptRecordError:
                log.warning("listing skipped unreadable session %s", member)
        next_cursor = None
        if more and matches:
            score, member, _ = matches[-1]
            next_cursor = _encode_cursor(_float(score), member)
        return Page(items=items, next_cursor=next_cursor)

    async def _fetch(
        self, matches: builtins.list[tuple[float, str, int]]
    ) -> builtins.list[bytes | None]:
        """The records of listed sessions, one FETCH call per bucket."""
        found: dict[str, bytes | None] = {}
        for bucket in sorted({m[2] for m in matches}):
            members = [m[1] for m in matches if m[2] == bucket]
            head, tail, pointer_tail = self.layout.row_head_tail(bucket)
            blobs = await self._script(
                "FETCH", [self.layout.index(bucket, "recent")],
                [head, tail, pointer_tail, *members], retry=True,
            )
            found.update(zip(members, blobs, strict=True))
        return [found[m[1]] for m in matches]

    async def _fold(self, bucket: int) -> None:
        """Fold the message and duration sums of the rows changed since the last fold into the
        bucket's aggregates (see redis_scripts.COMMIT), in calls of at most SCAN_BUDGET rows.
        Retrying is safe: each call is atomic and complete in itself. The calls are bounded by
        what was waiting at the first one, so commits that keep coming cannot hold it up."""
        head, tail, pointer_tail = self.layout.row_head_tail(bucket)
        keys = [self.layout.index(bucket, "dirty"), self.layout.index(bucket, "agg")]
        args = [head, tail, pointer_tail, SCAN_BUDGET]
        left = int(await self._script("FOLD", keys, args, retry=True))
        for _ in range(-(-left // SCAN_BUDGET)):
            if not int(await self._script("FOLD", keys, args, retry=True)):
                break

    async def _aggregate(self, filter: SessionFilter | None, *, sums: bool = True
                         ) -> dict[str, int]:
        await self._ensure()
        totals: dict[str, int] = {}
        if filter is None or not any(getattr(filter, f) is not None for f in _ALL_FILTERS):
            for bucket in self.layout.all_buckets:
                if sums:
                    await self._fold(bucket)
                name = self.layout.index(bucket, "agg")
                fields = await self._run(partial(self._c.hgetall, name), retry=True)
                for field, amount in fields.items():
                    totals[_text(field)] = totals.get(_text(field), 0) + int(amount)
            return totals
        for bucket in self.layout.all_buckets:
            position = None
            while True:
                state, last, flat = await self._scan(bucket, filter, "agg", 1 << 30, position)
                for i in range(0, len(flat), 2):
                    field = _text(flat[i])
                    totals[field] = totals.get(field, 0) + int(flat[i + 1])
                if state != "2":
                    break
                position = last
        return totals

    async def count(self, filter: SessionFilter | None = None) -> SessionStats:
        # Counts need no fold: the message and duration sums are not part of them.
        full = _stats_from(await self._aggregate(filter, sums=False), ())
        return SessionStats(
            total=full.total, by_status=full.by_status, by_platform=full.by_platform
        )

    async def stats(
        self, filter: SessionFilter | None = None, *, labels: Sequence[str] = ()
    ) -> SessionStats:
        return _stats_from(await self._aggregate(filter), labels)

    # -- history ----------------------------------------------------------------------------

    def _history_key(self, ref: SessionRef, kind: str) -> str:
        return f"{self.layout.base(ref.key)}:{kind}:{ref.id}"

    async def read_tail(
        self, ref: SessionRef, limit: int, *, before_seq: int | None = None
    ) -> builtins.list[Message]:
        if limit <= 0:
            return []
        name = self._history_key(ref, "h")
        before = "" if before_seq is None else int(before_seq)
        raw = await self._script("HISTORY_TAIL", [name], [limit, before], retry=True)
        decode = self.codec.decode_message
        return [decode(item[4:]) for item in raw]

    async def read_range(
        self, ref: SessionRef, start_seq: int, end_seq: int
    ) -> builtins.list[Message]:
        name = self._history_key(ref, "h")
        raw = await self._script(
            "HISTORY_RANGE", [name], [max(0, int(start_seq)), int(end_seq)], retry=True
        )
        decode = self.codec.decode_message
        return [decode(item[4:]) for item in raw]

    async def count_messages(self, ref: SessionRef) -> int:
        await self._ensure()
        name = self._history_key(ref, "h")
        count: int = await self._run(lambda: self._c.llen(name), retry=True)
        return count

    async def list_summaries(self, ref: SessionRef) -> builtins.list[Summary]:
        await self._ensure()
        name = self._history_key(ref, "m")
        raw = await self._run(lambda: self._c.zrange(name, 0, -1), retry=True)
        return [self.codec.decode_summary(item) for item in raw]

    # -- due index --------------------------------------------------------------------------

    async def claim_due(
        self, kind: str, now: float, limit: int, *, claim_seconds: float = 30.0
    ) -> builtins.list[DueItem]:
        if kind not in DUE_KINDS:
            raise ConfigurationError(f"unknown due kind {kind!r}; use one of {DUE_KINDS}")
        items: list[DueItem] = []
        field = _DUE_FIELDS[kind]
        buckets = self.layout.all_buckets
        first = random.randrange(len(buckets))  # no bucket starves the others
        for bucket in buckets[first:] + buckets[:first]:
            if len(items) >= limit:
                break
            name = self.layout.index(bucket, f"due:{kind}")
            head, tail, pointer_tail = self.layout.row_head_tail(bucket)
            # Retrying is safe: at worst an answer lost in transit hides its items until
            # `claim_seconds` have passed, as for a crashed claimer.
            flat = await self._script(
                "CLAIM_DUE", [name],
                [_float(now), limit - len(items), _float(now + claim_seconds), head, tail,
                 pointer_tail, field, field + "i"], retry=True,
            )
            for i in range(0, len(flat), 2):
                key, _, sid = _text(flat[i]).rpartition(" ")
                items.append(DueItem(key=key, session_id=sid, kind=kind, due_at=float(flat[i + 1])))
        return items

    # -- leases -----------------------------------------------------------------------------

    async def lease_and_load(
        self, key: str, owner: str, ttl: float
    ) -> tuple[Lease | None, SessionRecord | None]:
        base = self.layout.base(key)
        now = self.clock.now()
        expires = now + ttl
        pointer = f"{base}:r"
        # One round trip: the script takes the lease and a plain HGET right behind it reads
        # the record (see redis_scripts.LEASE_AND_LOAD). Retrying is safe: a second try by the
        # same owner takes the lease again (new token).
        answer, blob = await self._script_then(
            "LEASE_AND_LOAD", [pointer], [owner, _us(now), _us(expires)], ("HGET", pointer, "b")
        )
        if isinstance(answer, list):
            return None, None  # busy: [0, the holder's expiry]
        lease = Lease(key=key, owner=owner, token=int(answer), expires_at=expires)
        try:
            return lease, self._decode(blob, key)
        except CorruptRecordError as exc:
            raise corrupt_with_lease(exc, lease) from None

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        now = self.clock.now()
        expires = now + ttl
        ok = await self._script(
            "RENEW", [f"{self.layout.base(lease.key)}:r"],
            [f"{lease.token}:{lease.owner}", _us(now), _us(expires)],
            retry=True,
        )
        if not ok:
            return None
        return Lease(key=lease.key, owner=lease.owner, token=lease.token, expires_at=expires)

    async def release(self, lease: Lease) -> None:
        await self._script(
            "RELEASE", [f"{self.layout.base(lease.key)}:r"], [f"{lease.token}:{lease.owner}"],
            retry=True,
        )

    # -- counters ---------------------------------------------------------------------------

    async def incr(self, counters: dict[str, int]) -> None:
        if not counters:
            return
        await self._ensure()
        name = self.layout.counters()

        async def apply() -> None:
            async with self._c.pipeline(transaction=True) as pipe:
                for field, amount in counters.items():
                    pipe.hincrby(name, field, int(amount))
                await pipe.execute()

        # Not retried: a lost answer could hide an applied increment.
        await self._run(apply, retry=False)

    async def read_counters(self, prefix: str = "") -> dict[str, int]:
        await self._ensure()
        name = self.layout.counters()
        raw = await self._run(lambda: self._c.hgetall(name), retry=True)
        out = {_text(k): int(v) for k, v in raw.items()}
        return {k: v for k, v in out.items() if k.startswith(prefix)}


def default_owner() -> str:
    """An owner name unique to this process (host, pid and a random part)."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
