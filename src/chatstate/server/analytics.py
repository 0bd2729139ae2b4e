"""Analytics computed by the store (aggregates and counters), never by loading every session.

Three sources:

* `store.stats()` for totals, messages, tokens, durations, platforms, labels (`user_type`,
  `intent`), close reasons and where active sessions are in their flows;
* funnel counters (`funnel:<flow>:<step>:<entered|completed|abandoned|timed_out>` and
  `flow:<flow>:<started|completed|cancelled|...>`) that `FunnelRecorder` adds with `store.incr`
  from the manager's events and from the step changes the server sees;
* a time series of active sessions: `ActivitySampler` adds the current count to
  `series:active:<day>:<bucket>:sum` / `:n` every `sample_seconds`, so several instances sampling
  the same store average instead of adding up. Reading one day is one prefix read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from .. import events as ev
from ..clock import Clock
from ..engine import SessionManager
from ..events import Event
from ..model import FlowPosition, Status
from ..stores.base import SessionFilter, Store

log = logging.getLogger("chatstate.server.analytics")

LABELS = ("user_type", "intent")
SERIES_PREFIX = "series:active:"
Position = tuple[str, str | None] | None


def _part(text: str) -> str:
    # ':' separates counter name parts
    return text.replace(":", "_")


def step_counter(flow: str, step: str | None, what: str) -> str:
    return f"funnel:{_part(flow)}:{_part(step or '*')}:{what}"


class FunnelRecorder:
    """Turns flow and lifecycle events into funnel counters in the store."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self.store = manager.store

    def watch(self) -> None:
        # Only the events it counts: a hook on '*' would make every commit build and await
        # an event.
        events = self.manager.events
        for name in ("flow.*", ev.SESSION_CLOSED, ev.SESSION_EXPIRED):
            events.on(name, self._on_event)

    async def _on_event(self, event: Event) -> None:
        name = event.name
        if name.startswith("flow."):
            flow = event.data.get("flow")
            if not isinstance(flow, str):
                return
            what = name[len("flow."):]
            step = event.data.get("step")
            counters = {f"flow:{_part(flow)}:{_part(what)}": 1}
            if isinstance(step, str):
                counters[step_counter(flow, step, what.replace("step.", ""))] = 1
            await self.store.incr(counters)
        elif name in (ev.SESSION_CLOSED, ev.SESSION_EXPIRED) and event.session_id:
            await self._ended(event)

    async def _ended(self, event: Event) -> None:
        """A session ended inside a flow: it timed out or was abandoned at its step."""
        record = await self.store.load_by_id(event.session_id or "")
        if record is None or record.flow is None:
            return
        reason = event.data.get("reason") or record.close_reason
        what = "timed_out" if record.status is Status.EXPIRED or reason == "timeout" else (
            "abandoned"
        )
        await self.store.incr({step_counter(record.flow.name, record.flow.step, what): 1})

    async def step_changed(self, before: Position, after: Position) -> None:
        """Record a move seen by the server (a chat update or an operator's move)."""
        if before == after:
            return
        counters: dict[str, int] = {}
        if before is not None:
            counters[step_counter(before[0], before[1], "completed")] = 1
        if after is not None:
            counters[step_counter(after[0], after[1], "entered")] = 1
        await self.store.incr(counters)


def position(flow: FlowPosition | None) -> Position:
    """(flow, step) of a position, a snapshot safe from later in-place changes."""
    return None if flow is None else (flow.name, flow.step)


def bucket_of(at: float, width: int) -> tuple[str, int]:
    start = int(at // width * width)
    day = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%d")
    return day, start


class ActivitySampler:
    """Samples the number of active sessions into time-bucketed counters."""

    def __init__(self, store: Store, clock: Clock, every: float, width: int) -> None:
        self.store = store
        self.clock = clock
        self.every = every
        self.width = width
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> int:
        # The bucket is the time the sample was taken, not the time the count came back.
        day, start = bucket_of(self.clock.now(), self.width)
        active = (await self.store.count(SessionFilter(status=Status.ACTIVE.value))).total
        base = f"{SERIES_PREFIX}{day}:{start}"
        await self.store.incr({f"{base}:sum": active, f"{base}:n": 1})
        return active

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("could not sample active sessions", exc_info=True)
            await self.clock.sleep(self.every)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="chatstate-activity-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


async def read_series(store: Store, now: float, hours: float, width: int) -> list[dict[str, Any]]:
    """Average active sessions per bucket over the last `hours`."""
    since = now - hours * 3600
    days = sorted({bucket_of(since, width)[0], bucket_of(now, width)[0]})
    sums: dict[int, list[int]] = {}
    for day in days:
        for name, value in (await store.read_counters(f"{SERIES_PREFIX}{day}:")).items():
            parts = name.rsplit(":", 2)
            if len(parts) != 3:
                continue
            try:
                start = int(parts[1])
            except ValueError:
                continue
            if start < since - width:
                continue
            slot = sums.setdefault(start, [0, 0])
            slot[0 if parts[2] == "sum" else 1] += value
    return [
        {"t": start, "active": round(total / n, 2)}
        for start, (total, n) in sorted(sums.items()) if n
    ]


def _funnel(counters: dict[str, int], active_at: dict[str, int]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(flow: str, step: str) -> dict[str, Any]:
        return rows.setdefault((flow, step), {
            "flow": flow, "step": step, "entered": 0, "completed": 0, "abandoned": 0,
            "timed_out": 0, "active": 0,
        })

    for name, value in counters.items():
        parts = name.split(":")
        if len(parts) != 4:
            continue
        _, flow, step, what = parts
        if what in ("entered", "completed", "abandoned", "timed_out"):
            row(flow, step)[what] += value
    for name, value in active_at.items():
        flow, _, step = name.partition(":")
        row(_part(flow), _part(step or "*"))["active"] = value
    return sorted(rows.values(), key=lambda r: (r["flow"], -r["entered"], r["step"]))


def _flows(counters: dict[str, int]) -> list[dict[str, Any]]:
    flows: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        parts = name.split(":")
        if len(parts) == 3:
            flows.setdefault(parts[1], {})[parts[2]] = value
    return [{"flow": flow, **counts} for flow, counts in sorted(flows.items())]


async def compute(
    store: Store, now: float, *, platform: str | None = None, hours: float = 24.0,
    width: int = 300,
) -> dict[str, Any]:
    """Everything the dashboard and `chatstate stats` show."""
    flt = SessionFilter(platform=platform) if platform else None
    stats = await store.stats(flt, labels=LABELS)
    intents = stats.by_label.get("intent", {})
    return {
        "generated_at": now,
        "totals": {
            "sessions": stats.total,
            "active": stats.by_status.get(Status.ACTIVE.value, 0),
            "closed": stats.by_status.get(Status.CLOSED.value, 0),
            "expired": stats.by_status.get(Status.EXPIRED.value, 0),
        },
        "messages": stats.messages,
        "tokens": stats.tokens,
        "avg_session_seconds": round(stats.avg_duration_seconds, 3),
        "by_platform": stats.by_platform,
        "by_user_type": stats.by_label.get("user_type", {}),
        "top_intents": [
            {"intent": k, "sessions": v}
            for k, v in sorted(intents.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        ],
        "close_reasons": stats.by_close_reason,
        "funnel": _funnel(await store.read_counters("funnel:"), stats.by_flow_step),
        "flows": _flows(await store.read_counters("flow:")),
        "active_series": await read_series(store, now, hours, width),
    }
