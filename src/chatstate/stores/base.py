"""The one store protocol every backend implements, and the small types it speaks.

A store keeps session records, their history and summaries, a due index, leases and counters.
It knows records, not flows. Every method is async; a backend that cannot reach its server raises
`StoreUnavailable` within a bounded time and never leaves a half-written record.

Contract (checked by tests/conformance):

* One *current* record per key. `commit` writes it with compare-and-set: the stored current
  record's version must equal `expected` (0 = no current record) and `record.version` must be
  `expected + 1`; otherwise `ConflictError` and nothing changes. Versions therefore grow per key,
  also across sessions of that key.
* A commit whose `record.id` differs from the current record's id replaces a finished session:
  the old record stays retrievable by id (`load_by_id`, listings, `delete(key, id)`) and keeps its
  history until it is purged.
* History and summaries belong to a session id. They are written only through `commit`
  (`HistoryChanges`), atomically with the record, so a retried update never appends twice.
  Reads never scan the whole conversation.
* The due index holds, per session, one entry per kind ("warn", "expire", "purge") at
  `record.due_at(kind)`, rewritten by every commit and removed by delete. `claim_due` returns
  entries due at `now`, at most `limit`, and atomically pushes each to `now + claim_seconds`
  so that no other caller gets it until then (a crashed claimer's items come back). Its cost grows
  with the number returned, not with the number of sessions.
* Leases serialise updates of one key across processes. A lease has a fencing `token` that grows
  per key; `commit(..., lease=...)` refuses (`LeaseLost`) when the lease is no longer the holder.
* A commit applies at most once. A backend that retries a commit whose answer was lost may only
  recognise it as already applied by a mark unique to that call, never by comparing contents
  (two writers can produce byte-identical records; taking one's write for the other's would
  lose an update).
* Listing order is total and stable: `last_activity` descending, then `id` ascending (ties in
  `last_activity` are common: imports, fake clocks). Cursors are keyset positions in that order,
  so paging never repeats or skips a record that did not change meanwhile.
* `_put_raw(key, raw)` (async, on every backend) is the corruption-injection hook for tests and
  maintenance: it stores `raw` as the current record of `key` unchecked, so that `load` then
  sees exactly what a damaged or foreign writer left. Indexes are not updated. A backend that
  keeps records in a typed column may accept only what that column holds (PostgresStore:
  JSON documents, read back in JSONB's canonical text) and raises `ValueError` otherwise.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Sequence
from typing import Any

import msgspec

from ..codec import Codec
from ..errors import CorruptRecordError
from ..model import HistoryChanges, Message, SessionRecord, SessionRef, Summary

DUE_KINDS = ("warn", "expire", "purge")


class Lease(msgspec.Struct, kw_only=True):
    key: str
    owner: str
    token: int  # fencing token: grows every time the key is leased
    expires_at: float  # wall-clock seconds (the store's clock)


class DueItem(msgspec.Struct, kw_only=True):
    key: str
    session_id: str
    kind: str  # "warn", "expire" or "purge"
    due_at: float  # the index time when claimed (the record holds the original deadline)


class SessionFilter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Filters for listing and counting. Every field narrows; None means any."""

    status: str | None = None
    platform: str | None = None
    scope: str | None = None
    flow: str | None = None
    step: str | None = None
    updated_since: float | None = None  # last_activity >= this
    updated_before: float | None = None  # last_activity < this
    key_prefix: str | None = None


class Page(msgspec.Struct, kw_only=True):
    items: list[SessionRecord]
    next_cursor: str | None = None  # opaque; pass back to get the next page


class SessionStats(msgspec.Struct, kw_only=True):
    """Aggregates computed inside the store (never by loading every record)."""

    total: int = 0
    by_status: dict[str, int] = {}
    by_platform: dict[str, int] = {}
    by_close_reason: dict[str, int] = {}
    by_flow_step: dict[str, int] = {}  # "flow:step" -> active sessions there
    by_label: dict[str, dict[str, int]] = {}  # label name -> value -> sessions
    messages: int = 0
    tokens: int = 0  # input + output tokens of all sessions
    avg_duration_seconds: float = 0.0  # last_activity - created_at, averaged


