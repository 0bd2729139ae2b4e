"""MemoryStore: sessions in this process's memory (`memory://`).

The default for tests and single-process bots. Nothing survives a restart.

* Records are held as encoded bytes (msgpack), never as live objects: `load` hands out a fresh
  decoded copy and `commit` swaps whole byte strings, so a handler that crashes half-way
  through changing its record can never leave a half-changed record behind.
* Bounded: at most `max_sessions` records. When full, the least recently used (loaded or
  committed) are evicted, finished (replaced) sessions first, in batches of ~1% so eviction stays
  O(1) amortised; every eviction emits `session.evicted` to `events` and calls `on_evict`.
* No timers: due sessions are found by `claim_due`, whose cost grows with the number due.

Memory layout (an idle session costs well under 450 bytes, see benchmarks/): one dict from key
to record bytes and, per due kind, one-second buckets of references to keys (8 bytes an entry).
Index entries are lazy: a commit that moves a deadline later leaves the old (earlier) entry, which
moves itself to the true time when it comes due, so a chatty session does not pile up entries.
Only closed and replaced sessions are indexed by id (for purging); `load_by_id` of an active
session scans (an operator's lookup).
"""

from __future__ import annotations

import builtins
import heapq
import itertools
import logging
import math
from array import array
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ..clock import SYSTEM_CLOCK, Clock
from ..codec import Codec
from ..errors import ConfigurationError, ConflictError, CorruptRecordError, LeaseLost
from ..events import SESSION_EVICTED, Event, EventBus
from ..model import HistoryChanges, Message, SessionRecord, SessionRef, Status, Summary
from ._common import (
    RecordHead,
    after_cursor,
    check_kind,
    decode_cursor,
    encode_cursor,
    flow_step_name,
    head_decoder,
    matches,
    record_tokens,
)
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
from .url import query_options

log = logging.getLogger("chatstate.stores.memory")

DEFAULT_MAX_SESSIONS = 100_000
QUARANTINE_KEPT = 1000
LOADED_KEPT = 256  # heads of records handed out by load() and not committed yet (see _loaded)

_ACTIVE = Status.ACTIVE
# What commit needs to know of the record it replaces: (its bytes, version, id, and its due
# times per kind: warn, expire, purge).
_Head = tuple[bytes, int, str, float | None, float | None, float | None]


class _History:
    """Messages of one session: parallel arrays of sequence numbers and encoded messages."""

    __slots__ = ("raws", "seqs")

    def __init__(self) -> None:
        self.seqs = array("q")
        self.raws: list[bytes] = []

    def add(self, seq: int, raw: bytes) -> None:
        seqs = self.seqs
        if not seqs or seq > seqs[-1]:  # the normal case: O(1) append
            seqs.append(seq)
            self.raws.append(raw)
            return
        i = bisect_left(seqs, seq)
        if i < len(seqs) and seqs[i] == seq:
            self.raws[i] = raw
        else:
            seqs.insert(i, seq)
            self.raws.insert(i, raw)

    def tail(self, limit: int, before_seq: int | None) -> list[bytes]:
        end = len(self.seqs) if before_seq is None else bisect_left(self.seqs, before_seq)
        return self.raws[max(0, end - limit) : end] if limit > 0 else []

    def range(self, start: int, end: int) -> list[bytes]:
        return self.raws[bisect_left(self.seqs, start) : bisect_right(self.seqs, end)]

    def drop_through(self, seq: int) -> None:
        cut = bisect_right(self.seqs, seq)
        del self.seqs[:cut]
        del self.raws[:cut]


class _DueIndex:
    """Entries in one-second buckets, with a heap of bucket times. An entry is a location:
    the key of a current record, or OLD + id of a replaced one (a shared string reference,
    so an entry costs one pointer)."""

    __slots__ = ("buckets", "size", "times")

    def __init__(self) -> None:
        self.buckets: dict[int, list[str]] = {}
        self.times: list[int] = []
        self.size = 0

    def add(self, at: float, loc: str) -> None:
        second = math.floor(at)
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = []
            heapq.heappush(self.times, second)
        bucket.append(loc)
        self.size += 1

    def clear(self) -> None:
        self.buckets.clear()
        self.times.clear()
        self.size = 0


