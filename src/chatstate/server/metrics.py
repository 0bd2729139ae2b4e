"""Prometheus metrics (text format at /metrics), fed by the manager's events and by timing the
store's calls. Each app has its own registry, so several apps in one process do not collide."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - re-exported
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .. import events as ev
from ..events import Event, EventBus
from ..model import Status
from ..stores.base import Store

# Store calls worth timing (the ones on the path of an update and of the dashboard).
TIMED_OPERATIONS = (
    "load", "load_by_id", "commit", "delete", "list", "count", "stats", "read_tail",
    "read_range", "lease_and_load", "release", "renew", "claim_due", "incr", "read_counters",
)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(
            "chatstate_sessions", "Stored sessions by status (sampled at scrape time)",
            ["status"], registry=r,
        )
        self.updates = Counter(
            "chatstate_session_updates", "Committed session updates", registry=r
        )
        self.conflicts = Counter(
            "chatstate_commit_conflicts", "Commits that lost a compare-and-set race", registry=r
        )
        self.lease_waits = Counter(
            "chatstate_lease_waits", "Updates that had to wait for another holder's lease",
            registry=r,
        )
        self.lease_wait_seconds = Histogram(
            "chatstate_lease_wait_seconds", "Time spent waiting for a lease", buckets=_FAST,
            registry=r,
        )
        self.lifecycle_lag = Gauge(
            "chatstate_lifecycle_lag_seconds",
            "How late the lifecycle runner handled its last due timer", registry=r,
        )
        self.events = Counter(
            "chatstate_events", "Session events by name", ["event"], registry=r
        )
        self.store_seconds = Histogram(
            "chatstate_store_seconds", "Latency of store operations", ["operation"],
            buckets=_FAST, registry=r,
        )
        self.store_errors = Counter(
            "chatstate_store_errors", "Store operations that raised", ["operation"], registry=r
        )
        self.chat_seconds = Histogram(
            "chatstate_chat_seconds", "Time to answer POST /v1/chat", buckets=_FAST, registry=r
        )
        self.chat_requests = Counter(
            "chatstate_chat_requests", "Chat requests by outcome", ["outcome"], registry=r
        )
        # Children used on every chat request, looked up once.
        self.chat_answered = self.chat_requests.labels("answered")
        self.chat_rate_limited = self.chat_requests.labels("rate_limited")
        for status in Status:
            self.sessions.labels(status.value)
        self._buses: list[EventBus] = []
        self._counted: dict[str, int] = {}  # event name -> count already in `events`

    def watch(self, bus: EventBus) -> None:
        """Count `bus`'s events. The counts are read from the bus's own counters at scrape time
        (so no hook runs, and no event is built, on every commit); only the two events that
        carry a measurement have hooks."""
        self._buses.append(bus)
        bus.on(ev.LEASE_WAIT, self._on_lease_wait)
        bus.on(ev.LIFECYCLE_LAG, self._on_lag)

    def _on_lease_wait(self, event: Event) -> None:
        seconds = event.data.get("seconds")
        if isinstance(seconds, int | float):
            self.lease_wait_seconds.observe(seconds)

    def _on_lag(self, event: Event) -> None:
        lag = event.data.get("seconds", event.data.get("lag"))
        if isinstance(lag, int | float):
            self.lifecycle_lag.set(lag)

    def sync(self) -> None:
        """Bring the event counters up to the watched buses' counts."""
        totals: dict[str, int] = {}
        for bus in self._buses:
            for name, count in bus.counts.items():
                totals[name] = totals.get(name, 0) + count
        for name, total in totals.items():
            delta = total - self._counted.get(name, 0)
            if delta <= 0:
                continue
            self._counted[name] = total
            self.events.labels(name).inc(delta)
            if name == ev.SESSION_COMMITTED:
                self.updates.inc(delta)
            elif name == ev.COMMIT_CONFLICT:
                self.conflicts.inc(delta)
            elif name == ev.LEASE_WAIT:
                self.lease_waits.inc(delta)

    def instrument(self, store: Store) -> None:
        """Time the store's calls, by wrapping the bound methods of this instance."""
        if getattr(store, "_chatstate_timed", False):
            return
        for name in TIMED_OPERATIONS:
            method = getattr(store, name, None)
            if method is not None:
                setattr(store, name, self._timed(name, method))
        store._chatstate_timed = True  # type: ignore[attr-defined]

    def _timed(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        histogram = self.store_seconds.labels(name)
        errors = self.store_errors.labels(name)

        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            except Exception:
                errors.inc()
                raise
            finally:
                histogram.observe(time.perf_counter() - start)

        return timed

    async def render(self, store: Store) -> bytes:
        counts = await store.count()
        self.sync()
        for status in Status:
            self.sessions.labels(status.value).set(counts.by_status.get(status.value, 0))
        out: bytes = generate_latest(self.registry)
        return out
