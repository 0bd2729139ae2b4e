"""What every flow shares: the `Flow` base class, `FlowContext` (what a step handler works
with), `FlowResult`, per-flow timeouts and the enums that name a flow's choices.

A flow's position lives in the session (`session.flow`, a `FlowPosition`): name, version, step,
a bounded back stack, the attempt counter and the answers collected so far. The flow object holds
no per-user state, so one flow serves every session and survives restarts.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import FlowError
from ..model import Button, FlowPosition, Incoming, Outgoing
from ..session import Session
from .commands import ALL_ESCAPES, Escape, escape_set
from .validators import ValidationContext

if TYPE_CHECKING:
    from .runner import FlowRunner

log = logging.getLogger("chatstate.flows")

IDLE = "idle"
"""`session.state` of a session that is not inside any flow."""

PAYLOAD_SEP = "/"
MAX_PAYLOAD_BYTES = 64  # Telegram's callback_data limit, the tightest of the platforms
MAX_AUTO_STEPS = 25  # actions that chain into actions: a cycle must not spin forever


@dataclass(frozen=True)
class FlowTimeouts:
    """A flow's own idle timeout and warning (seconds) and expiry message. The lifecycle helper
    reads them from `flow.timeouts` while a session is inside the flow."""

    idle_timeout: float | None = None
    warn_before: float | None = None
    expiry_message: str | None = None

    def __post_init__(self) -> None:
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise FlowError(f"idle_timeout must be positive seconds, got {self.idle_timeout}")
        if self.warn_before is not None and (
            self.warn_before <= 0
            or (self.idle_timeout is not None and self.warn_before >= self.idle_timeout)
        ):
            raise FlowError(
                f"warn_before must be positive and shorter than idle_timeout, got "
                f"{self.warn_before} (idle_timeout {self.idle_timeout})"
            )


class OnExhausted(enum.StrEnum):
    """What happens when a step's attempts run out."""

    CANCEL = "cancel"  # leave the flow with a message (default)
    SKIP = "skip"  # store no answer and go on
    HANDOFF = "handoff"  # leave the flow and ask for a human (FlowRunner(on_handoff=...))


class VersionChange(enum.StrEnum):
    """What a flow does with a session that started on an older version of it."""

    MIGRATE = "migrate"  # call flow.migrate(position, old_version), then handle the input
    RESTART_STEP = "restart_step"  # keep the answers, ask the current step again
    RESTART = "restart"  # start the flow over, saying why


class Finish(enum.StrEnum):
    """Where a completed top-level flow leaves the session."""

    IDLE = "idle"  # back to idle, session stays open
    MENU = "menu"  # back to idle and show the main menu
    CLOSE = "close"  # close the session with reason "completed"


Status = Literal["completed", "cancelled", "exhausted", "handoff"]


@dataclass
class FlowResult:
    """How a flow ended and what it collected (keys starting with '_' are internal and left
    out)."""

    flow: str
    status: Status
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Edge:
    """One arrow of a flow's diagram. `target` None means the flow ends there."""

    source: str
    target: str | None
    label: str = ""


Reply = str | Outgoing | Sequence[str | Outgoing] | None


def as_outgoing(reply: Reply) -> list[Outgoing]:
    if reply is None:
        return []
    if isinstance(reply, str):
        return [Outgoing(text=reply)] if reply else []
    if isinstance(reply, Outgoing):
        return [reply]
    return [o for r in reply for o in as_outgoing(r)]