OLD = "\x00"  # prefix of due-index locations naming a replaced record by id (keys never hold NUL)


class MemoryStore(Store):
    """Sessions in process memory. See the module docstring."""

    shared = False
    codec_format = "msgpack"

    def __init__(
        self,
        *,
        codec: Codec | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        events: EventBus | None = None,
        on_evict: Callable[[Event], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(codec=codec)
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ConfigurationError(
                f"max_sessions must be a positive integer, got {max_sessions!r}"
            )
        self.max_sessions = max_sessions
        self.events = events if events is not None else EventBus()
        self.on_evict = on_evict
        self.clock = clock or SYSTEM_CLOCK
        self._head = head_decoder(self.codec.format)
        # key -> encoded current record; insertion order is the LRU order (oldest first).
        self._records: dict[str, bytes] = {}
        # key -> head of the bytes `load` last decoded there. The usual commit replaces exactly
        # those bytes (load, handler, commit), so its compare-and-set reads this instead of
        # decoding them again. Trusted only while the stored bytes are that very object;
        # bounded (cleared when full: it is only a shortcut).
        self._loaded: dict[str, _Head] = {}
        # session id -> encoded record that a newer session of its key replaced (oldest first).
        self._old: dict[str, bytes] = {}
        # session id -> key, for current records that are closed (what the purge timer and
        # load_by_id look up); active sessions carry no id index, which keeps them small.
        self._closed_ids: dict[str, str] = {}
        self._history: dict[str, _History] = {}
        self._summaries: dict[str, list[tuple[int, int, bytes]]] = {}
        self._due = {kind: _DueIndex() for kind in DUE_KINDS}
        self._claims: dict[tuple[str, str], float] = {}  # (kind, location) -> claimed until
        self._leases: dict[str, tuple[str, int, float]] = {}  # key -> (owner, token, expires)
        self._lease_tokens = itertools.count(1)
        self._counters: dict[str, int] = {}
        self._quarantine: deque[dict[str, Any]] = deque(maxlen=QUARANTINE_KEPT)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryStore:
        """`memory://` or `memory://?max_sessions=1000`."""
        if urlsplit(url).scheme.lower() != "memory":
            raise ConfigurationError(f"{url!r} is not a memory:// URL")
        merged: dict[str, Any] = {**query_options(url), **options}
        if "max_sessions" in merged:
            try:
                merged["max_sessions"] = int(merged["max_sessions"])
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"max_sessions in {url!r} must be an integer, got {merged['max_sessions']!r}"
                ) from None
        unknown = set(merged) - {"max_sessions", "events", "on_evict", "clock", "codec"}
        if unknown:
            raise ConfigurationError(
                f"unknown memory:// option(s) {sorted(unknown)}; known: max_sessions"
            )
        return cls(**merged)

    def __len__(self) -> int:
        """Records held (current and replaced)."""
        return len(self._records) + len(self._old)

    def _try_head(self, raw: bytes) -> RecordHead | None:
        try:
            head: RecordHead = self._head.decode(raw)
            return head
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    def _locate(self, loc: str) -> tuple[bytes, RecordHead] | None:
        """The record a due-index location names, if it still exists and is readable."""
        raw = self._old.get(loc[1:]) if loc.startswith(OLD) else self._records.get(loc)
        if raw is None:
            return None
        head = self._try_head(raw)
        return None if head is None else (raw, head)

    def _decode(self, raw: bytes, key: str) -> SessionRecord:
        try:
            return self.codec.decode(raw, key)
        except CorruptRecordError as exc:
            exc.raw = raw  # always the stored bytes, so quarantine() can match them
            raise

    # -- records ----------------------------------------------------------------------------

    async def load(self, key: str) -> SessionRecord | None:
        records = self._records
        raw = records.pop(key, None)
        if raw is None:
            return None
        records[key] = raw  # most recently used: to the end of the LRU order
        record = self._decode(raw, key)
        loaded = self._loaded
        if len(loaded) >= LOADED_KEPT:
            loaded.clear()
        if record.status is _ACTIVE:
            loaded[key] = (raw, record.version, record.id, record.warn_at, record.expires_at,
                           record.purge_at)
        else:
            loaded[key] = (raw, record.version, record.id, None, None, record.purge_at)
        return record

    def _head_of(self, key: str, raw: bytes) -> _Head | None:
        """The head of `raw`, the current bytes at `key` (None if unreadable)."""
        cached = self._loaded.pop(key, None)
        if cached is not None and cached[0] is raw:
            return cached
        head = self._try_head(raw)
        if head is None:
            return None
        if head.status == _ACTIVE.value:
            return (raw, head.version, head.id, head.warn_at, head.expires_at, head.purge_at)
        return (raw, head.version, head.id, None, None, head.purge_at)

    async def load_by_id(self, session_id: str) -> SessionRecord | None:
        raw = self._old.get(session_id)
        if raw is not None:
            return self._decode(raw, session_id)
        key = self._closed_ids.get(session_id)
        if key is not None:
            raw = self._records.get(key)
            head = self._try_head(raw) if raw is not None else None
            if raw is not None and head is not None and head.id == session_id:
                return self._decode(raw, key)
        # An active session: an operator's lookup, answered by a scan (no per-session id index
        # keeps idle sessions small).
        for key, raw in self._records.items():
            head = self._try_head(raw)
            if head is not None and head.id == session_id:
                return self._decode(raw, key)
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
        # Encode everything first: bad data raises before anything changes. The copy trims
        # the encoder's spare buffer capacity (tens of bytes per idle session).
        codec = self.codec
        raw = memoryview(codec.encode(record)).tobytes()
        if history:
            appended = [(m.seq, codec.pack_message(m)) for m in history.append]
            summaries = [
                (s.end_seq, s.start_seq, codec.encode_summary(s)) for s in history.summaries
            ]
        key = record.key
        if lease is not None:
            self._check_lease(lease, self.clock.now())
        records = self._records
        current_raw = records.get(key)
        current: _Head | None = None
        if current_raw is not None:
            current = self._head_of(key, current_raw)
            if current is None:
                raise ConflictError(key, expected, None)
        actual = current[1] if current is not None else 0
        if actual != expected or record.version != expected + 1:
            raise ConflictError(key, expected, actual if current is not None else None)

        # Index entries at the key exist at or before these times (the lazy-index invariant).
        warn_before = expire_before = purge_before = None
        if current is not None:
            del records[key]  # re-inserted below: most recently used
            _, _, current_id, warn_before, expire_before, purge_before = current
            if current_id != record.id or self._claims:
                warn_before, expire_before, purge_before = self._move_claims(
                    key, current, current_id != record.id
                )
        records[key] = raw
        active = record.status is _ACTIVE
        closed_ids = self._closed_ids
        if active:
            if closed_ids:
                closed_ids.pop(record.id, None)
        else:
            closed_ids[record.id] = key

        # An entry at or before the new deadline already exists: it moves itself later. So a
        # deadline that slid later (the usual update) costs no index work at all.
        added = False
        due = record.purge_at
        if due is not None and (purge_before is None or purge_before > due):
            self._due["purge"].add(due, key)
            added = True
        if active:
            due = record.expires_at
            if due is not None and (expire_before is None or expire_before > due):
                self._due["expire"].add(due, key)
                added = True
            due = record.warn_at
            if due is not None and (warn_before is None or warn_before > due):
                self._due["warn"].add(due, key)
                added = True

        if history:
            self._apply_history(record.id, history, appended, summaries)
        if lease is not None and release:
            self._release(lease)
        if len(records) + len(self._old) > self.max_sessions:
            self._evict()
        if added:
            self._compact_if_stale()

    def _move_claims(
        self, key: str, current: _Head, replaced: bool
    ) -> tuple[float | None, float | None, float | None]:
        """Take the claims off the record at `key` that a commit replaces, and return the
        times its index entries sit at. A replaced (finished) session keeps its own timers
        (e.g. purge) and claims, under its id."""
        current_id = current[2]
        before: builtins.list[float | None] = []
        for kind, due in zip(DUE_KINDS, current[3:], strict=True):
            until = self._claims.pop((kind, key), None)
            if until is not None:
                due = until
            before.append(due)
            if replaced and due is not None:
                loc = OLD + current_id
                self._due[kind].add(due, loc)
                if until is not None:
                    self._claims[(kind, loc)] = until
        if replaced:
            self._old[current_id] = current[0]
            self._closed_ids.pop(current_id, None)
        return before[0], before[1], before[2]

    def _apply_history(
        self,
        session_id: str,
        changes: HistoryChanges,
        appended: list[tuple[int, bytes]],
        summaries: list[tuple[int, int, bytes]],
    ) -> None:
        if changes.drop_summaries:
            self._summaries.pop(session_id, None)
        log_ = self._history.get(session_id)
        if changes.drop_messages_through is not None and log_ is not None:
            log_.drop_through(changes.drop_messages_through)
        if appended:
            if log_ is None:
                log_ = self._history[session_id] = _History()
            for seq, raw in appended:
                log_.add(seq, raw)
        if summaries:
            kept = self._summaries.setdefault(session_id, [])
            for item in summaries:
                insort(kept, item)

    async def delete(self, key: str, session_id: str | None = None) -> bool:
        raw = self._records.get(key)
        if raw is not None:
            head = self._try_head(raw)
            if head is None and session_id is None:  # unreadable: free the key anyway
                del self._records[key]
                return True
            if head is not None and (session_id is None or head.id == session_id):
                self._forget(key, head.id)
                return True
        if session_id is not None:
            raw = self._old.get(session_id)
            head = self._try_head(raw) if raw is not None else None
            if head is not None and head.key == key:
                self._forget(OLD + session_id, session_id)
                return True
        return False

    def _forget(self, loc: str, session_id: str) -> None:
        """Remove a record (current at key `loc`, or replaced: OLD + id) with its history,
        summaries and claims. Its due entries are dropped lazily when they come due."""
        if loc.startswith(OLD):
            del self._old[session_id]
        else:
            del self._records[loc]
            self._closed_ids.pop(session_id, None)
        self._history.pop(session_id, None)
        self._summaries.pop(session_id, None)
        for kind in DUE_KINDS:
            self._claims.pop((kind, loc), None)

    async def quarantine(self, key: str, raw: bytes, reason: str) -> None:
        self._quarantine.append(
            {"key": key, "reason": reason, "at": self.clock.now(), "raw": bytes(raw)}
        )
        current = self._records.get(key)
        if current is None or current != raw:
            return  # replaced meanwhile by another record: keep that one
        head = self._try_head(current)
        if head is not None:
            self._forget(key, head.id)
        else:
            del self._records[key]
        log.warning("quarantined unreadable session %s: %s", key, reason)

    async def list_quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        return [dict(item) for item in list(self._quarantine)[-limit:]][::-1] if limit > 0 else []

    async def _put_raw(self, key: str, raw: bytes) -> None:
        """Maintenance/test hook: store `raw` as the current record bytes of `key` unchecked
        (e.g. to simulate a corrupted record). Indexes are not updated."""
        self._records[key] = raw

    # -- listing and analytics --------------------------------------------------------------

    def _all(self) -> Iterator[SessionRecord]:
        """Every readable record, current and replaced (unreadable ones are skipped)."""
        for key, raw in itertools.chain(self._records.items(), self._old.items()):
            try:
                yield self.codec.decode(raw, key)
            except CorruptRecordError:
                continue

    async def list(
        self, filter: SessionFilter | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        position = decode_cursor(cursor) if cursor is not None else None
        if limit <= 0:
            return Page(items=[], next_cursor=cursor)
        candidates = (
            r
            for r in self._all()
            if matches(r, filter)
            and (position is None or after_cursor(r.last_activity, r.id, position))
        )
        page = heapq.nsmallest(limit + 1, candidates, key=lambda r: (-r.last_activity, r.id))
        items = page[:limit]
        more = len(page) > limit
        next_cursor = encode_cursor(items[-1].last_activity, items[-1].id) if more else None
        return Page(items=items, next_cursor=next_cursor)

    async def count(self, filter: SessionFilter | None = None) -> SessionStats:
        stats = SessionStats(by_status={}, by_platform={})
        for record in self._all():
            if matches(record, filter):
                stats.total += 1
                _bump(stats.by_status, record.status.value)
                _bump(stats.by_platform, record.platform)
        return stats

    async def stats(
        self, filter: SessionFilter | None = None, *, labels: Sequence[str] = ()
    ) -> SessionStats:
        stats = SessionStats(
            by_status={}, by_platform={}, by_close_reason={}, by_flow_step={},
            by_label={name: {} for name in labels},
        )
        duration = 0.0
        for record in self._all():
            if not matches(record, filter):
                continue
            stats.total += 1
            _bump(stats.by_status, record.status.value)
            _bump(stats.by_platform, record.platform)
            if record.close_reason is not None:
                _bump(stats.by_close_reason, record.close_reason)
            if record.flow is not None and record.status.value == "active":
                _bump(stats.by_flow_step, flow_step_name(record.flow.name, record.flow.step))
            for name in labels:
                value = record.labels.get(name)
                if value is not None:
                    _bump(stats.by_label[name], value)
            stats.messages += record.counters.messages
            stats.tokens += record_tokens(record)
            duration += record.last_activity - record.created_at
        stats.avg_duration_seconds = duration / stats.total if stats.total else 0.0
        return stats

    # -- history ----------------------------------------------------------------------------

    async def read_tail(
        self, ref: SessionRef, limit: int, *, before_seq: int | None = None
    ) -> builtins.list[Message]:
        found = self._history.get(ref.id)
        if found is None:
            return []
        return [self.codec.decode_message(raw) for raw in found.tail(limit, before_seq)]

    async def read_range(
        self, ref: SessionRef, start_seq: int, end_seq: int
    ) -> builtins.list[Message]:
        found = self._history.get(ref.id)
        if found is None:
            return []
        return [self.codec.decode_message(raw) for raw in found.range(start_seq, end_seq)]

    async def count_messages(self, ref: SessionRef) -> int:
        found = self._history.get(ref.id)
        return len(found.seqs) if found is not None else 0

    async def list_summaries(self, ref: SessionRef) -> builtins.list[Summary]:
        return [self.codec.decode_summary(raw) for _, _, raw in self._summaries.get(ref.id, ())]

    # -- due index --------------------------------------------------------------------------

    async def claim_due(
        self, kind: str, now: float, limit: int, *, claim_seconds: float = 30.0
    ) -> builtins.list[DueItem]:
        check_kind(kind)
        index = self._due[kind]
        cutoff = math.floor(now)
        until = now + claim_seconds
        out: builtins.list[DueItem] = []
        seen: set[str] = set()
        # Re-added after the scan, so that nothing is seen twice in one call.
        readd: builtins.list[tuple[float, str]] = []
        while index.times and index.times[0] <= cutoff and len(out) < limit:
            second = index.times[0]
            bucket = index.buckets[second]
            while bucket and len(out) < limit:
                loc = bucket.pop()
                index.size -= 1
                if loc in seen:
                    continue  # a duplicate entry of one already handled in this call
                seen.add(loc)
                found = self._locate(loc)
                if found is None:
                    continue  # deleted or evicted: the entry just goes away
                head = found[1]
                claimed = self._claims.get((kind, loc))
                due = claimed if claimed is not None else head.due_at(kind)
                if due is None:
                    continue  # no deadline any more
                if due <= now:
                    self._claims[(kind, loc)] = until
                    readd.append((until, loc))
                    out.append(DueItem(key=head.key, session_id=head.id, kind=kind, due_at=due))
                else:
                    readd.append((due, loc))  # an early entry: move it to the true time
            if bucket:
                break  # limit reached inside this bucket
            heapq.heappop(index.times)
            del index.buckets[second]
        for at, loc in readd:
            index.add(at, loc)
        return out

    def _compact_if_stale(self) -> None:
        """Rebuild the due index once stale entries outnumber live records (checked when a
        commit adds an entry: only then can the index grow)."""
        live = len(self)
        for index in self._due.values():
            if index.size > 2 * live + 4096:
                self._rebuild_due_index()
                break

    def _rebuild_due_index(self) -> None:
        """Drop stale entries (O(n), amortised over at least as many writes)."""
        for index in self._due.values():
            index.clear()
        locations = itertools.chain(
            self._records.items(), ((OLD + i, raw) for i, raw in self._old.items())
        )
        for loc, raw in locations:
            head = self._try_head(raw)
            if head is None:
                continue
            for kind, index in self._due.items():
                claimed = self._claims.get((kind, loc))
                due = claimed if claimed is not None else head.due_at(kind)
                if due is not None:
                    index.add(due, loc)

    # -- eviction ---------------------------------------------------------------------------

    def _evict(self) -> None:
        excess = len(self) - self.max_sessions
        # Evict a batch (~1%) at once: scanning to the oldest entry of a dict costs more than
        # taking several, so batching keeps eviction O(1) amortised.
        batch = max(excess, min(1024, self.max_sessions // 100))
        victims: builtins.list[tuple[str, bytes]] = [
            (OLD + i, raw) for i, raw in itertools.islice(self._old.items(), batch)
        ]
        if len(victims) < batch:
            victims += itertools.islice(self._records.items(), batch - len(victims))
        now = self.clock.now()
        for loc, raw in victims:
            head = self._try_head(raw)
            if head is not None:
                self._forget(loc, head.id)
                session_id, key = head.id, head.key
            else:
                if loc.startswith(OLD):
                    del self._old[loc[1:]]
                else:
                    del self._records[loc]
                session_id, key = None, loc.lstrip(OLD)
            event = Event(
                name=SESSION_EVICTED, key=key, session_id=session_id, at=now,
                data={"reason": "max_sessions", "max_sessions": self.max_sessions},
            )
            log.debug("evicted session %s (%s)", key, session_id)
            self.events.emit_nowait(event)
            if self.on_evict is not None:
                try:
                    self.on_evict(event)
                except Exception:
                    log.exception("on_evict hook failed for %s", key)

    # -- leases -----------------------------------------------------------------------------

    def _check_lease(self, lease: Lease, now: float) -> None:
        held = self._leases.get(lease.key)
        if held is None or held[1] != lease.token or held[0] != lease.owner or held[2] <= now:
            raise LeaseLost(lease.key, lease.token)

    async def lease_and_load(
        self, key: str, owner: str, ttl: float
    ) -> tuple[Lease | None, SessionRecord | None]:
        now = self.clock.now()
        held = self._leases.get(key)
        if held is not None and held[2] > now and held[0] != owner:
            return None, None
        lease = Lease(key=key, owner=owner, token=next(self._lease_tokens), expires_at=now + ttl)
        self._leases[key] = (owner, lease.token, lease.expires_at)
        try:
            return lease, await self.load(key)
        except CorruptRecordError as exc:
            raise corrupt_with_lease(exc, lease) from None

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        now = self.clock.now()
        try:
            self._check_lease(lease, now)
        except LeaseLost:
            return None
        renewed = Lease(key=lease.key, owner=lease.owner, token=lease.token, expires_at=now + ttl)
        self._leases[lease.key] = (lease.owner, lease.token, renewed.expires_at)
        return renewed

    async def release(self, lease: Lease) -> None:
        self._release(lease)

    def _release(self, lease: Lease) -> None:
        held = self._leases.get(lease.key)
        if held is not None and held[1] == lease.token:
            del self._leases[lease.key]

    # -- counters ---------------------------------------------------------------------------

    async def incr(self, counters: dict[str, int]) -> None:
        for name, amount in counters.items():
            self._counters[name] = self._counters.get(name, 0) + amount

    async def read_counters(self, prefix: str = "") -> dict[str, int]:
        return {k: v for k, v in self._counters.items() if k.startswith(prefix)}


def _bump(counts: dict[str, int], name: str) -> None:
    counts[name] = counts.get(name, 0) + 1
