"""Structured events: every transition of a session is announced to hooks and to logging.

Hooks are sync or async callables taking an `Event`. A failing hook is logged and never breaks
the update that emitted the event.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

log = logging.getLogger("chatstate.events")

Hook = Callable[["Event"], Awaitable[None] | None]

# The names the library emits. Others may be emitted by bots; any name is accepted.
SESSION_CREATED = "session.created"
SESSION_COMMITTED = "session.committed"
SESSION_RESET = "session.reset"
SESSION_CLEARED = "session.cleared"
SESSION_ERROR = "session.error"
SESSION_QUARANTINED = "session.quarantined"
SESSION_REPAIRED = "session.repaired"
SESSION_EVICTED = "session.evicted"
SESSION_EXTENDED = "session.extended"
SESSION_CLOSED = "session.closed"
SESSION_EXPIRED = "session.expired"
SESSION_RESTORED = "session.restored"
SESSION_PURGED = "session.purged"
TIMEOUT_WARNED = "timeout.warned"
LIFECYCLE_LAG = "lifecycle.lag_seconds"
COMMIT_CONFLICT = "commit.conflict"
LEASE_WAIT = "lease.wait"


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    key: str | None = None
    session_id: str | None = None
    at: float = 0.0
    data: dict[str, Any] = {}


class EventBus:
    """Fan-out of events to hooks registered by name, by prefix ('flow.*') or for all ('*'),
    plus counters of every event (also of those nobody listened to)."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = {}  # name, 'prefix.*' or '*' -> hooks
        self._prefixes: tuple[str, ...] = ()  # 'flow.' for a hook on 'flow.*'
        self.counts: Counter[str] = Counter()

    def on(self, name: str, hook: Hook | None = None) -> Any:
        """Register `hook` for events called `name`, for every event whose name starts with
        `prefix.` ('prefix.*'), or for every event ('*'); usable as decorator."""

        def register(fn: Hook) -> Hook:
            self._hooks.setdefault(name, []).append(fn)
            self._index()
            return fn

        return register(hook) if hook is not None else register

    def off(self, name: str, hook: Hook) -> None:
        hooks = self._hooks.get(name)
        if hooks is not None and hook in hooks:
            hooks.remove(hook)
            if not hooks:  # no empty entries: `listening` stays exact (hot paths rely on it)
                del self._hooks[name]
            self._index()

    def _index(self) -> None:
        self._prefixes = tuple(n[:-1] for n in self._hooks if n.endswith(".*"))

    def listening(self, name: str) -> bool:
        """True when some hook wants `name` (lets hot paths skip building the event)."""
        hooks = self._hooks
        if not hooks:
            return False  # the common case on hot paths: nobody listens to anything
        if name in hooks or "*" in hooks:
            return True
        return any(name.startswith(p) for p in self._prefixes)

    def count(self, name: str) -> None:
        """Count an event nobody listens to without building it."""
        self.counts[name] += 1

    def _hooks_for(self, name: str) -> tuple[Hook, ...]:
        hooks = self._hooks
        found = tuple(hooks.get(name, ()))
        for prefix in self._prefixes:
            if name.startswith(prefix):
                found += tuple(hooks[prefix + "*"])
        return found + tuple(hooks.get("*", ()))

    async def emit(self, event: Event) -> None:
        self.counts[event.name] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s key=%s id=%s %s", event.name, event.key, event.session_id, event.data)
        if not self._hooks:
            return
        for hook in self._hooks_for(event.name):
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event hook %r failed on %s", hook, event.name)

    def emit_nowait(self, event: Event) -> None:
        """Emit from synchronous code (e.g. a store's eviction); async hooks are scheduled."""
        self.counts[event.name] += 1
        if not self._hooks:
            return
        for hook in self._hooks_for(event.name):
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(_log_failure)
            except Exception:
                log.exception("event hook %r failed on %s", hook, event.name)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("event hook failed", exc_info=task.exception())
