"""Finite-state machines.

`StateMachine` declares states and transitions (with optional guards) the way seed 002's table
does; `can_transition`/`next_state` answer questions about it, and an undeclared transition raises
`TransitionError` without changing anything.

`StateMachineFlow` is the handler-per-state machine (seed 002's ConversationFSM) as a flow: each
state has a prompt and a handler; a handler returns `Next(state=...)` or `Next(event=...)` (or
just the next state's name, or None to stay) plus data to merge. With a `machine`, every move is
checked against the declared transitions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import FlowError, TransitionError
from ..model import Button
from .base import Edge, Flow, FlowContext, FlowTimeouts, Reply, call_flexible

Guard = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class Transition:
    source: str
    event: str
    target: str
    guard: Guard | None = None


class StateMachine:
    """Declared states and transitions. `transitions` maps state -> {event: target}, where a
    target may be a `(target, guard)` pair; guards get the session's data."""

    def __init__(
        self, states: Iterable[str], transitions: Mapping[str, Mapping[str, Any]] | None = None,
        *, initial: str | None = None, final: Iterable[str] = (),
    ) -> None:
        self.states = list(dict.fromkeys(states))
        if not self.states:
            raise FlowError("a state machine needs at least one state")
        self.initial = initial or self.states[0]
        self.final = frozenset(final)
        for state in (self.initial, *self.final):
            self._known(state)
        self._table: dict[str, dict[str, list[Transition]]] = {}
        for source, events in (transitions or {}).items():
            for event, target in events.items():
                if isinstance(target, tuple):
                    self.add(source, event, target[0], guard=target[1])
                else:
                    self.add(source, event, target)

    def _known(self, state: str) -> None:
        if state not in self.states:
            raise TransitionError(f"unknown state {state!r}; declared: {', '.join(self.states)}")

    def add(self, source: str, event: str, target: str, guard: Guard | None = None) -> None:
        """Declare `source --event--> target` (several guarded targets per event are allowed;
        the first whose guard passes wins)."""
        self._known(source)
        self._known(target)
        self._table.setdefault(source, {}).setdefault(event, []).append(
            Transition(source, event, target, guard)
        )

    def transitions(self) -> list[Transition]:
        return [t for events in self._table.values() for ts in events.values() for t in ts]

    def events(self, state: str) -> list[str]:
        """Events accepted in `state`."""
        return list(self._table.get(state, {}))

    def _resolve(self, state: str, event: str, data: Mapping[str, Any]) -> str | None:
        for transition in self._table.get(state, {}).get(event, ()):
            if transition.guard is None or transition.guard(data):
                return transition.target
        return None

    def can_transition(self, state: str, event: str, data: Mapping[str, Any] | None = None) -> bool:
        return state in self.states and self._resolve(state, event, data or {}) is not None

    def next_state(self, state: str, event: str, data: Mapping[str, Any] | None = None) -> str:
        self._known(state)
        target = self._resolve(state, event, data or {})
        if target is None:
            accepted = ", ".join(self.events(state)) or "none"
            raise TransitionError(
                f"no transition from {state!r} on {event!r} (accepted events: {accepted})"
            )
        return target

    def allows(self, source: str, target: str) -> bool:
        """Whether any declared transition goes from `source` to `target`."""
        return any(t.target == target for t in self.transitions() if t.source == source)

    def apply(self, obj: Any, event: str, *, attr: str = "state") -> str:
        """Move `obj.<attr>` (e.g. a Session's state) along `event`; raises and leaves it as
        it was when the transition is not declared."""
        current = getattr(obj, attr) or self.initial
        data = getattr(obj, "data", {}) or {}
        target = self.next_state(current, event, data)
        setattr(obj, attr, target)
        return target


@dataclass
class Next:
    """What a state handler returns: a target state (or an event the machine resolves), data to
    merge into the flow's answers, and replies."""

    state: str | None = None
    event: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    reply: Reply = None


Handler = Callable[..., Any]  # (ctx) -> Next | str | None, sync or async


@dataclass
class _State:
    name: str
    handler: Handler
    prompt: str | Callable[..., Any] | None
    buttons: list[tuple[str, str]]
    help: str | None


