"""The lifecycle runner: warnings, expiries, closing notifications, restore after restart and
purging, driven by the store's due index instead of in-process timers.

    lifecycle = Lifecycle(manager, on_warning=warn, on_expire=expired, on_close=closed)
    async with lifecycle:          # background task: claims due timers until stopped
        await bot.run()

or as its own process: ``chatstate worker`` (`run_worker`). Tests drive it with a `FakeClock`
and ``await lifecycle.run_once()``.

How a due timer is handled. The runner claims due "warn", "expire" and "purge" entries in batches
(`Store.claim_due`, which hides a claimed entry from other runners for `claim_seconds`) and runs
each through the same lock / lease / load / commit path as a user's update. Inside it re-checks
the record: a message that landed first moved the deadline, and then nothing happens. Several
runners (threads, processes, machines) can therefore share one store.

Delivery guarantees. Hooks are called *before* the transition is committed, so a runner that
dies between the two leaves the entry claimed, another runner picks it up after `claim_seconds`
and calls the hook again: delivery is **at least once**. Every call carries a `Due` whose `id`
(``"<session id>:<kind>:<original due time>"``) is identical across such repeats; a hook that
must not notify twice keeps the ids it has handled. Apart from crashes, each warning and each
expiry fires exactly once across any number of runners. A failing hook is logged and counted
(``hook_errors``); the transition still happens.

Expiry that races a message. When a user writes after the deadline but before a runner got to
it, the engine ends the old session itself (``session.closed`` with ``late=True``) and the
message starts a new one; the old session never accepts the message. A `Lifecycle` attached to
that manager calls `on_expire` and `on_close` for it from that event (at most once: it is
announced after the commit), so attach one, started or not, to every manager that handles
messages. Closes made by handlers (`session.close(reason)`, intents, a completed flow) reach
`on_close` the same way, from the process that committed them.

Restore after restart. On `start()` the runner lists the active sessions that were inside a
flow and active within `restore_window`, and calls `on_restore` once for each: the session is
marked with the activity time it was restored at, so several runners starting together, or a
crash loop, notify a user once per interruption.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import signal
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .engine import SessionManager
from .errors import ChatstateError, ConfigurationError, ConflictError, LockTimeout
from .events import Event
from .model import SessionKey, SessionRecord, Status
from .policy import LifecyclePolicy, lifecycle_data
from .session import Session
from .stores.base import DueItem, SessionFilter

log = logging.getLogger("chatstate.lifecycle")

Hook = Callable[..., Awaitable[Any] | Any]
WARN_SKIPPED = "timeout.warn_skipped"  # a warning came due too late: the session expired first
KINDS = ("expire", "warn", "purge")  # expire first: a session due for both is not warned


@dataclass(frozen=True)
class Due:
    """What a hook learns about the timer that fired.

    `due_at` is the original due time from the record, so a bot can choose not to notify a user
    hours late (`delay`). `id` is stable across redeliveries of the same timer."""

    kind: str  # "warn", "expire" or "restore"
    key: str
    session_id: str
    due_at: float
    fired_at: float
    expires_at: float | None = None  # for a warning: when the session will expire
    message: str | None = None  # the policy's (or flow's) warning / expiry text, if any
    late: bool = False  # True when the engine expired it on the user's next message

    @property
    def id(self) -> str:
        return f"{self.session_id}:{self.kind}:{self.due_at:.6f}"

    @property
    def delay(self) -> float:
        """Seconds between the due time and the hook call."""
        return max(0.0, self.fired_at - self.due_at)

    @property
    def remaining(self) -> float | None:
        """For a warning: seconds left before the session expires."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - self.fired_at)


@dataclass
class RunReport:
    """What one `run_once` did."""

    claimed: int = 0
    warned: int = 0
    expired: int = 0
    purged: int = 0
    skipped: int = 0  # claimed but nothing to do (moved deadline, gone, busy)
    full: bool = False  # some batch was full: more may be due right now

    def __iadd__(self, other: RunReport) -> RunReport:
        self.claimed += other.claimed
        self.warned += other.warned
        self.expired += other.expired
        self.purged += other.purged
        self.skipped += other.skipped
        self.full = self.full or other.full
        return self


