"""Branching flows: a graph of named nodes.

- `Ask`: a question with buttons, each leading to a node (typed text matching a button's label
  works too, with "did you mean" for near misses).
- `Input`: free text with a validator, stored in a field, then on to `next`.
- `Action`: an async (or sync) function of the answers that returns the name of the next node;
  it runs as soon as the flow arrives there, without waiting for the user.
- `SubFlow`: runs another flow inside this one; its answers come back in `field`.
- `End`: finishes the flow with a message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FlowError
from .base import Edge, Flow, FlowContext, FlowResult, FlowTimeouts, OnExhausted, call_flexible
from .validators import Choice, Validation, as_validator, describe, run_validator


@dataclass
class Option:
    label: str  # shown on the button
    next: str  # node it leads to
    value: str | None = None  # stored in Ask.field, and the button's payload (default: next)

    @property
    def key(self) -> str:
        return self.value if self.value is not None else self.next


@dataclass
class Ask:
    prompt: str | Callable[..., Any]
    options: Sequence[Option] | Mapping[str, str]  # list of Option, or {label: next node}
    field: str | None = None  # store the chosen option's value here
    help: str | None = None
    columns: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.options, Mapping):
            self.items = [Option(label, target) for label, target in self.options.items()]
        else:
            self.items = list(self.options)
        if not self.items:
            raise FlowError("an Ask node needs at least one option")


@dataclass
class Input:
    prompt: str | Callable[..., Any]
    field: str
    next: str
    validate: Callable[..., Any] | None = None
    transform: Callable[[Any], Any] | None = None
    help: str | None = None
    max_attempts: int | None = None
    on_exhausted: OnExhausted | str | None = None

    def __post_init__(self) -> None:
        self._validator = as_validator(self.validate) if self.validate is not None else None


@dataclass
class Action:
    run: Callable[..., Any]  # (data) or (data, ctx) -> name of the next node
    targets: tuple[str, ...] = ()  # the nodes it may choose (checked, and drawn in diagrams)


@dataclass
class SubFlow:
    flow: Flow
    next: str
    field: str | None = None  # where the sub-flow's answers go (default: merged into data)


@dataclass
class End:
    message: str | Callable[..., Any] | None = None


Node = Ask | Input | Action | SubFlow | End


class GraphFlow(Flow):
    def __init__(
        self, name: str, nodes: Mapping[str, Node], *, start: str = "start", version: int = 1,
        title: str | None = None, description: str = "", timeouts: FlowTimeouts | None = None,
        on_complete: Callable[..., Any] | None = None, **settings: Any,
    ) -> None:
        self.configure(
            name=name, version=version, title=title, description=description, timeouts=timeouts,
            on_complete=on_complete, **settings,
        )
        self.nodes = dict(nodes)
        if start not in self.nodes:
            raise FlowError(f"graph {name!r}: start node {start!r} is not declared")
        self.start = start
        self._check()

    def _check(self) -> None:
        for name, node in self.nodes.items():
            if "/" in name:
                raise FlowError(f"graph {self.name!r}: node name {name!r} contains '/'")
            for _, target in self._targets(node):
                if target is not None and target not in self.nodes:
                    raise FlowError(
                        f"graph {self.name!r}: node {name!r} leads to undeclared node {target!r}"
                    )

    @staticmethod
    def _targets(node: Node) -> list[tuple[str, str | None]]:
        if isinstance(node, Ask):
            return [(o.label, o.next) for o in node.items]
        if isinstance(node, Input):
            return [(describe(node.validate) if node.validate else "text", node.next)]
        if isinstance(node, Action):
            return [("", t) for t in node.targets]
        if isinstance(node, SubFlow):
            return [(f"{node.flow.name} done", node.next)]
        return [("", None)]

    # -- declaration ----------------------------------------------------------------------

    def states(self) -> list[str]:
        return list(self.nodes)

    def initial_step(self) -> str:
        return self.start

    def is_interactive(self, step: str) -> bool:
        return isinstance(self.nodes.get(step), (Ask, Input))

    def help_for(self, step: str) -> str | None:
        node = self.nodes.get(step)
        if isinstance(node, Ask):
            return node.help or "Choose one of the buttons."
        if isinstance(node, Input):
            return node.help or (f"Expected: {describe(node.validate)}." if node.validate else None)
        return None

    def max_attempts_for(self, step: str) -> int | None:
        node = self.nodes.get(step)
        if isinstance(node, Input) and node.max_attempts is not None:
            return node.max_attempts
        return self.max_attempts

    def on_exhausted_for(self, step: str) -> OnExhausted:
        node = self.nodes.get(step)
        if isinstance(node, Input) and node.on_exhausted is not None:
            return OnExhausted(node.on_exhausted)
        return self.on_exhausted

    def subflows(self) -> list[Flow]:
        return [n.flow for n in self.nodes.values() if isinstance(n, SubFlow)]

    def edges(self) -> list[Edge]:
        edges = []
        for name, node in self.nodes.items():
            for label, target in self._targets(node):
                edges.append(Edge(name, target, label))
        return edges

    # -- running --------------------------------------------------------------------------

    async def enter(self, ctx: FlowContext, step: str) -> None:
        node = self.nodes[step]
        if isinstance(node, (Ask, Input)):
            text = node.prompt
            if callable(text):
                text = await call_flexible(text, ctx.data, ctx)
            buttons = []
            if isinstance(node, Ask):
                options = node.items
                per_row = max(1, node.columns)
                buttons = [
                    [ctx.button(o.label, o.key) for o in options[i:i + per_row]]
                    for i in range(0, len(options), per_row)
                ]
            ctx.reply(str(text), buttons=buttons)
        elif isinstance(node, Action):
            target = await call_flexible(node.run, ctx.data, ctx)
            if not isinstance(target, str) or target not in self.nodes:
                raise FlowError(f"action {step!r} of {self.name!r} chose {target!r}, which is "
                                "not a node of the graph")
            if node.targets and target not in node.targets:
                raise FlowError(f"action {step!r} chose {target!r} outside its targets "
                                f"{node.targets}")
            await ctx.goto(target)
        elif isinstance(node, SubFlow):
            await ctx.start_subflow(node.flow)
        else:
            message = node.message
            if callable(message):
                message = await call_flexible(message, ctx.data, ctx)
            await ctx.complete(message)

    async def handle(self, ctx: FlowContext, step: str) -> None:
        node = self.nodes[step]
        if isinstance(node, Ask):
            options = node.items
            by_label = {o.label: o for o in options}
            chosen = next((o for o in options if ctx.from_button and o.key == ctx.text), None)
            if chosen is None:
                result = Choice(list(by_label))(ctx.text, ctx.validation_context())
                if not result.ok:
                    await ctx.fail(result.error or "Please choose a button.", result.suggestions)
                    return
                chosen = by_label[result.value]
            if node.field:
                ctx.data[node.field] = chosen.key
            ctx.succeed()
            await ctx.goto(chosen.next)
        elif isinstance(node, Input):
            result = Validation.success(" ".join(ctx.text.split()))
            if node._validator is not None:
                result = await run_validator(node._validator, ctx.text, ctx.validation_context())
            if not result.ok:
                await ctx.fail(result.error or "Please try again.", result.suggestions)
                return
            value = result.value
            if node.transform is not None:
                value = node.transform(value)
            ctx.data[node.field] = value
            ctx.succeed()
            await ctx.goto(node.next)
        else:  # the session rests only on interactive nodes; re-run anything else
            await self.enter(ctx, step)

    async def resume(self, ctx: FlowContext, step: str, result: FlowResult) -> None:
        node = self.nodes.get(step)
        if not isinstance(node, SubFlow):
            raise FlowError(f"{self.name!r} resumed at {step!r}, which starts no sub-flow")
        if node.field:
            ctx.data[node.field] = result.data
        else:
            ctx.data.update(result.data)
        await ctx.goto(node.next)
