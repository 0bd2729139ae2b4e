"""SessionManager: open -> handler -> commit, one key at a time.

    manager = SessionManager("sqlite:///chatstate.db")
    async with manager.session(SessionKey.user("telegram", 42)) as s:
        s.data["name"] = "Ada"

Per update the engine takes the key's in-process lock (and, on a shared store, a lease with a
fencing token that is renewed while the handler runs), loads or creates the record, runs the
handler, and commits record + staged history in one compare-and-set write. A handler that raises
changes nothing; its error is recorded by a separate small commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

import msgspec

from . import events as ev
from .clock import SYSTEM_CLOCK, Clock, SystemClock
from .errors import ConflictError, CorruptRecordError, LockTimeout
from .events import Event, EventBus
from .locks import KeyLocks
from .model import HistoryChanges, SessionKey, SessionRecord, Status, new_record
from .policy import LifecyclePolicy
from .session import Session
from .stores.base import Lease, Store
from .stores.url import open_store

log = logging.getLogger("chatstate.engine")

T = TypeVar("T")
BusyPolicy = Literal["wait", "drop", "reply"]
ErrorHook = Callable[[Session, BaseException], Awaitable[bool | None] | bool | None]
Defaults = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | type | None


_RENEWALS: set[asyncio.Future[None]] = set()


class SessionBusy(LockTimeout):
    """The session stayed busy past the wait; `policy` says whether to drop or reply."""

    def __init__(self, key: str, waited: float, policy: BusyPolicy) -> None:
        super().__init__(key, waited)
        self.policy = policy


class SessionManager:
    def __init__(
        self,
        store: Store | str | None = None,
        *,
        clock: Clock | None = None,
        policy: LifecyclePolicy | None = None,
        defaults: Defaults = None,
        keep_on_reset: tuple[str, ...] | list[str] = (),
        max_consecutive_errors: int = 3,
        lock_timeout: float = 10.0,
        lease_seconds: float = 30.0,
        busy: BusyPolicy = "wait",
        events: EventBus | None = None,
        retries: int = 3,
        on_error: ErrorHook | None = None,
        owner: str | None = None,
    ) -> None:
        self.store: Store = store if isinstance(store, Store) else open_store(store)
        self.clock: Clock = clock or SYSTEM_CLOCK
        if clock is not None and hasattr(self.store, "clock"):
            # One notion of time: a store left on its default clock follows the manager's
            # (a FakeClock in tests drives leases and due times too).
            if self.store.clock is None or isinstance(self.store.clock, SystemClock):
                self.store.clock = clock
        self.policy = policy or LifecyclePolicy()
        self.events = events or EventBus()
        store_events = getattr(self.store, "events", None)
        if isinstance(store_events, EventBus) and store_events is not self.events:
            # A store's own announcements (e.g. MemoryStore's `session.evicted`) reach the
            # manager's hooks too.
            store_events.on("*", self.events.emit)
        self.keep_on_reset = tuple(keep_on_reset)
        self.max_consecutive_errors = max_consecutive_errors
        self.lock_timeout = lock_timeout
        self.lease_seconds = lease_seconds
        self.busy = busy
        self.retries = retries
        self.on_error = on_error
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._locks = KeyLocks()
        # Leases held by running handlers -> loop time they were taken or last renewed; one
        # sweeper timer per manager renews those held for a third of their ttl (see _sweep).
        self._held: dict[_SessionContext, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweeper_loop: asyncio.AbstractEventLoop | None = None
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._defaults = _defaults_factory(defaults)
        self._default_names = frozenset(self._defaults())
        self.store.codec.on_repair = self._on_repair

    # -- public API -------------------------------------------------------------------------

    def session(
        self, key: SessionKey | str, *, message: bool = True, create: bool = True,
        expire: bool = True,
    ) -> _SessionContext:
        """Open the session of `key` for one update: ``async with manager.session(k) as s``.

        `message=True` counts an incoming message and moves the idle deadline; use False for
        background or operator access (then nothing is written unless something changed).
        With `create=False` a missing session yields None-like behaviour: `LookupError`.
        `expire=False` hands over an active record even when it is past its deadline (the
        lifecycle runner uses it to expire the session itself, hooks first).
        """
        return _SessionContext(self, SessionKey.coerce(key), message, create, expire)

    async def update(
        self,
        key: SessionKey | str,
        fn: Callable[[Session], T | Awaitable[T]],
        *,
        message: bool = True,
        retries: int | None = None,
    ) -> T:
        """Run `fn(session)` and commit; on a conflicting commit reload and run it again (at most
        `retries` more times), so `fn` must be safe to repeat."""
        attempts = (self.retries if retries is None else retries) + 1
        for attempt in range(attempts):
            try:
                async with self.session(key, message=message) as s:
                    result = fn(s)
                    if inspect.isawaitable(result):
                        result = await result
                return result  # type: ignore[return-value]
            except ConflictError:
                await self.events.emit(
                    Event(name=ev.COMMIT_CONFLICT, key=str(key), at=self.clock.now())
                )
                if attempt + 1 >= attempts:
                    raise
                await asyncio.sleep(0.001 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, key: SessionKey | str) -> SessionRecord | None:
        """The stored record, read without locking (for display; do not modify)."""
        await self.open()
        try:
            return await self.store.load(str(SessionKey.coerce(key)))
        except CorruptRecordError:
            return None

    async def reset(self, key: SessionKey | str, keep: tuple[str, ...] | list[str] = ()) -> None:
        async with self.session(key, message=False) as s:
            s.reset(keep)
            s.temp["_event"] = ev.SESSION_RESET

    async def clear(self, key: SessionKey | str) -> bool:
        """Delete the session (and its history) for good; the next update starts afresh."""
        k = SessionKey.coerce(key)
        ks = str(k)
        await self.open()
        await self._lock(ks)
        try:
            lease = await self._lease(ks) if self.store.shared else None
            try:
                deleted = await self.store.delete(ks)
            finally:
                if lease is not None:
                    await self.store.release(lease)
        finally:
            self._locks.release(ks)
        await self.events.emit(Event(name=ev.SESSION_CLEARED, key=ks, at=self.clock.now()))
        return deleted

    def default_data(self) -> dict[str, Any]:
        return self._defaults()

    async def open(self) -> None:
        if self._opened:
            return
        async with self._open_lock:
            if not self._opened:
                await self.store.open()
                self._opened = True

    async def aclose(self) -> None:
        self._stop_sweeper()
        self._held.clear()
        await self.store.close()
        self._opened = False

    async def __aenter__(self) -> SessionManager:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def active_locks(self) -> int:
        """Keys currently held or awaited in this process (0 when idle)."""
        return len(self._locks)

    # -- internals --------------------------------------------------------------------------

    async def _lock(self, key: str) -> None:
        if not await self._locks.acquire(key, self.lock_timeout):
            raise SessionBusy(key, self.lock_timeout, self.busy)

    async def _lease(self, key: str) -> Lease:
        lease, _ = await self._lease_and_load(key)
        return lease

    async def _lease_and_load(self, key: str) -> tuple[Lease, SessionRecord | None]:
        """Take the store lease, waiting with backoff up to lock_timeout."""
        start = self.clock.monotonic()
        delay = 0.001
        waited = False
        while True:
            lease, record = await self.store.lease_and_load(key, self.owner, self.lease_seconds)
            if lease is not None:
                if waited:
                    await self.events.emit(
                        Event(name=ev.LEASE_WAIT, key=key, at=self.clock.now(),
                              data={"seconds": self.clock.monotonic() - start})
                    )
                return lease, record
            waited = True
            elapsed = self.clock.monotonic() - start
            if elapsed >= self.lock_timeout:
                raise SessionBusy(key, elapsed, self.busy)
            # Jittered backoff, capped low: a lease is usually released within milliseconds,
            # and waiters of several processes should not wake in lockstep.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.02)

    # -- lease renewal ------------------------------------------------------------------------

    def _hold(self, context: _SessionContext) -> None:
        """`context` holds a lease from now on: the sweeper renews it after a third of its ttl."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._held[context] = now
        if self._sweeper is None or self._sweeper_loop is not loop:
            # A lease taken later is due later: the sweeper armed for the earliest stays right.
            self._arm_sweeper(loop, now + self.lease_seconds / 3)

    def _arm_sweeper(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        self._stop_sweeper()
        self._sweeper = loop.call_at(at, self._sweep)
        self._sweeper_loop = loop

    def _stop_sweeper(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        """Renew every lease held for a third of its ttl (a long handler is never interrupted);
        sleep until the next one is due, or stop when none is held."""
        self._sweeper = None
        loop = self._sweeper_loop
        assert loop is not None
        now = loop.time()
        third = self.lease_seconds / 3
        due = 0.99 * third  # the loop may run a timer a hair before its time
        next_at: float | None = None
        held = self._held
        for context, since in list(held.items()):
            if context.lease is None:  # finished while a renewal was in flight
                del held[context]
                continue
            if now - since >= due:
                held[context] = since = now
                context._renew_soon()
            if next_at is None or since + third < next_at:
                next_at = since + third
        if next_at is not None:
            self._arm_sweeper(loop, next_at)

    def _on_repair(self, key: str, fields: list[str]) -> None:
        self.events.emit_nowait(
            Event(name=ev.SESSION_REPAIRED, key=key, at=self.clock.now(), data={"fields": fields})
        )

    def _fill_defaults(self, record: SessionRecord) -> None:
        """Give a loaded record the default fields added since it was stored."""
        data = record.data
        if self._default_names.issubset(data.keys()):
            return  # the common case: no copy of the defaults is built
        for name, value in self._defaults().items():
            if name not in data:
                data[name] = value

    def _fresh(self, key: SessionKey, previous: SessionRecord | None) -> SessionRecord:
        record = new_record(key, self.clock.now(), data=self._defaults())
        if previous is not None:
            for name in self.policy.carry_over:
                if name in previous.data:
                    record.data[name] = previous.data[name]
        return record


class _SessionContext:
    """The `async with manager.session(key)` block for one update."""

    __slots__ = (
        "create", "expected", "expire", "extended", "key", "ks", "lease", "manager", "message",
        "session", "snapshot",
    )

    def __init__(
        self, manager: SessionManager, key: SessionKey, message: bool, create: bool,
        expire: bool = True,
    ) -> None:
        self.manager = manager
        self.key = key
        self.ks = str(key)
        self.message = message
        self.create = create
        self.expire = expire
        self.extended = 0.0
        self.lease: Lease | None = None
        self.snapshot: bytes | None = None
        self.expected = 0

    async def __aenter__(self) -> Session:
        # The hot path of every update: no helper coroutine is awaited unless it does I/O or
        # waits (lock contention, leases, corrupt records, late expiry).
        m = self.manager
        if not m._opened:
            await m.open()
        ks = self.ks
        if not m._locks.try_acquire(ks):
            await m._lock(ks)
        try:
            store = m.store
            if store.shared:
                record = await self._load()
            else:
                try:
                    record = await store.load(ks)
                except CorruptRecordError as err:
                    await self._quarantine(err)
                    record = None
            # Without a deadline nothing expires: the clock is read only when there is one.
            if (
                record is not None and self.expire and record.expires_at is not None
                and m.policy.is_expired(record, m.clock.now())
            ):
                record = await self._expire_late(record)
            session = self._prepare(record)
        except BaseException:
            await self._release_quietly()
            m._locks.release(ks)
            raise
        self.session = session
        return session

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        m = self.manager
        if self.lease is not None:
            self._stop_renewing()
        try:
            if exc is None:
                try:
                    await self._commit()
                except BaseException:
                    await self._release_quietly()
                    raise
                return False
            if isinstance(exc, Exception):
                return await self._handler_failed(exc)
            await self._release_quietly()
            return False
        finally:
            m._locks.release(self.ks)

    # -- load -------------------------------------------------------------------------------

    async def _load(self) -> SessionRecord | None:
        """Lease and load from a shared store (the lease is renewed while the handler runs)."""
        m = self.manager
        try:
            self.lease, record = await m._lease_and_load(self.ks)
            self._start_renewing()
        except CorruptRecordError as err:
            self.lease = getattr(err, "lease", None) or self.lease
            if self.lease is not None:
                self._start_renewing()
            await self._quarantine(err)
            return None
        return record

    async def _quarantine(self, err: CorruptRecordError) -> None:
        """Set the unreadable record aside; the update goes on with a fresh session."""
        m = self.manager
        await m.store.quarantine(self.ks, err.raw, err.reason)
        await m.events.emit(
            Event(name=ev.SESSION_QUARANTINED, key=self.ks, at=m.clock.now(),
                  data={"reason": err.reason})
        )

    def _prepare(self, record: SessionRecord | None) -> Session:
        m = self.manager
        if record is not None and record.status is Status.ACTIVE:
            self.expected = record.version
            created = False
            if not self.message:
                self.snapshot = m.store.codec.encode(record)
            if m._default_names:
                m._fill_defaults(record)
        else:
            if not self.create:
                raise LookupError(f"no active session for {self.ks}")
            self.expected = 0 if record is None else record.version
            record = m._fresh(self.key, record)
            created = True
        if self.message:
            record.counters.messages += 1
        return Session(record, key=self.key, manager=m, created=created)

    async def _expire_late(self, record: SessionRecord) -> SessionRecord:
        """The deadline passed before the lifecycle runner got to it: the old session ends as
        expired (its own commit) and this update starts a new one."""
        m = self.manager
        at = record.expires_at or m.clock.now()
        record.status = Status.EXPIRED
        record.close_reason = "timeout"
        record.closed_at = at
        m.policy.closed(record, m.clock.now())
        expected = record.version
        record.version = expected + 1
        await m.store.commit(record, expected=expected, lease=self.lease)
        await m.events.emit(
            Event(name=ev.SESSION_EXPIRED, key=self.ks, session_id=record.id, at=m.clock.now(),
                  data={"reason": "timeout", "due_at": at, "late": True})
        )
        await m.events.emit(
            Event(name=ev.SESSION_CLOSED, key=self.ks, session_id=record.id, at=m.clock.now(),
                  data={"reason": "timeout", "due_at": at, "late": True})
        )
        return record

    # -- commit -----------------------------------------------------------------------------

    async def _commit(self) -> None:
        m = self.manager
        session = self.session
        record = session.record
        now = m.clock.now()
        if self.message:
            record.counters.consecutive_errors = 0
            self.extended = m.policy.touch(record, now) or 0.0
        elif record.status is not Status.ACTIVE:
            m.policy.closed(record, now)
        elif session.created:
            m.policy.touch(record, now)
        history: HistoryChanges | None = session._history
        if not history:
            history = None
            if not session.created and self.snapshot is not None:
                if m.store.codec.encode(record) == self.snapshot:
                    await self._release_quietly()  # nothing changed: no write at all
                    if session._after_commit:
                        _run_after_commit(session)
                    return
        record.version = self.expected + 1
        lease = self.lease
        await m.store.commit(
            record, expected=self.expected, lease=lease, release=lease is not None,
            history=history,
        )
        self.lease = None
        if session._after_commit:
            _run_after_commit(session)
        bus = m.events
        if (
            session.created or self.extended or record.status is not Status.ACTIVE
            or bus.listening(ev.SESSION_COMMITTED) or "_event" in session.temp
        ):
            await self._announce(session, record, now)
        else:
            bus.counts[ev.SESSION_COMMITTED] += 1  # the common case: nothing to build or await

    async def _announce(self, session: Session, record: SessionRecord, now: float) -> None:
        bus = self.manager.events
        if session.created:
            await bus.emit(
                Event(name=ev.SESSION_CREATED, key=self.ks, session_id=record.id, at=now)
            )
        # Only active (or new) records are opened, so a non-active one was closed just now.
        if record.status is not Status.ACTIVE:
            await bus.emit(
                Event(name=ev.SESSION_CLOSED, key=self.ks, session_id=record.id, at=now,
                      data={"reason": record.close_reason})
            )
        if self.extended:
            await bus.emit(
                Event(name=ev.SESSION_EXTENDED, key=self.ks, session_id=record.id, at=now,
                      data={"seconds": self.extended, "expires_at": record.expires_at})
            )
        marker = session.temp.get("_event")
        if marker:
            await bus.emit(Event(name=marker, key=self.ks, session_id=record.id, at=now))
        if bus.listening(ev.SESSION_COMMITTED):
            await bus.emit(
                Event(name=ev.SESSION_COMMITTED, key=self.ks, session_id=record.id, at=now,
                      data={"version": record.version})
            )
        else:
            bus.count(ev.SESSION_COMMITTED)

    # -- failure ----------------------------------------------------------------------------

    async def _handler_failed(self, exc: Exception) -> bool:
        """Record the error with a small commit of its own, reset after too many in a row."""
        m = self.manager
        if isinstance(exc, ConflictError):
            await self._release_quietly()
            return False
        now = m.clock.now()
        reset = False
        try:
            record = await m.store.load(self.ks)
            if record is not None and record.status is Status.ACTIVE:
                expected = record.version
                counters = record.counters
                counters.errors += 1
                counters.consecutive_errors += 1
                record.last_error = f"{type(exc).__name__}: {exc}"[:500]
                record.last_error_at = now
                if counters.consecutive_errors >= m.max_consecutive_errors:
                    Session(record, key=self.key, manager=m).reset()
                    reset = True
                record.version = expected + 1
                await m.store.commit(
                    record, expected=expected, lease=self.lease, release=self.lease is not None
                )
                self.lease = None
        except Exception:
            log.exception("could not record the handler error of session %s", self.ks)
        finally:
            await self._release_quietly()
        await m.events.emit(
            Event(name=ev.SESSION_ERROR, key=self.ks, session_id=self.session.id, at=now,
                  data={"error": repr(exc)[:500]})
        )
        if reset:
            await m.events.emit(
                Event(name=ev.SESSION_RESET, key=self.ks, session_id=self.session.id, at=now,
                      data={"reason": "errors", "errors": m.max_consecutive_errors})
            )
        if m.on_error is not None:
            handled = m.on_error(self.session, exc)
            if inspect.isawaitable(handled):
                handled = await handled
            return bool(handled)
        return False

    # -- lease upkeep -----------------------------------------------------------------------

    def _start_renewing(self) -> None:
        """Hand the lease to the manager's sweeper (one timer per manager, not one armed and
        cancelled per update)."""
        if self.lease is not None:
            self.manager._hold(self)

    def _renew_soon(self) -> None:
        task = asyncio.ensure_future(self._renew())
        _RENEWALS.add(task)  # keep a reference until it finishes
        task.add_done_callback(_RENEWALS.discard)

    async def _renew(self) -> None:
        lease = self.lease
        if lease is None:
            return
        try:
            renewed = await self.manager.store.renew(lease, self.manager.lease_seconds)
        except Exception:
            log.warning("could not renew the lease of %s", self.ks, exc_info=True)
            renewed = lease
        if renewed is None:
            log.warning("lease of %s was lost while the handler ran", self.ks)
            if self.lease is lease:
                self._stop_renewing()
            return
        if self.lease is lease:
            self.lease = renewed
            self._start_renewing()

    def _stop_renewing(self) -> None:
        self.manager._held.pop(self, None)

    async def _release_quietly(self) -> None:
        self._stop_renewing()
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                await self.manager.store.release(lease)
            except Exception:
                log.warning("could not release the lease of %s", self.ks, exc_info=True)


def _run_after_commit(session: Session) -> None:
    callbacks, session._after_commit = session._after_commit or [], None
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("an on_commit callback of session %s failed", session.key)


def _defaults_factory(defaults: Defaults) -> Callable[[], dict[str, Any]]:
    """Turn the `defaults` argument into a function returning a fresh deep copy each time."""
    if defaults is None:
        return dict
    if isinstance(defaults, type):
        if dataclasses.is_dataclass(defaults):
            return lambda: msgspec.to_builtins(dataclasses.asdict(defaults()))
        return lambda: msgspec.to_builtins(defaults())
    if callable(defaults):
        factory = defaults
        return lambda: dict(factory())
    frozen = msgspec.json.encode(dict(defaults))
    decoder = msgspec.json.Decoder(dict[str, Any])
    return lambda: decoder.decode(frozen)
