"""A bounded map from session key to the stored bytes of its current record.

DESIGN.md's read-through cache, kept by the store that can tell when it is right instead of a
wrapper around any store: a wrapper over a shared store (Redis, PostgreSQL) would have to ask
the server for the version on every load, which is the round trip it exists to save (and the
lease-and-load of a shared store returns the record in that round trip anyway). `SQLiteStore`
can tell without a round trip: while no other store has its file open and no other connection
committed to it (see `SQLiteStore._usable_cache`), the bytes it last read or committed for a
key are the stored ones, so a load decodes them without running SQL.

It holds bytes, never decoded records: every load decodes a fresh record, so a handler that
fails halfway cannot leave a half-changed record in the cache (the reason the memory store
keeps bytes too). A wrong entry could only cost a `ConflictError` (every commit compares the
stored version), and the store forgets the key then.
"""

from __future__ import annotations

DEFAULT_SIZE = 10_000  # keys; at about 450 bytes each (key, record bytes, slot), ~4.5 MB


class RecordCache:
    """Key -> stored record bytes, at most `size` keys; the least recently written go first."""

    __slots__ = ("_blobs", "size")

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError(f"a record cache holds at least one key, not {size}")
        self.size = size
        self._blobs: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._blobs)

    def get(self, key: str) -> bytes | None:
        return self._blobs.get(key)

    def put(self, key: str, blob: bytes) -> None:
        """Remember `blob` as the stored bytes of `key` (most recent: evicted last)."""
        blobs = self._blobs
        # Re-inserted at the end: a dict keeps insertion order, so the first key is the one
        # written least recently.
        blobs.pop(key, None)
        blobs[key] = blob
        if len(blobs) > self.size:
            del blobs[next(iter(blobs))]

    def forget(self, key: str) -> None:
        self._blobs.pop(key, None)

    def clear(self) -> None:
        self._blobs.clear()
