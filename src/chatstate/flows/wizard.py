"""Wizards: a list of steps, each asking one question and filling one field.

    order = Wizard("order", [
        Step("product", "What product do you want?", choices=["Apple", "Banana", "Orange"]),
        Step("quantity", lambda d: f"How many {d['product']}?", validate=integer(1, 100)),
        Step("address", "Delivery address?", validate=length(10)),
    ], confirm=True, on_complete=lambda data: f"Order placed: {data}")

A step has a prompt (text or a function of the answers so far), a validator, a transform, the
field it fills, choices (shown as buttons and matched with "did you mean"), `optional` (the user
may /skip it), `when` (ask only if a condition on earlier answers holds), `depends_on` (forget
this answer when an earlier one it depends on is edited), and its own `max_attempts` and
`on_exhausted`. With `confirm`, a last step shows every answer with Confirm, Edit and Cancel
buttons; editing an answer comes back to the confirmation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FlowError
from ..model import Button
from .base import (
    Edge,
    Flow,
    FlowContext,
    FlowTimeouts,
    OnExhausted,
    call_flexible,
)
from .validators import Choice, Validation, as_validator, describe, run_validator

CONFIRM = "confirm"
EDITING = "_editing"  # set in the answers while the user edits one from the confirmation
YES_WORDS = frozenset({"yes", "y", "ok", "confirm", "si", "sim", "yes please", "correct"})
NO_WORDS = frozenset({"no", "n", "nao", "cancel"})

Prompt = str | Callable[..., Any]
Choices = Sequence[str] | Mapping[str, Any] | Callable[..., Any]


@dataclass
class Step:
    name: str
    prompt: Prompt
    field: str | None = None  # defaults to the step's name
    validate: Callable[..., Any] | None = None
    transform: Callable[[Any], Any] | None = None
    choices: Choices | None = None
    optional: bool = False
    when: Callable[[dict[str, Any]], bool] | None = None
    depends_on: tuple[str, ...] = ()
    max_attempts: int | None = None
    on_exhausted: OnExhausted | str | None = None
    help: str | None = None
    label: str | None = None  # how the field is named on the confirmation
    columns: int = 2  # buttons per row
    empty_message: str = "There is nothing to choose from right now."

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name == CONFIRM:
            raise FlowError(f"step name {self.name!r} is reserved or contains '/'")
        self.field = self.field or self.name
        if self.field.startswith("_"):
            raise FlowError(f"field {self.field!r}: names starting with '_' are reserved")
        if self.on_exhausted is not None:
            self.on_exhausted = OnExhausted(self.on_exhausted)
        if self.choices is not None and self.validate is not None:
            raise FlowError(f"step {self.name!r}: give choices or a validator, not both (the "
                            "choices are the validation)")
        self._validator = as_validator(self.validate) if self.validate is not None else None

    @property
    def key(self) -> str:
        assert self.field is not None
        return self.field

    async def options(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """The choices for this step given the answers so far (shown -> stored value)."""
        if self.choices is None:
            return None
        choices = self.choices
        if callable(choices) and not isinstance(choices, Mapping):
            choices = await call_flexible(choices, data)
        if isinstance(choices, Mapping):
            return {str(k): v for k, v in choices.items()}
        return {str(c): c for c in choices}

    async def check(self, text: str, ctx: FlowContext) -> Validation:
        vctx = ctx.validation_context()
        options = await self.options(ctx.data)
        if options is not None:
            return Choice(options)(text, vctx)
        if self._validator is not None:
            return await run_validator(self._validator, text, vctx)
        return Validation.success(" ".join(text.split()))


class Wizard(Flow):
    def __init__(
        self, name: str, steps: Sequence[Step], *, confirm: bool | Prompt = False,
        on_complete: Callable[..., Any] | None = None, version: int = 1, title: str | None = None,
        description: str = "", timeouts: FlowTimeouts | None = None, **settings: Any,
    ) -> None:
        self.configure(
            name=name, version=version, title=title, description=description, timeouts=timeouts,
            on_complete=on_complete, **settings,
        )
        if not steps:
            raise FlowError(f"wizard {name!r} needs at least one step")
        self.steps = list(steps)
        self.by_name = {s.name: s for s in self.steps}
        if len(self.by_name) != len(self.steps):
            raise FlowError(f"wizard {name!r} has two steps with the same name")
        fields = [s.key for s in self.steps]
        if len(set(fields)) != len(fields):
            raise FlowError(f"wizard {name!r} fills the same field twice")
        self.confirm = confirm

    # -- declaration ----------------------------------------------------------------------

    def states(self) -> list[str]:
        return [s.name for s in self.steps] + ([CONFIRM] if self.confirm else [])

    def initial_step(self) -> str:
        return self.steps[0].name

    def help_for(self, step: str) -> str | None:
        if step == CONFIRM:
            return "Press Confirm to finish, Edit to change an answer, or Cancel."
        found = self.by_name.get(step)
        if found is None:
            return None
        if found.help:
            return found.help
        if found.choices is not None and not callable(found.choices):
            return "Choose one of the buttons, or type its name."
        if found._validator is not None:
            return f"Expected: {describe(found.validate)}."
        return None

    def skippable(self, step: str) -> bool:
        found = self.by_name.get(step)
        return found is not None and found.optional

    def max_attempts_for(self, step: str) -> int | None:
        found = self.by_name.get(step)
        if found is not None and found.max_attempts is not None:
            return found.max_attempts
        return self.max_attempts

    def on_exhausted_for(self, step: str) -> OnExhausted:
        found = self.by_name.get(step)
        if found is not None and isinstance(found.on_exhausted, OnExhausted):
            return found.on_exhausted
        return self.on_exhausted

    def edges(self) -> list[Edge]:
        edges: list[Edge] = []
        names = self.states()
        for index, step in enumerate(self.steps):
            after = names[index + 1] if index + 1 < len(names) else None
            label = describe(step.validate) if step.validate is not None else (
                "choice" if step.choices is not None else "text")
            if step.when is not None:
                label += " (if applicable)"
            edges.append(Edge(step.name, after, label))
            if step.optional and after is not None:
                edges.append(Edge(step.name, after, "/skip"))
        if self.confirm:
            edges.append(Edge(CONFIRM, None, "confirm"))
            for step in self.steps:
                edges.append(Edge(CONFIRM, step.name, f"edit {step.label or step.key}"))
        return edges

    # -- running --------------------------------------------------------------------------

    def _applies(self, step: Step, data: dict[str, Any]) -> bool:
        return step.when is None or bool(step.when(data))

    def _next_after(self, name: str, data: dict[str, Any]) -> str | None:
        index = [s.name for s in self.steps].index(name)
        for step in self.steps[index + 1:]:
            if self._applies(step, data):
                return step.name
        return CONFIRM if self.confirm else None

    def _first_missing(self, data: dict[str, Any]) -> str | None:
        for step in self.steps:
            if self._applies(step, data) and step.key not in data:
                return step.name
        return None

    async def enter(self, ctx: FlowContext, step: str) -> None:
        if step == CONFIRM:
            await self._show_confirmation(ctx)
            return
        current = self.by_name[step]
        if not self._applies(current, ctx.data):  # e.g. after /back into a step that no
            await self._advance(ctx, current)     # longer applies
            return
        text = current.prompt
        if callable(text):
            text = await call_flexible(text, ctx.data, ctx)
        options = await current.options(ctx.data)
        buttons: list[list[Button]] = []
        if options is not None:
            if not options:
                ctx.reply(current.empty_message)
                await self._go_back(ctx)
                return
            labels = list(options)
            per_row = max(1, current.columns)
            buttons = [
                [ctx.button(label, label) for label in labels[i:i + per_row]]
                for i in range(0, len(labels), per_row)
            ]
        ctx.reply(str(text), buttons=buttons)

    async def _go_back(self, ctx: FlowContext) -> None:
        pos = ctx.position
        if pos.stack:
            await ctx.goto(pos.stack.pop(), push=False)
        else:
            await ctx.cancel()

    async def handle(self, ctx: FlowContext, step: str) -> None:
        if step == CONFIRM:
            await self._handle_confirmation(ctx)
            return
        current = self.by_name[step]
        result = await current.check(ctx.text, ctx)
        if not result.ok:
            await ctx.fail(result.error or "Please try again.", result.suggestions)
            return
        value = result.value
        if current.transform is not None:
            value = current.transform(value)
            if inspect.isawaitable(value):
                value = await value
        self._store(ctx.data, current, value)
        ctx.succeed()
        await self._advance(ctx, current)

    def _store(self, data: dict[str, Any], step: Step, value: Any) -> None:
        changed = data.get(step.key, _MISSING) != value
        data[step.key] = value
        if changed:
            self._forget_dependants(data, step.key)

    def _forget_dependants(self, data: dict[str, Any], field: str) -> None:
        for step in self.steps:
            if field in step.depends_on and step.key in data:
                del data[step.key]
                self._forget_dependants(data, step.key)

    async def _advance(self, ctx: FlowContext, current: Step) -> None:
        data = ctx.data
        if data.get(EDITING):
            missing = self._first_missing(data)
            if missing is not None:
                await ctx.goto(missing)
                return
            data.pop(EDITING, None)
            await ctx.goto(CONFIRM)
            return
        following = self._next_after(current.name, data)
        if following is None:
            await ctx.complete()
        else:
            await ctx.goto(following)

    async def skip(self, ctx: FlowContext, step: str) -> bool:
        current = self.by_name.get(step)
        if current is None:
            return False
        self._store(ctx.data, current, None)
        ctx.succeed()
        await self._advance(ctx, current)
        return True

    # -- confirmation ---------------------------------------------------------------------

    async def _show_confirmation(self, ctx: FlowContext) -> None:
        data = ctx.data
        if callable(self.confirm):
            text = str(await call_flexible(self.confirm, data, ctx))
        else:
            lines = ["Please confirm:"]
            for step in self.steps:
                if step.key in data and data[step.key] is not None:
                    lines.append(f"{step.label or step.key.replace('_', ' ').capitalize()}: "
                                 f"{data[step.key]}")
            text = "\n".join(lines)
        edit_buttons = [
            ctx.button(f"✏️ {step.label or step.key.replace('_', ' ')}", f"edit:{step.name}")
            for step in self.steps if self._applies(step, data)
        ]
        buttons = [[ctx.button("✅ Confirm", "yes"), ctx.button("❌ Cancel", "no")]]
        buttons += [edit_buttons[i:i + 3] for i in range(0, len(edit_buttons), 3)]
        ctx.reply(text, buttons=buttons)

    async def _handle_confirmation(self, ctx: FlowContext) -> None:
        from .suggest import fold

        answer = fold(ctx.text)
        if answer in YES_WORDS:
            ctx.succeed()
            await ctx.complete()
            return
        if answer in NO_WORDS:
            await ctx.cancel()
            return
        target = None
        for prefix in ("edit:", "edit ", "change ", "editar ", "cambiar ", "alterar ", "mudar "):
            if answer.startswith(prefix):
                target = self._step_named(answer[len(prefix):].strip())
                break
        if target is not None and self._applies(target, ctx.data):
            ctx.succeed()
            ctx.data[EDITING] = True
            await ctx.goto(target.name)
            return
        await ctx.fail('Please press "Confirm", "Cancel", or an "Edit" button (or type "edit '
                       '<field>").')

    def _step_named(self, word: str) -> Step | None:
        from .suggest import fold

        for step in self.steps:
            names = {fold(step.name), fold(step.key), fold(step.label or "")}
            if word in names:
                return step
        return None


class _Missing:
    pass


_MISSING = _Missing()