async def call_flexible(fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn` with as many of `args` as it accepts (so `on_complete(data)` and
    `on_complete(data, ctx)` both work), awaiting the result if needed."""
    try:
        params = inspect.signature(fn).parameters.values()
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            count = len(args)
        else:
            count = sum(
                1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            )
    except (TypeError, ValueError):
        count = len(args)
    result = fn(*args[:count])
    if inspect.isawaitable(result):
        result = await result
    return result


def make_payload(flow: str, version: int, step: str, value: str) -> str:
    """Button payload naming the flow, version and step it belongs to, so a press on a button
    from an older message or an older deploy is recognised instead of misread."""
    payload = f"{flow}@{version}{PAYLOAD_SEP}{step}{PAYLOAD_SEP}{value}"
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        log.warning("button payload %r is over %d bytes (Telegram's callback_data limit); "
                    "use shorter flow, step or option names", payload, MAX_PAYLOAD_BYTES)
    return payload


def parse_payload(payload: str) -> tuple[str, int, str, str] | None:
    head, sep, rest = payload.partition(PAYLOAD_SEP)
    name, at, version = head.partition("@")
    step, sep2, value = rest.partition(PAYLOAD_SEP)
    if not (sep and at and sep2 and name and version.isdigit()):
        return None
    return name, int(version), step, value


def public_data(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not k.startswith("_")}


class Flow:
    """Base class of flows: wizards, graphs and state machines implement the step methods.

    Class-level settings (all overridable per instance through the constructor of a subclass):
    """

    name: str = "flow"
    version: int = 1
    title: str = ""
    description: str = ""
    timeouts: FlowTimeouts | None = None
    escapes: frozenset[Escape] = ALL_ESCAPES
    max_back: int = 10  # back stack bound
    max_attempts: int | None = 3  # default per step; None = unlimited
    on_exhausted: OnExhausted = OnExhausted.CANCEL
    on_version_change: VersionChange = VersionChange.RESTART_STEP
    finish: Finish = Finish.IDLE
    store_as: str | None = None  # copy the answers into session.data[store_as] on completion
    migrate_fn: Callable[[FlowPosition, int], FlowPosition | None] | None = None

    def configure(
        self, *, name: str, version: int = 1, title: str | None = None, description: str = "",
        timeouts: FlowTimeouts | None = None, escapes: Iterable[Escape | str] | None = None,
        max_back: int = 10, max_attempts: int | None = 3,
        on_exhausted: OnExhausted | str = OnExhausted.CANCEL,
        on_version_change: VersionChange | str = VersionChange.RESTART_STEP,
        migrate: Callable[[FlowPosition, int], FlowPosition | None] | None = None,
        finish: Finish | str = Finish.IDLE, store_as: str | None = None,
        on_complete: Callable[..., Any] | None = None,
    ) -> None:
        if not name or PAYLOAD_SEP in name or "@" in name:
            raise FlowError(f"flow name {name!r} must be non-empty without '/' or '@'")
        if version < 1:
            raise FlowError(f"flow version must be >= 1, got {version}")
        if max_back < 0:
            raise FlowError("max_back must be >= 0")
        self.name = name
        self.version = version
        self.title = title or name.replace("_", " ").capitalize()
        self.description = description
        self.timeouts = timeouts
        self.escapes = escape_set(escapes)
        self.max_back = max_back
        self.max_attempts = max_attempts
        self.on_exhausted = OnExhausted(on_exhausted)
        self.on_version_change = VersionChange(on_version_change)
        if self.on_version_change is VersionChange.MIGRATE and migrate is None:
            raise FlowError(f"flow {name!r} migrates on version change but has no migrate=")
        self.migrate_fn = migrate
        self.finish = Finish(finish)
        self.store_as = store_as
        self.on_complete_fn = on_complete

    # -- what subclasses implement --------------------------------------------------------

    def states(self) -> list[str]:
        """Every step name this flow declares."""
        raise NotImplementedError

    def initial_step(self) -> str:
        raise NotImplementedError

    async def enter(self, ctx: FlowContext, step: str) -> None:
        """The session just arrived at `step`: ask its question (or run it, for actions)."""
        raise NotImplementedError

    async def handle(self, ctx: FlowContext, step: str) -> None:
        """Input (ctx.text, ctx.attachments) arrived at `step`."""
        raise NotImplementedError

    def edges(self) -> list[Edge]:
        """The arrows of the diagram."""
        raise NotImplementedError

    # -- optional hooks -------------------------------------------------------------------

    def is_interactive(self, step: str) -> bool:
        """Whether `step` waits for the user (only those go on the back stack)."""
        return True

    def help_for(self, step: str) -> str | None:
        return None

    def skippable(self, step: str) -> bool:
        return False

    def accepts_attachments(self, step: str) -> bool:
        return False

    def max_attempts_for(self, step: str) -> int | None:
        return self.max_attempts

    def on_exhausted_for(self, step: str) -> OnExhausted:
        return self.on_exhausted

    async def skip(self, ctx: FlowContext, step: str) -> bool:
        """Skip `step` (optional step, or attempts exhausted with SKIP). False if impossible."""
        return False

    async def resume(self, ctx: FlowContext, step: str, result: FlowResult) -> None:
        """A sub-flow started at `step` completed with `result`."""
        raise FlowError(f"flow {self.name!r} does not start sub-flows")

    def subflows(self) -> list[Flow]:
        return []

    async def on_complete(self, ctx: FlowContext, result: FlowResult) -> list[Outgoing]:
        if self.on_complete_fn is None:
            return []
        return as_outgoing(await call_flexible(self.on_complete_fn, result.data, ctx))

    def migrate(self, position: FlowPosition, old_version: int) -> FlowPosition | None:
        """Bring a position saved by `old_version` up to date; None means 'cannot'."""
        if self.migrate_fn is None:
            return None
        return self.migrate_fn(position, old_version)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} v{self.version}>"


class FlowContext:
    """What a step handler works with for one update: the input, the flow's answers, and the
    operations that move the session (goto, fail, complete, cancel, start_subflow)."""

    def __init__(
        self, runner: FlowRunner, session: Session, incoming: Incoming, *, now: float,
        language: str, text: str = "",
    ) -> None:
        self.runner = runner
        self.session = session
        self.incoming = incoming
        self.now = now
        self.language = language
        self.text = text  # the answer: typed text, or the value of a button of this step
        self.from_button = False
        self.replies: list[Outgoing] = []
        self.events: list[tuple[str, str]] = []  # (event name, flow) announced after the update
        # (event name, flow, step): step-level funnel events, announced after `events`
        self.step_events: list[tuple[str, str, str]] = []
        self._auto_steps = 0

    # -- reading --------------------------------------------------------------------------

    @property
    def position(self) -> FlowPosition:
        pos = self.session.flow
        if pos is None:
            raise FlowError("the session is not inside a flow")
        return pos

    @property
    def flow(self) -> Flow:
        return self.runner.get_flow(self.position.name)

    @property
    def step(self) -> str:
        return self.position.step or ""

    @property
    def data(self) -> dict[str, Any]:
        """The answers collected by the current flow (stored in the session)."""
        return self.position.data

    @property
    def attachments(self) -> list[Any]:
        return list(self.incoming.attachments)

    def t(self, key: str, **values: Any) -> str:
        return self.runner.text(key, self.language, **values)

    def validation_context(self) -> ValidationContext:
        return ValidationContext(now=self.now, data=self.data, language=self.language)

    # -- replying -------------------------------------------------------------------------

    def reply(self, text: str = "", **fields: Any) -> Outgoing:
        out = Outgoing(text=text, **fields)
        self.replies.append(out)
        return out

    def add(self, reply: Reply) -> None:
        self.replies.extend(as_outgoing(reply))

    def button(self, text: str, value: str, step: str | None = None) -> Button:
        """A button answering `step` (default: the current one) with `value`."""
        flow = self.flow
        return Button(
            text=text, payload=make_payload(flow.name, flow.version, step or self.step, value)
        )

    # -- moving ---------------------------------------------------------------------------

    async def goto(self, step: str, *, push: bool = True) -> None:
        """Move to `step` (remembering the current one for /back) and ask its question."""
        flow = self.flow
        if step not in flow.states():
            raise FlowError(f"flow {flow.name!r} has no step {step!r}; declared: {flow.states()}")
        self._auto_steps += 1
        if self._auto_steps > MAX_AUTO_STEPS:
            raise FlowError(f"flow {flow.name!r} moved {MAX_AUTO_STEPS} times in one update; "
                            "an action probably loops")
        pos = self.position
        if step in pos.stack:
            # Coming round to an earlier step (a "try again" loop, an edit from a confirmation):
            # /back from there goes where it went the first time, and the stack stays short.
            del pos.stack[pos.stack.index(step):]
        elif push and pos.step is not None and pos.step != step and flow.is_interactive(pos.step):
            pos.stack.append(pos.step)
            if len(pos.stack) > flow.max_back:
                del pos.stack[: len(pos.stack) - flow.max_back]
        pos.step = step
        pos.attempts = 0
        pos.entered_at = self.now
        self.session.state = step
        await flow.enter(self, step)

    async def reprompt(self) -> None:
        """Ask the current step's question again (no move, no attempt counted)."""
        await self.flow.enter(self, self.step)

    async def fail(
        self, error: str, suggestions: Sequence[str] = (), *, max_attempts: int | None = None,
        on_exhausted: OnExhausted | None = None,
    ) -> None:
        """The answer was not valid: count the attempt, say so with "attempt n of m", and run
        the step's on_exhausted action when the attempts run out."""
        flow, step, pos = self.flow, self.step, self.position
        limit = max_attempts if max_attempts is not None else flow.max_attempts_for(step)
        pos.attempts += 1
        if limit and pos.attempts >= limit:
            action = on_exhausted or flow.on_exhausted_for(step)
            await self.runner._exhausted(self, error, action)
            return
        text = error
        if limit:
            text = f"{error}\n{self.t('attempt', attempt=pos.attempts, max=limit)}"
        buttons = [[self.button(s, s)] for s in suggestions[:3]]
        self.reply(text, buttons=buttons)

    def succeed(self) -> None:
        """A valid answer: the attempt counter starts again."""
        self.position.attempts = 0

    async def complete(self, message: Reply = None) -> None:
        """The flow is done: hand its answers to on_complete and to the parent flow, if any."""
        await self.runner._complete(self, message)

    async def cancel(self, message: str | None = None) -> None:
        await self.runner._end(self, "cancelled", message)

    async def start_subflow(self, flow: Flow | str) -> None:
        """Run `flow` inside the current one; when it completes, the current flow's
        `resume(step, result)` continues."""
        child = self.runner.get_flow(flow if isinstance(flow, str) else flow.name)
        parent = self.position
        self.session.flow = FlowPosition(
            name=child.name, version=child.version, entered_at=self.now, parent=parent
        )
        await self.goto(child.initial_step(), push=False)


AsyncHandler = Callable[[FlowContext], Awaitable[Any]]