@dataclass(frozen=True)
class SessionLine:
    key: str
    session_id: str
    age_seconds: float
    remaining_seconds: float | None
    state: str | None
    flow: str | None


@dataclass(frozen=True)
class LifecycleSummary:
    """Seed 004's statistics block: active sessions and how long each has left."""

    at: float
    active: int
    idle_timeout: float | None
    sessions: list[SessionLine] = field(default_factory=list)

    def lines(self) -> list[str]:
        timeout = (
            "no timeout" if self.idle_timeout is None else f"timeout: {_minutes(self.idle_timeout)}"
        )
        out = [f"active sessions: {self.active} ({timeout})"]
        for line in self.sessions:
            left = (
                "no expiry" if line.remaining_seconds is None
                else f"expires in {_minutes(line.remaining_seconds)}"
            )
            where = f" [{line.flow}]" if line.flow else ""
            out.append(f"  - {line.key}{where}: active for {_minutes(line.age_seconds)}, {left}")
        return out


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}min" if seconds >= 60 else f"{int(seconds)}s"


class _Hook:
    """A user hook called with as many of the offered arguments as it accepts."""

    __slots__ = ("arity", "fn")

    def __init__(self, fn: Hook) -> None:
        if not callable(fn):
            raise ConfigurationError(f"lifecycle hook {fn!r} is not callable")
        self.fn = fn
        self.arity = _positional_arity(fn)

    async def __call__(self, *args: Any) -> None:
        result = self.fn(*args[: self.arity])
        if inspect.isawaitable(result):
            await result


def _positional_arity(fn: Callable[..., Any]) -> int:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return 99
    count = 0
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            return 99
        if param.kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            count += 1
    return count


