"""A small bounded pool of asyncpg connections for `PostgresStore`.

Why not `asyncpg.Pool`: its acquire and release cost about 60-100 µs of Python per use (a proxy
object per checkout, `asyncio.shield` and a task per release, a timer re-armed per release,
`wait_for` per timed acquire), which is as much as a round trip to a local server and was paid
twice per update. Here taking an idle connection and giving it back are plain list operations;
only waiting for a connection (the pool is exhausted) or opening one awaits.

Rules:

* At most `max_size` connections are open or being opened. `min_size` are opened by `start`.
* Idle connections are reused newest first (the others age out after `max_idle` seconds, down
  to `min_size`), so a quiet store keeps few server backends.
* A waiter gets a connection handed over directly, in arrival order, or a free slot to open one.
  Waits are bounded by one timer for the pool (armed for the earliest deadline), not by an
  `asyncio.timeout` per wait: with many tasks queueing for few connections, creating and
  cancelling a timer per acquire was about a tenth of the client's CPU time per update.
* A connection given back while closed, inside a transaction, or after `close()` is terminated
  (the store never leaves session state on its connections, so nothing else needs resetting).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Connect = Callable[[], Awaitable[Any]]


class PoolClosed(Exception):
    """The pool was closed while a caller waited for a connection."""


class ConnectionPool:
    def __init__(
        self, connect: Connect, *, min_size: int, max_size: int, max_idle: float = 300.0
    ) -> None:
        self._connect = connect
        self.min_size = min_size
        self.max_size = max_size
        self.max_idle = max_idle
        self._idle: list[tuple[Any, float]] = []  # (connection, idle since), newest last
        self._size = 0  # connections open or being opened
        # (future, deadline): futures resolved with a connection, or with None ("a slot is
        # free, open one"), or failed with TimeoutError by `_expire` after their deadline.
        self._waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def start(self) -> None:
        """Open `min_size` connections (the first failure propagates)."""
        opened = []
        try:
            for _ in range(self.min_size):
                self._size += 1
                try:
                    opened.append(await self._connect())
                except BaseException:
                    self._size -= 1
                    raise
        except BaseException:
            for conn in opened:
                self._size -= 1
                conn.terminate()
            raise
        now = time.monotonic()
        self._idle.extend((conn, now) for conn in opened)

    def try_acquire(self) -> Any | None:
        """An idle connection, or None (then await `acquire`). Never awaits."""
        idle = self._idle
        while idle:
            conn, _ = idle.pop()
            if conn.is_closed():
                self._size -= 1
                continue
            if idle and time.monotonic() - idle[0][1] > self.max_idle:
                self._expire_oldest()
            return conn
        return None

    async def acquire(self, wait: float) -> Any:
        """A connection within `wait` seconds (TimeoutError otherwise)."""
        if self._closed:
            raise PoolClosed("the connection pool is closed")
        conn = self.try_acquire()
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            if self._size < self.max_size:
                async with asyncio.timeout_at(deadline):
                    return await self._open()
            waiter: asyncio.Future[Any] = loop.create_future()
            self._waiters.append((waiter, deadline))
            if self._timer is None or deadline < self._timer_at:
                self._arm(loop, deadline)
            try:
                conn = await waiter
            except BaseException:
                self._abandon(waiter)
                raise
            if conn is not None:
                return conn
            # A slot was freed for us: loop round and open a connection in it.

    def release(self, conn: Any) -> None:
        """Give a connection back (terminated instead if it is not clean or the pool closed)."""
        if self._closed or conn.is_closed() or conn.is_in_transaction():
            if not conn.is_closed():
                conn.terminate()
            self._size -= 1
            self._wake(None)
            return
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append((conn, time.monotonic()))

    def discard(self, conn: Any) -> None:
        """Close a broken connection; `release` it afterwards as usual."""
        if not conn.is_closed():
            conn.terminate()

    async def close(self, grace: float) -> None:
        """Close idle connections; connections in use are terminated when given back. Waiters
        get `PoolClosed`."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed("the connection pool was closed"))
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for conn, _ in idle:
            try:
                await asyncio.wait_for(conn.close(), grace)
            except Exception:  # a stuck or broken connection is dropped
                conn.terminate()

    def terminate(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for conn, _ in idle:
            conn.terminate()

    # -- internals ------------------------------------------------------------------------

    async def _open(self) -> Any:
        self._size += 1
        try:
            return await self._connect()
        except BaseException:
            self._size -= 1
            self._wake(None)
            raise

    def _wake(self, conn: Any) -> None:
        """Give the first live waiter a connection (or a free slot when `conn` is None)."""
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append((conn, time.monotonic()))

    def _abandon(self, waiter: asyncio.Future[Any]) -> None:
        """A waiter gave up (timeout, cancellation): pass on what it was handed meanwhile."""
        for i, (queued, _) in enumerate(self._waiters):
            if queued is waiter:
                del self._waiters[i]
                break
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            handed = waiter.result()
            if handed is not None:
                self.release(handed)
            else:
                self._wake(None)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._expire, loop)
        self._timer_at = at

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the waiters whose deadline passed; re-arm for the earliest one left."""
        self._timer = None
        now = loop.time()
        kept: deque[tuple[asyncio.Future[Any], float]] = deque()
        for waiter, deadline in self._waiters:
            if waiter.done():
                continue
            if deadline <= now:
                waiter.set_exception(TimeoutError("no connection became free in time"))
            else:
                kept.append((waiter, deadline))
        self._waiters = kept
        if kept:
            self._arm(loop, min(deadline for _, deadline in kept))

    def _expire_oldest(self) -> None:
        """Close connections idle for longer than `max_idle`, keeping `min_size` open."""
        now = time.monotonic()
        idle = self._idle
        while idle and self._size > self.min_size and now - idle[0][1] > self.max_idle:
            conn, _ = idle.pop(0)
            self._size -= 1
            conn.terminate()
