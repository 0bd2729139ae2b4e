"""Per-key, in-process FIFO locks that disappear when idle.

The map holds an entry only while some task holds or waits for the key, so it never grows with
the number of users ever seen. Acquiring an uncontended key does not suspend the task, and
`try_acquire` does it without even creating a coroutine (the engine's hot path).
"""

from __future__ import annotations

import asyncio
from collections import deque


class _Entry:
    __slots__ = ("busy", "users", "waiters")

    def __init__(self) -> None:
        self.busy = True  # created by the task that takes it
        self.users = 1  # holders + waiters
        # Created on first contention: most keys are never waited for.
        self.waiters: deque[asyncio.Future[None]] | None = None


class KeyLocks:
    def __init__(self) -> None:
        # True: held, nobody waits (the common case, no object per update); an _Entry once
        # some task waits for the key.
        self._entries: dict[str, _Entry | bool] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def locked(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is True or (isinstance(entry, _Entry) and entry.busy)

    def try_acquire(self, key: str) -> bool:
        """Take the key's lock if nobody holds it (never waits). False when it is held."""
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            entries[key] = True
            return True
        if not isinstance(entry, _Entry) or entry.busy:
            return False
        entry.users += 1
        entry.busy = True
        return True

    async def acquire(self, key: str, wait: float | None = None) -> bool:
        """Take the key's lock, waiting in FIFO order at most `wait` seconds.
        Returns False when the wait ran out (the caller decides what that means)."""
        if self.try_acquire(key):
            return True
        entry = self._entries[key]
        if not isinstance(entry, _Entry):  # the holder was alone until now
            entry = self._entries[key] = _Entry()
        entry.users += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if entry.waiters is None:
            entry.waiters = deque()
        entry.waiters.append(fut)
        try:
            if wait is None:
                await fut
            else:
                await asyncio.wait_for(asyncio.shield(fut), wait)
            return True
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled():
                # Ownership was handed to us just as we gave up: pass it on.
                self._hand_over(key, entry)
            else:
                fut.cancel()
                try:
                    entry.waiters.remove(fut)
                except ValueError:
                    pass
                self._leave(key, entry)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False

    def release(self, key: str) -> None:
        entries = self._entries
        entry = entries[key]
        if not isinstance(entry, _Entry):  # held alone
            del entries[key]
            return
        if not entry.waiters:  # the common case: nobody waits
            entry.busy = False
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]
            return
        self._hand_over(key, entry)

    def _hand_over(self, key: str, entry: _Entry) -> None:
        waiters = entry.waiters
        while waiters:
            nxt = waiters.popleft()
            if not nxt.done():
                nxt.set_result(None)  # ownership passes; `busy` stays True
                self._leave(key, entry)
                return
        entry.busy = False
        self._leave(key, entry)

    def _leave(self, key: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0 and self._entries.get(key) is entry:
            del self._entries[key]