class Lifecycle:
    """Runs the due timers of `manager`'s store and calls the hooks.

    Hooks (sync or async; each may take fewer arguments than offered):
      on_warning(session, due)         the session will expire at due.expires_at
      on_expire(session, due)          the session expired (status expired, reason "timeout")
      on_close(session, reason, due)   any close: "timeout", "goodbye", "completed", ...
                                       (due is None for closes made by a handler)
      on_restore(session, due)         the service restarted while this session was in a flow

    A hook receives the live session: changes it makes to `session.data` are committed with the
    transition (runner-side hooks only). Hooks must not open the same session through the
    manager (it is held by the runner while they run).
    """

    def __init__(
        self,
        manager: SessionManager,
        *,
        on_warning: Hook | None = None,
        on_expire: Hook | None = None,
        on_close: Hook | None = None,
        on_restore: Hook | None = None,
        batch_size: int = 200,
        concurrency: int = 16,
        poll_interval: float = 0.25,
        claim_seconds: float = 30.0,
        restore: bool = True,
        restore_window: float = 3600.0,
        purge: bool = True,
        summary_interval: float | None = None,
        summary_limit: int = 10,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ConfigurationError("batch_size and concurrency must be at least 1")
        if poll_interval <= 0 or claim_seconds <= 0:
            raise ConfigurationError("poll_interval and claim_seconds must be positive seconds")
        self.manager = manager
        self.on_warning = _Hook(on_warning) if on_warning is not None else None
        self.on_expire = _Hook(on_expire) if on_expire is not None else None
        self.on_close = _Hook(on_close) if on_close is not None else None
        self.on_restore = _Hook(on_restore) if on_restore is not None else None
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.claim_seconds = claim_seconds
        self.restore_enabled = restore
        self.restore_window = restore_window
        self.purge_enabled = purge
        self.summary_interval = summary_interval
        self.summary_limit = summary_limit
        self.counters: Counter[str] = Counter()
        self.lags: deque[float] = deque(maxlen=10_000)  # seconds from due time to hook call
        self._handling: set[str] = set()  # session ids the runner is transitioning right now
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._started_at: float | None = None
        manager.events.on(ev.SESSION_CLOSED, self._on_closed_event)

    @property
    def policy(self) -> LifecyclePolicy:
        return self.manager.policy

    # -- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore interrupted sessions (if enabled), then run in the background."""
        if self._task is not None:
            return
        await self.manager.open()
        self._stopping.clear()
        self._started_at = self.manager.clock.now()
        if self.restore_enabled:
            try:
                await self.restore()
            except ChatstateError:
                log.exception("restoring interrupted sessions failed; continuing without")
        self._task = asyncio.create_task(self._run(), name="chatstate-lifecycle")

    async def stop(self) -> None:
        """Stop claiming, finish the items in hand (their leases are released as they
        commit), and return."""
        self._stopping.set()
        task, self._task = self._task, None
        try:
            if task is not None:
                await task
        finally:
            self._stopping.clear()

    async def __aenter__(self) -> Lifecycle:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def detach(self) -> None:
        """Stop listening to the manager's close events (the runner can no longer be used)."""
        self.manager.events.off(ev.SESSION_CLOSED, self._on_closed_event)

    async def _run(self) -> None:
        clock = self.manager.clock
        next_summary = (
            None if self.summary_interval is None else clock.monotonic() + self.summary_interval
        )
        failures = 0
        while not self._stopping.is_set():
            try:
                report = await self.run_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("lifecycle round failed (%d in a row); retrying", failures)
                report = RunReport()
            if next_summary is not None and clock.monotonic() >= next_summary:
                next_summary = clock.monotonic() + (self.summary_interval or 0.0)
                with contextlib.suppress(Exception):
                    await self.log_summary()
            if report.full and not failures:
                continue  # more is due right now
            wait = self.poll_interval * (min(2 ** failures, 40) if failures else 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def run_once(self, now: float | None = None) -> RunReport:
        """Claim and handle one batch of each kind that is due at `now` (default: the clock)."""
        await self.manager.open()
        total = RunReport()
        for kind in KINDS:
            if self._stopping.is_set():
                break  # shutting down: claim nothing new
            if kind == "purge" and not self.purge_enabled:
                continue
            at = self.manager.clock.now() if now is None else now
            items = await self.manager.store.claim_due(
                kind, at, self.batch_size, claim_seconds=self.claim_seconds
            )
            if not items:
                continue
            report = RunReport(claimed=len(items), full=len(items) >= self.batch_size)
            self.counters["claimed"] += len(items)
            await self._handle_all(items, report)
            total += report
        return total

    async def _handle_all(self, items: list[DueItem], report: RunReport) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: DueItem) -> None:
            async with gate:
                try:
                    done = await self._handle(item)
                except (LookupError, LockTimeout, ConflictError) as exc:
                    # Gone, busy for too long, or changed under us: the claim runs out and the
                    # entry comes back if it is still due.
                    log.debug("lifecycle %s of %s skipped: %s", item.kind, item.key, exc)
                    done = False
                except Exception:
                    log.exception("lifecycle %s of %s failed", item.kind, item.key)
                    self.counters["errors"] += 1
                    done = False
                if not done:
                    report.skipped += 1
                elif item.kind == "warn":
                    report.warned += 1
                elif item.kind == "expire":
                    report.expired += 1
                else:
                    report.purged += 1

        if len(items) == 1:
            await one(items[0])
        else:
            await asyncio.gather(*(one(item) for item in items))

    async def _handle(self, item: DueItem) -> bool:
        if item.kind == "warn":
            return await self._warn(item)
        if item.kind == "expire":
            return await self._expire(item)
        if item.kind == "purge":
            return await self._purge(item)
        raise ValueError(f"unknown due kind {item.kind!r}")

    # -- the transitions --------------------------------------------------------------------

    async def _warn(self, item: DueItem) -> bool:
        try:
            return await self._warn_active(item)
        except LookupError:
            # No active session any more. If it expired before this warning could be given
            # (every runner was late by more than warn_before), say so instead of staying silent.
            record = await self.manager.store.load_by_id(item.session_id)
            if record is not None and record.status is Status.EXPIRED:
                await self._warn_skipped(item, record)
            return False

    async def _warn_skipped(self, item: DueItem, record: SessionRecord) -> None:
        self.counters["warn_skipped"] += 1
        deadline = record.closed_at or record.expires_at
        await self.manager.events.emit(
            Event(name=WARN_SKIPPED, key=item.key, session_id=item.session_id,
                  at=self.manager.clock.now(), data={"deadline": deadline})
        )

    async def _warn_active(self, item: DueItem) -> bool:
        m = self.manager
        skipped: SessionRecord | None = None
        self._handling.add(item.session_id)
        try:
            async with m.session(item.key, message=False, create=False, expire=False) as s:
                record = s.record
                now = m.clock.now()
                if (
                    record.id != item.session_id
                    or record.status is not Status.ACTIVE
                    or record.warn_at is None
                    or record.warn_at > now
                ):
                    return False  # a message moved it (or it was closed): nothing to do
                if record.expires_at is not None and record.expires_at <= now:
                    skipped = record  # too late to warn; the expiry is handled instead
                    return False
                due = Due(
                    kind="warn", key=item.key, session_id=record.id, due_at=record.warn_at,
                    fired_at=now, expires_at=record.expires_at,
                    message=self.policy.effective(record).warning_message,
                )
                self._observe_lag(due)
                if self.on_warning is not None:
                    await self._call(self.on_warning, s, due)
                # Warned once: clearing warn_at removes the entry; the user's next message sets
                # a new one (a new silence gets a new warning).
                record.warn_at = None
        finally:
            self._handling.discard(item.session_id)
            if skipped is not None:
                await self._warn_skipped(item, skipped)
        self.counters["warned"] += 1
        await m.events.emit(
            Event(name=ev.TIMEOUT_WARNED, key=item.key, session_id=due.session_id, at=now,
                  data={"due_at": due.due_at, "expires_at": due.expires_at, "id": due.id})
        )
        await self._emit_lag(due)
        return True

    async def _expire(self, item: DueItem) -> bool:
        m = self.manager
        self._handling.add(item.session_id)
        try:
            async with m.session(item.key, message=False, create=False, expire=False) as s:
                record = s.record
                now = m.clock.now()
                if record.id != item.session_id or not self.policy.is_expired(record, now):
                    return False  # a message moved the deadline first
                due_at = record.expires_at or now
                due = Due(
                    kind="expire", key=item.key, session_id=record.id, due_at=due_at,
                    fired_at=now, message=self.policy.effective(record).expiry_message,
                )
                self._observe_lag(due)
                record.status = Status.EXPIRED
                record.close_reason = "timeout"
                record.closed_at = due_at
                if self.on_expire is not None:
                    await self._call(self.on_expire, s, due)
                if self.on_close is not None:
                    await self._call(self.on_close, s, "timeout", due)
                # The engine's commit clears the timers and sets purge_at (policy.closed).
        finally:
            self._handling.discard(item.session_id)
        self.counters["expired"] += 1
        self.counters["closed:timeout"] += 1
        await m.events.emit(
            Event(name=ev.SESSION_EXPIRED, key=item.key, session_id=due.session_id, at=now,
                  data={"reason": "timeout", "due_at": due_at, "late": False, "id": due.id})
        )
        await self._emit_lag(due)
        return True

    async def _purge(self, item: DueItem) -> bool:
        m = self.manager
        store = m.store
        record = await store.load_by_id(item.session_id)
        now = m.clock.now()
        if (
            record is None
            or record.status is Status.ACTIVE
            or record.purge_at is None
            or record.purge_at > now
        ):
            return False
        # Same serialisation as an update, so a user writing at this very moment either sees
        # the closed session (and carries fields over) or none at all, never half of it.
        await m._lock(record.key)
        try:
            lease = await m._lease(record.key) if store.shared else None
            try:
                deleted = await store.delete(record.key, record.id)
            finally:
                if lease is not None:
                    await store.release(lease)
        finally:
            m._locks.release(record.key)
        if not deleted:
            return False
        self.counters["purged"] += 1
        await m.events.emit(
            Event(name=ev.SESSION_PURGED, key=record.key, session_id=record.id, at=now,
                  data={"status": record.status.value, "purge_at": record.purge_at,
                        "close_reason": record.close_reason})
        )
        return True

    # -- restore after restart --------------------------------------------------------------

    async def restore(self) -> int:
        """Call `on_restore` once for each session interrupted mid-flow; returns how many."""
        m = self.manager
        await m.open()
        now = m.clock.now()
        started = self._started_at if self._started_at is not None else now
        wanted = SessionFilter(status="active", updated_since=now - self.restore_window)
        restored = 0
        cursor: str | None = None
        while True:
            page = await m.store.list(wanted, limit=200, cursor=cursor)
            for record in page.items:
                if _interrupted(record, started) and not _already_restored(record):
                    try:
                        if await self._restore_one(record.key, record.id, started):
                            restored += 1
                    except (LookupError, LockTimeout, ConflictError) as exc:
                        log.info("restore of %s skipped: %s", record.key, exc)
            cursor = page.next_cursor
            if not cursor:
                break
        if restored:
            log.info("restored %d interrupted session(s)", restored)
        return restored

    async def _restore_one(self, key: str, session_id: str, started: float) -> bool:
        m = self.manager
        async with m.session(key, message=False, create=False, expire=False) as s:
            record = s.record
            now = m.clock.now()
            if (
                record.id != session_id
                or self.policy.is_expired(record, now)
                or not _interrupted(record, started)
                or _already_restored(record)
            ):
                return False  # another runner got there first, or it has moved on
            due = Due(
                kind="restore", key=key, session_id=record.id, due_at=record.last_activity,
                fired_at=now, expires_at=record.expires_at,
            )
            if self.on_restore is not None:
                await self._call(self.on_restore, s, due)
            lifecycle_data(record, create=True)["restored"] = record.last_activity
        self.counters["restored"] += 1
        await m.events.emit(
            Event(name=ev.SESSION_RESTORED, key=key, session_id=session_id, at=now,
                  data={"last_activity": due.due_at, "flow": _flow_name(record)})
        )
        return True

    # -- closes announced by the engine -----------------------------------------------------

    async def _on_closed_event(self, event: Event) -> None:
        sid = event.session_id
        if sid is None or sid in self._handling:
            return  # the runner's own transition: it called the hooks already
        late = bool(event.data.get("late"))
        reason = str(event.data.get("reason") or "closed")
        self.counters[f"closed:{reason}"] += 1
        if late:
            self.counters["expired"] += 1
            self.counters["expired_late"] += 1
        wants = self.on_close is not None or (late and self.on_expire is not None)
        if not wants:
            return
        record = await self.manager.store.load_by_id(sid)
        if record is None:
            return
        session = Session(record, key=SessionKey.parse(record.key), manager=self.manager)
        due: Due | None = None
        if late:
            now = self.manager.clock.now()
            due = Due(
                kind="expire", key=record.key, session_id=sid,
                due_at=float(event.data.get("due_at") or now), fired_at=now, late=True,
                message=self.policy.effective(record).expiry_message,
            )
            if self.on_expire is not None:
                await self._call(self.on_expire, session, due)
        if self.on_close is not None:
            await self._call(self.on_close, session, reason, due)

    # -- helpers ----------------------------------------------------------------------------

    async def _call(self, hook: _Hook, *args: Any) -> None:
        try:
            await hook(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.counters["hook_errors"] += 1
            log.exception("lifecycle hook %r failed", hook.fn)

    def _observe_lag(self, due: Due) -> None:
        self.lags.append(due.delay)

    async def _emit_lag(self, due: Due) -> None:
        await self.manager.events.emit(
            Event(name=ev.LIFECYCLE_LAG, key=due.key, session_id=due.session_id,
                  at=due.fired_at, data={"kind": due.kind, "seconds": due.delay})
        )

    def metrics(self) -> dict[str, float]:
        """Counters for a metrics endpoint: transitions, hook errors, lag percentiles."""
        out: dict[str, float] = {name: float(value) for name, value in self.counters.items()}
        lags = sorted(self.lags)
        if lags:
            out["lag_p50_seconds"] = _percentile(lags, 0.50)
            out["lag_p99_seconds"] = _percentile(lags, 0.99)
            out["lag_max_seconds"] = lags[-1]
        return out

    # -- monitoring -------------------------------------------------------------------------

    async def summary(self, limit: int | None = None, scan: int = 1000) -> LifecycleSummary:
        """Active sessions and the `limit` nearest to expiry (among the `scan` most recently
        active; the count itself is exact)."""
        m = self.manager
        await m.open()
        now = m.clock.now()
        wanted = SessionFilter(status="active")
        stats = await m.store.count(wanted)
        page = await m.store.list(wanted, limit=scan)
        records = sorted(
            page.items, key=lambda r: (r.expires_at is None, r.expires_at or 0.0)
        )[: self.summary_limit if limit is None else limit]
        return LifecycleSummary(
            at=now,
            active=stats.by_status.get("active", stats.total),
            idle_timeout=self.policy.idle_timeout,
            sessions=[
                SessionLine(
                    key=r.key, session_id=r.id, age_seconds=max(0.0, now - r.created_at),
                    remaining_seconds=None if r.expires_at is None
                    else max(0.0, r.expires_at - now),
                    state=r.state, flow=_flow_name(r),
                )
                for r in records
            ],
        )

    async def log_summary(self, limit: int | None = None) -> LifecycleSummary:
        summary = await self.summary(limit)
        log.info("\n".join(summary.lines()))
        return summary


def _percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _flow_name(record: SessionRecord) -> str | None:
    return record.flow.name if record.flow is not None else None


def _interrupted(record: SessionRecord, started: float) -> bool:
    """Active inside a flow (or a non-idle state) with its last activity before the start."""
    in_flow = record.flow is not None or record.state not in (None, "", "idle")
    return record.status is Status.ACTIVE and in_flow and record.last_activity <= started


def _already_restored(record: SessionRecord) -> bool:
    return lifecycle_data(record).get("restored") == record.last_activity


# -- the worker process -----------------------------------------------------------------------


def load_hooks(spec: str | object | None) -> dict[str, Any]:
    """Hooks from an object, a mapping, or an import path ``"package.module:attribute"``
    whose attributes or keys are named on_warning, on_expire, on_close, on_restore."""
    if spec is None:
        return {}
    target: Any = spec
    if isinstance(spec, str):
        module_name, _, attribute = spec.partition(":")
        try:
            target = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import hooks module {module_name!r} ({exc}); pass 'package.module' or "
                "'package.module:object' with on_warning/on_expire/on_close/on_restore"
            ) from exc
        if attribute:
            try:
                target = getattr(target, attribute)
            except AttributeError:
                raise ConfigurationError(
                    f"{module_name!r} has no attribute {attribute!r}"
                ) from None
    names = ("on_warning", "on_expire", "on_close", "on_restore")
    if isinstance(target, Mapping):
        found = {n: target[n] for n in names if target.get(n) is not None}
    else:
        found = {n: getattr(target, n) for n in names if getattr(target, n, None) is not None}
    if not found:
        raise ConfigurationError(f"{spec!r} defines none of {', '.join(names)}")
    return found


async def run_worker(
    store_url: str | None = None,
    *,
    policy: LifecyclePolicy | None = None,
    hooks: str | object | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    manager_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Lifecycle:
    """Run a lifecycle runner on its own until SIGTERM/SIGINT (or `stop` is set), then shut
    down gracefully; `ready` is set once it runs (after the restore). `policy` defaults to
    `LifecyclePolicy.from_env()` (it must match the bots': the runner applies its retention to
    the sessions it closes). `options` go to `Lifecycle`. Returns the stopped `Lifecycle`
    (its `counters` tell what it did)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    manager = SessionManager(
        store_url, policy=policy or LifecyclePolicy.from_env(), **dict(manager_options or {})
    )
    try:
        async with manager:
            lifecycle = Lifecycle(manager, **load_hooks(hooks), **options)
            async with lifecycle:
                log.info("lifecycle worker running on %s", store_url or "the default store")
                if ready is not None:
                    ready.set()
                await stop.wait()
                log.info("lifecycle worker stopping: finishing the items in hand")
            return lifecycle
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