class Store(abc.ABC):
    """Base class of every backend. Subclasses implement the abstract methods."""

    #: True when other processes may write the same records (the engine then takes leases).
    shared: bool = False
    #: The format the codec writes for this store ("json" or "msgpack").
    codec_format: str = "json"

    def __init__(self, *, codec: Codec | None = None) -> None:
        self.codec = codec if codec is not None else Codec(format=self.codec_format)  # type: ignore[arg-type]

    # -- lifetime ---------------------------------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and create or check the schema. Idempotent; called lazily by the engine."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads. Idempotent."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def ping(self) -> None:
        """Raise `StoreUnavailable` when the backend cannot answer (for /readyz)."""
        await self.count()

    # -- records ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def load(self, key: str) -> SessionRecord | None:
        """The current record at `key`, or None. Raises `CorruptRecordError` if unreadable."""

    @abc.abstractmethod
    async def load_by_id(self, session_id: str) -> SessionRecord | None:
        """A record (current or replaced) by its stable id."""

    @abc.abstractmethod
    async def commit(
        self,
        record: SessionRecord,
        *,
        expected: int,
        lease: Lease | None = None,
        release: bool = False,
        history: HistoryChanges | None = None,
    ) -> None:
        """Write `record` as the current record of `record.key` if the stored version is
        `expected`; apply `history` to `record.id` in the same atomic step; rewrite the due
        index; release `lease` afterwards when `release` is true."""

    @abc.abstractmethod
    async def delete(self, key: str, session_id: str | None = None) -> bool:
        """Delete the current session at `key` (or the one with `session_id`), with its
        history, summaries and due entries. True if something was deleted."""

    @abc.abstractmethod
    async def quarantine(self, key: str, raw: bytes, reason: str) -> None:
        """Move an unreadable current record aside (kept for inspection) and free the key.
        The key is freed only while its stored bytes still equal `raw`: a record written there
        meanwhile is kept (the quarantine entry is recorded either way)."""

    async def _put_raw(self, key: str, raw: bytes) -> None:
        """Test/maintenance hook: store `raw` as the current record bytes of `key` unchecked
        (see the module docstring). Backends override it."""
        raise NotImplementedError(f"{type(self).__name__} has no _put_raw(key, raw) hook")

    @abc.abstractmethod
    async def list_quarantined(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Quarantined records: dicts with key, reason, at, raw (bytes)."""

    @abc.abstractmethod
    async def list(
        self, filter: SessionFilter | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """Records (current and replaced) matching `filter`, ordered by `last_activity`
        descending then `id` ascending; `next_cursor` is None on the last page. Unreadable
        records are skipped."""

    @abc.abstractmethod
    async def count(self, filter: SessionFilter | None = None) -> SessionStats:
        """Counts only: total, by_status and by_platform of the matching records."""

    @abc.abstractmethod
    async def stats(
        self, filter: SessionFilter | None = None, *, labels: Sequence[str] = ()
    ) -> SessionStats:
        """Every aggregate of `SessionStats`, grouped by the given label names."""

    # -- history ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def read_tail(
        self, ref: SessionRef, limit: int, *, before_seq: int | None = None
    ) -> builtins.list[Message]:
        """The newest `limit` messages (with seq < before_seq if given), oldest first."""

    @abc.abstractmethod
    async def read_range(
        self, ref: SessionRef, start_seq: int, end_seq: int
    ) -> builtins.list[Message]:
        """Messages with start_seq <= seq <= end_seq, oldest first."""

    @abc.abstractmethod
    async def count_messages(self, ref: SessionRef) -> int:
        """How many messages are stored for the session (dropped ones not counted)."""

    async def search_messages(
        self, ref: SessionRef, query: str, limit: int = 20
    ) -> builtins.list[Message]:
        """Messages whose text contains every word of `query` (case-insensitive), newest first.
        Backends with full-text search override this scan."""
        words = [w.lower() for w in query.split() if w]
        found: builtins.list[Message] = []
        before: int | None = None
        while len(found) < limit:
            page = await self.read_tail(ref, 500, before_seq=before)
            if not page:
                break
            for message in reversed(page):
                text = message.text.lower()
                if all(w in text for w in words):
                    found.append(message)
                    if len(found) >= limit:
                        break
            before = page[0].seq
        return found

    @abc.abstractmethod
    async def list_summaries(self, ref: SessionRef) -> builtins.list[Summary]:
        """Summaries of the session ordered by end_seq."""

    # -- due index --------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim_due(
        self, kind: str, now: float, limit: int, *, claim_seconds: float = 30.0
    ) -> builtins.list[DueItem]:
        """Claim up to `limit` entries of `kind` due at `now` (see the module docstring)."""

    # -- leases -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def lease_and_load(
        self, key: str, owner: str, ttl: float
    ) -> tuple[Lease | None, SessionRecord | None]:
        """Try to take the lease on `key` for `ttl` seconds and load the current record in one
        round trip. The lease is None when another owner holds it (the record is then None too).
        `CorruptRecordError` raised here carries the lease in its `lease` attribute."""

    @abc.abstractmethod
    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a held lease; None if it was lost."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give a lease back (no effect if it was already lost)."""

    # -- counters (funnels, time series) ----------------------------------------------------

    @abc.abstractmethod
    async def incr(self, counters: dict[str, int]) -> None:
        """Add to named counters atomically (created at 0)."""

    @abc.abstractmethod
    async def read_counters(self, prefix: str = "") -> dict[str, int]:
        """Counters whose name starts with `prefix`."""


def corrupt_with_lease(error: CorruptRecordError, lease: Lease | None) -> CorruptRecordError:
    """Attach the lease taken by `lease_and_load` to a decode error so the engine can use it."""
    error.lease = lease  # type: ignore[attr-defined]
    return error