class StateMachineFlow(Flow):
    """Handler-per-state conversation. States listed in `machine.final` (e.g. "idle") end the
    flow when a handler moves there."""

    def __init__(
        self, name: str, *, machine: StateMachine | None = None, initial: str | None = None,
        version: int = 1, title: str | None = None, description: str = "",
        timeouts: FlowTimeouts | None = None, on_complete: Callable[..., Any] | None = None,
        **settings: Any,
    ) -> None:
        self.configure(
            name=name, version=version, title=title, description=description, timeouts=timeouts,
            on_complete=on_complete, **settings,
        )
        self.machine = machine
        self._states: dict[str, _State] = {}
        self._initial = initial

    def on(
        self, state: str, handler: Handler, *, prompt: str | Callable[..., Any] | None = None,
        buttons: Iterable[tuple[str, str]] = (), help: str | None = None,
    ) -> StateMachineFlow:
        """Declare `state` with its handler, the prompt shown on entering it and its buttons
        (label, value). Chainable, like seed 002's `.on(...)`."""
        if "/" in state:
            raise FlowError(f"state name {state!r} contains '/'")
        if self.machine is not None:
            self.machine._known(state)
        self._states[state] = _State(state, handler, prompt, list(buttons), help)
        return self

    @property
    def final(self) -> frozenset[str]:
        return self.machine.final if self.machine is not None else frozenset()

    def states(self) -> list[str]:
        return list(self._states)

    def initial_step(self) -> str:
        if self._initial:
            return self._initial
        if not self._states:
            raise FlowError(f"state machine flow {self.name!r} declares no states")
        return next(iter(self._states))

    def help_for(self, step: str) -> str | None:
        state = self._states.get(step)
        return state.help if state else None

    def edges(self) -> list[Edge]:
        if self.machine is None:
            return [Edge(s, None, "") for s in self._states]
        edges = []
        for t in self.machine.transitions():
            if t.source not in self._states:
                continue
            target = None if t.target in self.final or t.target not in self._states else t.target
            edges.append(Edge(t.source, target, t.event + (" [guarded]" if t.guard else "")))
        return edges

    async def enter(self, ctx: FlowContext, step: str) -> None:
        state = self._states[step]
        if state.prompt is None:
            return
        text = state.prompt
        if callable(text):
            text = await call_flexible(text, ctx.data, ctx)
        buttons: list[list[Button]] = (
            [[ctx.button(label, value) for label, value in state.buttons]]
            if state.buttons else []
        )
        ctx.reply(str(text), buttons=buttons)

    async def handle(self, ctx: FlowContext, step: str) -> None:
        state = self._states[step]
        outcome = await call_flexible(state.handler, ctx)
        if outcome is None:
            return  # stay; the handler replied (or called ctx.fail) itself
        if isinstance(outcome, str):
            outcome = Next(state=outcome)
        if not isinstance(outcome, Next):
            raise FlowError(
                f"handler of {step!r} returned {type(outcome).__name__}; return Next, a state "
                "name or None"
            )
        target = self._target(step, outcome, ctx)
        # Only now, with the move known to be declared, change anything.
        ctx.data.update(outcome.data)
        ctx.add(outcome.reply)
        ctx.succeed()
        if target in self.final:
            await ctx.complete()
        elif target != step:
            await ctx.goto(target)
        else:
            await ctx.reprompt()

    def _target(self, step: str, outcome: Next, ctx: FlowContext) -> str:
        machine = self.machine
        if outcome.event is not None:
            if machine is None:
                raise FlowError(f"{self.name!r} has no machine to resolve event {outcome.event!r}")
            merged = {**ctx.data, **outcome.data}
            return machine.next_state(step, outcome.event, merged)
        target = outcome.state or step
        if machine is not None and target != step and not machine.allows(step, target):
            raise TransitionError(f"{self.name!r} declares no transition {step!r} -> {target!r}")
        if target not in self._states and target not in self.final:
            raise TransitionError(f"{self.name!r} has no state {target!r}")
        return target
