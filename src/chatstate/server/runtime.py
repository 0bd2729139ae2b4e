"""What one running app holds: the manager, the bot, flows, memory, metrics, analytics and the
background tasks; and the session operations shared by the v1 and the seed-compatible routes.

Every change to a session goes through `manager.session(key, message=False, create=False)`, the
same lock/lease + compare-and-set path as a user's message, so an operator's change never races
one.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ..engine import SessionManager
from ..errors import ConfigurationError
from ..events import Event, EventBus
from ..flows import Flow, FlowRunner
from ..memory import Memory
from ..model import FlowPosition, HistoryChanges, SessionKey, SessionRecord, Status
from ..session import Session
from .analytics import ActivitySampler, FunnelRecorder
from .bots import Bot
from .metrics import Metrics
from .problems import Problem
from .ratelimit import RateLimiter
from .settings import Settings

log = logging.getLogger("chatstate.server")

CHAT_KEYS_KEPT = 10_000

FlowsArg = FlowRunner | Mapping[str, Flow] | Iterable[Flow] | None


def flows_by_name(flows: FlowsArg) -> dict[str, Flow]:
    if flows is None:
        return {}
    if isinstance(flows, FlowRunner):
        return dict(flows.flows)
    if isinstance(flows, Mapping):
        return {f.name: f for f in flows.values()}
    return {f.name: f for f in flows}


class EventHub:
    """Fans the manager's events out to server-sent-event streams (dashboard and web chat).

    It listens to the bus only while some stream is open: with nobody watching, commits build
    no events at all."""

    def __init__(self, bus: EventBus, max_queue: int = 200) -> None:
        self.bus = bus
        self.max_queue = max_queue
        self._all: set[asyncio.Queue[Event]] = set()
        self._by_key: dict[str, set[asyncio.Queue[Event]]] = {}
        self._listening = False
        self.closing = asyncio.Event()

    def _follow(self) -> None:
        wanted = bool(self._all or self._by_key)
        if wanted and not self._listening:
            self.bus.on("*", self.on_event)
        elif not wanted and self._listening:
            self.bus.off("*", self.on_event)
        self._listening = wanted

    def on_event(self, event: Event) -> None:
        targets = list(self._all)
        if event.key is not None:
            targets.extend(self._by_key.get(event.key, ()))
        for queue in targets:
            if queue.qsize() < self.max_queue:  # a slow reader loses events, not memory
                queue.put_nowait(event)

    def subscribe(self, key: str | None = None) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        if key is None:
            self._all.add(queue)
        else:
            self._by_key.setdefault(key, set()).add(queue)
        self._follow()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event], key: str | None = None) -> None:
        if key is None:
            self._all.discard(queue)
        else:
            queues = self._by_key.get(key)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._by_key[key]
        self._follow()


class Runtime:
    def __init__(
        self, settings: Settings, manager: SessionManager, bot: Bot, flows: FlowsArg = None,
        *, lifecycle: Any = None,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.store = manager.store
        self.clock = manager.clock
        self.bot = bot
        self.flows = flows_by_name(flows)
        self.memory = Memory(manager)
        self.metrics = Metrics()
        self.metrics.instrument(self.store)
        self.metrics.watch(manager.events)
        self.funnel = FunnelRecorder(manager)
        self.funnel.watch()
        self.hub = EventHub(manager.events)
        self.limiter = RateLimiter(
            settings.chat_rate_per_minute, settings.chat_burst, self.clock
        )
        self.sampler = ActivitySampler(
            self.store, self.clock, settings.sample_seconds, settings.series_bucket_seconds
        )
        self.lifecycle = lifecycle
        self.ready = False
        self._chat_keys: dict[str, SessionKey] = {}

    def chat_key(self, user_id: str) -> SessionKey:
        """The session key of a chat user (built once per user: building validates it)."""
        key = self._chat_keys.get(user_id)
        if key is None:
            key = SessionKey.user(self.settings.chat_platform, user_id)
            if len(self._chat_keys) >= CHAT_KEYS_KEPT:
                self._chat_keys.clear()  # a cache: rebuilt as users come back
            self._chat_keys[user_id] = key
        return key

    # -- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.manager.open()
        self.sampler.start()
        if self.lifecycle is not None:
            await _call_maybe(self.lifecycle, ("start", "run_in_background"))
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.hub.closing.set()
        await self.sampler.stop()
        if self.lifecycle is not None:
            try:
                await _call_maybe(self.lifecycle, ("stop", "aclose", "close"))
            except Exception:
                log.warning("lifecycle runner did not stop cleanly", exc_info=True)
        await self.memory.aclose()
        await self.manager.aclose()

    # -- resolving sessions -----------------------------------------------------------------

    async def find(self, ref: str) -> SessionRecord:
        """A session by canonical key (current one) or by id; 404 when there is none."""
        if ":" in ref:
            try:
                key = str(SessionKey.parse(ref))
            except ValueError as exc:
                raise Problem(400, str(exc)) from None
            record = await self.store.load(key)
        else:
            if not ref or len(ref) > 64 or not ref.replace("-", "").isalnum():
                raise Problem(
                    400, f"{ref!r} is neither a session key (platform:scope:id) nor a session id"
                )
            record = await self.store.load_by_id(ref)
        if record is None:
            raise Problem(
                404, f"no session {ref!r}; list sessions with GET /v1/sessions",
            )
        return record

    async def is_current(self, record: SessionRecord) -> bool:
        current = await self.store.load(record.key)
        return current is not None and current.id == record.id

    async def change(
        self, ref: str | SessionRecord, fn: Callable[[Session], Any], *,
        if_match: int | None = None,
    ) -> tuple[SessionRecord, Any]:
        """Run `fn` on the active session `ref` through the engine and commit it."""
        record = ref if isinstance(ref, SessionRecord) else await self.find(ref)
        if record.status is not Status.ACTIVE:
            raise Problem(
                409, f"session {record.id} is {record.status.value} "
                f"({record.close_reason or 'no reason'}); only active sessions can be changed",
            )
        refused: Problem | None = None
        result: Any = None
        try:
            async with self.manager.session(record.key, message=False, create=False) as s:
                # A refusal must leave the block normally: an exception escaping it would be
                # recorded as a handler error on the session (and bump its version).
                saved = copy.deepcopy(s.record)
                try:
                    if s.id != record.id:
                        raise Problem(
                            409, f"session {record.id} was replaced by session {s.id} at this "
                            "key; reload it",
                        )
                    if if_match is not None and s.version != if_match:
                        raise Problem(
                            412, f"session {record.id} is at version {s.version}, not "
                            f"{if_match}; reload it and apply your change again",
                            current_version=s.version,
                        )
                    result = fn(s)
                    if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                        result = await result
                except Problem as problem:
                    refused = problem
                    s.record = saved  # nothing changed: the engine writes nothing
                    s.history = HistoryChanges()
                out = s.record
        except LookupError:
            raise Problem(
                409, f"session {record.id} ended before the change could be applied"
            ) from None
        if refused is not None:
            raise refused
        return out, result

    # -- flows ------------------------------------------------------------------------------

    def flow_position(self, s: Session, flow_name: str, step: str | None) -> FlowPosition:
        """Validate a move and return the new position (same flow keeps its answers)."""
        if not self.flows:
            raise Problem(
                400, "no flows are registered on this server, so a session cannot be moved; "
                "pass flows to create_app(...) or set CHATSTATE_FLOWS=module:attribute",
            )
        flow = self.flows.get(flow_name)
        if flow is None:
            raise Problem(
                400, f"no flow called {flow_name!r}; known flows: {', '.join(sorted(self.flows))}"
            )
        states = flow.states()
        target = step or flow.initial_step()
        if target not in states:
            raise Problem(
                400, f"flow {flow_name!r} has no step {target!r}; its steps: {', '.join(states)}"
            )
        now = self.clock.now()
        old = s.flow
        if old is not None and old.name == flow_name:
            stack = [*old.stack, old.step] if old.step and old.step != target else list(old.stack)
            return FlowPosition(
                name=flow_name, version=flow.version, step=target, stack=stack[-20:],
                entered_at=now, data=dict(old.data), parent=old.parent,
            )
        return FlowPosition(name=flow_name, version=flow.version, step=target, entered_at=now)


async def _call_maybe(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        method = getattr(obj, name, None)
        if callable(method):
            result = method()
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                await result
            return
    raise ConfigurationError(f"{type(obj).__name__} has none of the methods {names}")
