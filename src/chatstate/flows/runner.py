"""`FlowRunner`: the one driver of flows inside a session.

    runner = FlowRunner(flows={"register": registration, "order": order_wizard})
    async with manager.session(key) as s:
        replies = await runner.handle(s, Incoming.from_text("/register"))

For each update it normalises the input, runs escape commands first (/cancel, /back, /help,
/start, /reset, /skip and their aliases), checks the flow version and button payloads, then hands
the answer to the current step. A step that raises leaves the session as it was before the update
and the user gets an apology instead of silence; nothing raises out of `handle` except
cancellation.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ..clock import Clock, SystemClock
from ..errors import FlowError
from ..events import Event
from ..model import Button, FlowPosition, Incoming, Outgoing
from ..session import Session
from .base import (
    IDLE,
    Finish,
    Flow,
    FlowContext,
    FlowResult,
    FlowTimeouts,
    OnExhausted,
    Reply,
    Status,
    VersionChange,
    as_outgoing,
    call_flexible,
    parse_payload,
    public_data,
)
from .commands import ESCAPE_HELP, TEXTS, Commands, Escape, language_of
from .suggest import clip, fold

log = logging.getLogger("chatstate.flows")

MENU_PREFIX = "menu/"  # payload of a main-menu button: "menu/<command>"
ResultHook = Callable[[Session, FlowResult], Awaitable[None] | None]


class FlowRunner:
    """Dispatches updates to flows. `flows` maps the command that starts a flow to the flow
    (or is an iterable of flows, each started by its name). Sub-flows used by graph nodes are
    registered automatically."""

    def __init__(
        self,
        flows: Mapping[str, Flow] | Iterable[Flow],
        *,
        main_menu: str | None = None,
        commands: Commands | None = None,
        texts: Mapping[str, Mapping[str, str]] | None = None,
        on_result: ResultHook | None = None,
        on_handoff: ResultHook | None = None,
        max_text_length: int = 4096,
        clock: Clock | None = None,
    ) -> None:
        triggers = dict(flows) if isinstance(flows, Mapping) else {f.name: f for f in flows}
        self.triggers: dict[str, Flow] = {}
        for command, flow in triggers.items():
            word = fold(command).lstrip("/")
            if not word or not word.replace("_", "").isalnum():
                raise FlowError(f"command {command!r} must be letters, digits or '_'")
            self.triggers[word] = flow
        self.flows: dict[str, Flow] = {}
        for flow in self.triggers.values():
            self._register(flow)
        self.commands = commands or Commands()
        for word in self.triggers:
            if self.commands.match(Incoming(command=word)) is not None:
                raise FlowError(f"/{word} starts a flow but is also an escape command alias")
        self.main_menu = main_menu
        self._texts: dict[str, dict[str, str]] = {k: dict(v) for k, v in TEXTS.items()}
        for language, overrides in (texts or {}).items():
            self._texts.setdefault(language, dict(TEXTS["en"])).update(overrides)
        self.on_result = on_result
        self.on_handoff = on_handoff
        self.max_text_length = max_text_length
        self.clock = clock or SystemClock()

    def _register(self, flow: Flow) -> None:
        known = self.flows.get(flow.name)
        if known is not None and known is not flow:
            raise FlowError(f"two different flows are called {flow.name!r}")
        self.flows[flow.name] = flow
        for child in flow.subflows():
            self._register(child)

    # -- lookups --------------------------------------------------------------------------

    def get_flow(self, name: str) -> Flow:
        try:
            return self.flows[name]
        except KeyError:
            raise FlowError(f"no flow called {name!r}; known: {sorted(self.flows)}") from None

    def text(self, key: str, language: str = "en", **values: Any) -> str:
        table = self._texts.get(language) or self._texts["en"]
        template = table.get(key) or self._texts["en"][key]
        return template.format(**values)

    def timeouts_for(self, position: FlowPosition | None) -> FlowTimeouts | None:
        """The timeouts in force at `position` (a record's `flow`): those of the innermost flow
        that declares some, so a sub-flow without its own inherits its parent's."""
        while position is not None:
            flow = self.flows.get(position.name)
            if flow is not None and flow.timeouts is not None:
                return flow.timeouts
            position = position.parent
        return None

    def is_declared(self, session: Session) -> bool:
        """Whether the session is idle or at a step its flow declares (the invariant that tests
        and the dashboard check)."""
        pos = session.flow
        if pos is None:
            return session.state in (IDLE, None)
        flow = self.flows.get(pos.name)
        return flow is not None and pos.step in flow.states() and session.state == pos.step

    # -- entry points ---------------------------------------------------------------------

    async def handle(self, session: Session, incoming: Incoming) -> list[Outgoing]:
        """Handle one update and return the replies to send."""
        ctx = self._context(session, incoming)
        saved = copy.deepcopy(session.record)
        try:
            before = _where(session.flow)
            await self._dispatch(ctx)
            self._step_events(ctx, before, _where(session.flow))
            await self._emit_all(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("flow step failed for %s", session.key)
            self._restore(session, saved)
            session.record.counters.errors += 1
            session.record.last_error = f"{type(exc).__name__}: {exc}"[:500]
            session.record.last_error_at = ctx.now
            ctx.replies = [Outgoing(text=ctx.t("error"))]
            if self.commands.match(incoming) in (Escape.CANCEL, Escape.START, Escape.RESET):
                # Leaving must work even when a hook of the flow being left is broken.
                self._leave(session)
                ctx.replies = [Outgoing(text=ctx.t("error"), remove_keyboard=True),
                               self.menu(ctx.language)]
        if session.flow is None and session.state is None:
            session.state = IDLE
        return ctx.replies

    async def start(
        self, session: Session, name: str, incoming: Incoming | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> list[Outgoing]:
        """Start flow `name` (leaving any current one) and return its first question."""
        ctx = self._context(session, incoming or Incoming())
        await self._start(ctx, self.get_flow(name), data)
        return ctx.replies

    def menu(self, language: str = "en") -> Outgoing:
        """The main menu: one button per flow that has a command."""
        buttons = [
            [Button(text=flow.title, payload=f"{MENU_PREFIX}{command}")]
            for command, flow in self.triggers.items()
        ]
        return Outgoing(text=self.main_menu or self.text("menu", language), buttons=buttons)

    # -- internals ------------------------------------------------------------------------

    def _context(self, session: Session, incoming: Incoming) -> FlowContext:
        manager = session.manager
        now = manager.clock.now() if manager is not None else self.clock.now()
        return FlowContext(
            self, session, incoming, now=now, language=language_of(incoming, self._texts),
        )

    @staticmethod
    def _restore(session: Session, saved: Any) -> None:
        record = session.record
        for name in record.__struct_fields__:
            setattr(record, name, getattr(saved, name))
        session.temp.clear()

    async def _dispatch(self, ctx: FlowContext) -> None:
        incoming = ctx.incoming
        session = ctx.session
        pos = session.flow
        flow = self._current_flow(ctx)
        if pos is not None and flow is None:
            return  # the flow is gone; _current_flow said so and left the session idle

        # Escapes come first so that no step can swallow them. One the current flow turns off
        # is an unknown command when typed with a slash, and ordinary input as a bare word.
        escape = self.commands.match(incoming)
        if escape is not None and (flow is None or escape in flow.escapes):
            await self._escape(ctx, escape, flow)
            return
        if flow is None:
            await self._idle(ctx)
            return
        if not await self._check_version(ctx, flow):
            return
        if incoming.command:
            await self._command_in_flow(ctx, flow)
            return
        if incoming.payload is not None:
            if not await self._accept_payload(ctx, flow):
                return
        elif not await self._accept_text(ctx, flow):
            return
        await flow.handle(ctx, ctx.step)

    def _current_flow(self, ctx: FlowContext) -> Flow | None:
        pos = ctx.session.flow
        if pos is None:
            return None
        chain: list[FlowPosition] = []
        node: FlowPosition | None = pos
        while node is not None:
            chain.append(node)
            node = node.parent
        missing = [p.name for p in chain if p.name not in self.flows]
        if missing:
            title = missing[0].replace("_", " ").capitalize()
            self._leave(ctx.session)
            ctx.reply(ctx.t("flow_gone", flow=title), remove_keyboard=True)
            ctx.replies.append(self.menu(ctx.language))
            return None
        return self.flows[pos.name]

    # -- idle -----------------------------------------------------------------------------

    async def _idle(self, ctx: FlowContext) -> None:
        incoming = ctx.incoming
        flow: Flow | None = None
        if incoming.command:
            flow = self.triggers.get(fold(incoming.command))
            if flow is None:
                ctx.reply(ctx.t("unknown_command", command=clip(incoming.command, 30)))
        elif incoming.payload is not None:
            if incoming.payload.startswith(MENU_PREFIX):
                flow = self.triggers.get(incoming.payload[len(MENU_PREFIX):])
            if flow is None:
                ctx.reply(ctx.t("unknown_button"))
        elif incoming.text:
            word = fold(incoming.text)
            flow = self.triggers.get(word) or next(
                (f for f in self.triggers.values() if fold(f.title) == word), None
            )
        if flow is not None:
            await self._start(ctx, flow)
            return
        self._fallback(ctx)

    def _fallback(self, ctx: FlowContext) -> None:
        lines = [ctx.t("fallback"), ""]
        for command, flow in self.triggers.items():
            lines.append(f"/{command} - {flow.title}")
        lines.append("/help")
        menu = self.menu(ctx.language)
        ctx.reply("\n".join(lines), buttons=menu.buttons)

    async def _start(
        self, ctx: FlowContext, flow: Flow, data: Mapping[str, Any] | None = None
    ) -> None:
        ctx.session.flow = FlowPosition(
            name=flow.name, version=flow.version, entered_at=ctx.now, data=dict(data or {})
        )
        await self._emit(ctx, "flow.started", flow.name)
        await ctx.goto(flow.initial_step(), push=False)

    # -- escapes --------------------------------------------------------------------------

    async def _escape(self, ctx: FlowContext, escape: Escape, flow: Flow | None) -> None:
        if escape is Escape.CANCEL:
            if flow is None:
                ctx.reply(ctx.t("nothing_to_cancel"), remove_keyboard=True)
                ctx.replies.append(self.menu(ctx.language))
            else:
                await self._end(ctx, "cancelled", None)
        elif escape is Escape.START:
            if flow is not None:
                await self._end(ctx, "cancelled", None, quiet=True)
            target = self.triggers.get(fold(ctx.incoming.args[0])) if ctx.incoming.args else None
            if target is not None:  # deep link: "/start book"
                await self._start(ctx, target)
            else:
                menu = self.menu(ctx.language)
                menu.remove_keyboard = True
                ctx.replies.append(menu)
        elif escape is Escape.RESET:
            if flow is not None:
                await self._emit(ctx, "flow.cancelled", flow.name)
            ctx.session.reset()
            ctx.session.state = IDLE
            ctx.reply(ctx.t("reset"), remove_keyboard=True)
        elif escape is Escape.HELP:
            self._help(ctx, flow)
            if flow is not None:
                await ctx.reprompt()
        elif flow is None:  # /back or /skip outside a flow
            self._fallback(ctx)
        elif escape is Escape.BACK:
            await self._back(ctx)
        else:
            await self._skip(ctx, flow)

    def _available(self, ctx: FlowContext, flow: Flow | None) -> str:
        table = ESCAPE_HELP.get(ctx.language, ESCAPE_HELP["en"])
        if flow is None:
            wanted = [Escape.START, Escape.HELP, Escape.RESET]
        else:
            wanted = [e for e in (Escape.CANCEL, Escape.BACK, Escape.HELP, Escape.START,
                                  Escape.RESET) if e in flow.escapes]
            if flow.skippable(ctx.step) and Escape.SKIP in flow.escapes:
                wanted.append(Escape.SKIP)
            if Escape.BACK in wanted and not ctx.position.stack:
                wanted.remove(Escape.BACK)
        return ", ".join(table[e] for e in wanted)

    def _help(self, ctx: FlowContext, flow: Flow | None) -> None:
        if flow is None:
            self._fallback(ctx)
            return
        parts = [ctx.t("help_header", flow=flow.title, step=ctx.step.replace("_", " "))]
        step_help = flow.help_for(ctx.step)
        if step_help:
            parts.append(step_help)
        parts.append(ctx.t("help_commands", commands=self._available(ctx, flow)))
        ctx.reply("\n".join(parts))

    async def _back(self, ctx: FlowContext) -> None:
        args = ctx.incoming.args
        steps = 1
        if args:
            if not args[0].isdigit() or len(args[0]) > 6 or int(args[0]) < 1:
                ctx.reply(ctx.t("back_bad_arg"))
                return
            steps = int(args[0])
        session = ctx.session
        pos = ctx.position
        if not pos.stack and pos.parent is not None and pos.parent.stack:
            # /back on the first step of a sub-flow returns to the parent's previous step
            session.flow = pos.parent
            pos = session.flow
        if not pos.stack:
            ctx.reply(ctx.t("back_none"))
            await ctx.reprompt()
            return
        target = pos.stack[-min(steps, len(pos.stack))]
        del pos.stack[-min(steps, len(pos.stack)):]
        await ctx.goto(target, push=False)

    async def _skip(self, ctx: FlowContext, flow: Flow) -> None:
        if not flow.skippable(ctx.step) or not await flow.skip(ctx, ctx.step):
            ctx.reply(ctx.t("not_skippable"))
            await ctx.reprompt()

    # -- input checks ---------------------------------------------------------------------

    async def _command_in_flow(self, ctx: FlowContext, flow: Flow) -> None:
        command = ctx.incoming.command or ""
        if fold(command) in self.triggers:
            ctx.reply(ctx.t("busy_in_flow", flow=flow.title))
        else:
            ctx.reply(
                ctx.t("unknown_command", command=clip(command, 30)) + "\n"
                + ctx.t("help_commands", commands=self._available(ctx, flow))
            )
        await ctx.reprompt()

    async def _accept_payload(self, ctx: FlowContext, flow: Flow) -> bool:
        payload = ctx.incoming.payload or ""
        parsed = parse_payload(payload)
        if parsed is None or parsed[0] not in self.flows:
            if payload.startswith(MENU_PREFIX) and payload[len(MENU_PREFIX):] in self.triggers:
                ctx.reply(ctx.t("busy_in_flow", flow=flow.title))
            else:
                ctx.reply(ctx.t("unknown_button"))
            await ctx.reprompt()
            return False
        name, version, step, value = parsed
        if name != flow.name or version != flow.version or step != ctx.step:
            ctx.reply(ctx.t("stale_button"))
            await ctx.reprompt()
            return False
        ctx.text = value
        ctx.from_button = True
        return True

    async def _accept_text(self, ctx: FlowContext, flow: Flow) -> bool:
        incoming = ctx.incoming
        text = (incoming.text or "").strip()
        if len(text) > self.max_text_length:
            ctx.reply(ctx.t("too_long", length=len(text), limit=self.max_text_length))
            return False
        if not text:
            if incoming.attachments and flow.accepts_attachments(ctx.step):
                ctx.text = ""
                return True
            if incoming.attachments:
                kind = clip(incoming.attachments[0].kind or "file", 20)
                ctx.reply(ctx.t("attachment", kind=kind))
            else:
                ctx.reply(ctx.t("empty"))
            await ctx.reprompt()
            return False
        ctx.text = text
        return True

    async def _check_version(self, ctx: FlowContext, flow: Flow) -> bool:
        """Bring a position saved by an older deploy up to date. True when the input can be
        handled now, False when the flow asked its question again instead."""
        pos = ctx.position
        stale = pos.version != flow.version
        if not stale and pos.step in flow.states():
            return True
        policy = flow.on_version_change if stale else VersionChange.RESTART_STEP
        if policy is VersionChange.MIGRATE:
            try:
                migrated = flow.migrate(copy.deepcopy(pos), pos.version)
            except Exception:
                log.exception("migration of flow %s from v%s failed", flow.name, pos.version)
                migrated = None
            if migrated is not None and migrated.step in flow.states():
                migrated.version = flow.version
                migrated.name = flow.name
                migrated.parent = pos.parent
                ctx.session.flow = migrated
                ctx.session.state = migrated.step
                return True
            policy = VersionChange.RESTART_STEP
        if policy is VersionChange.RESTART_STEP:
            pos.version = flow.version
            pos.attempts = 0
            pos.stack = [s for s in pos.stack if s in flow.states()]
            ctx.reply(ctx.t("old_version"))
            step = pos.step if pos.step in flow.states() else flow.initial_step()
            await ctx.goto(step, push=False)
            return False
        ctx.reply(ctx.t("restarted"))
        ctx.session.flow = FlowPosition(
            name=flow.name, version=flow.version, entered_at=ctx.now, parent=pos.parent
        )
        await ctx.goto(flow.initial_step(), push=False)
        return False

    # -- endings (called through FlowContext) ---------------------------------------------

    async def _complete(self, ctx: FlowContext, message: Reply) -> None:
        flow = ctx.flow
        pos = ctx.position
        result = FlowResult(flow.name, "completed", public_data(pos.data))
        ctx.add(message)
        ctx.add(await flow.on_complete(ctx, result))
        await self._emit(ctx, "flow.completed", flow.name)
        if pos.parent is not None:
            ctx.session.flow = pos.parent
            ctx.session.state = pos.parent.step
            parent = self.get_flow(pos.parent.name)
            await parent.resume(ctx, ctx.step, result)
            return
        if flow.store_as:
            ctx.session.data[flow.store_as] = result.data
        self._leave(ctx.session)
        await self._notify(self.on_result, ctx.session, result)
        if flow.finish is Finish.MENU:
            ctx.replies.append(self.menu(ctx.language))
        elif flow.finish is Finish.CLOSE:
            ctx.session.close("completed")
        if not ctx.replies:
            ctx.reply(ctx.t("completed"), remove_keyboard=True)

    async def _end(
        self, ctx: FlowContext, status: Status, message: str | None, *, quiet: bool = False
    ) -> None:
        """Leave the flow (and every parent flow) without completing it."""
        pos = ctx.position
        top = pos
        while top.parent is not None:
            top = top.parent
        flow = self.get_flow(top.name)
        result = FlowResult(flow.name, status, public_data(pos.data))
        self._leave(ctx.session)
        await self._emit(ctx, f"flow.{status}", flow.name)
        if not quiet:
            ctx.reply(message or ctx.t("cancelled", flow=flow.title), remove_keyboard=True)
        await self._notify(self.on_result, ctx.session, result)
        if status == "handoff":
            await self._notify(self.on_handoff, ctx.session, result)

    async def _exhausted(self, ctx: FlowContext, error: str, action: OnExhausted) -> None:
        flow = ctx.flow
        if action is OnExhausted.SKIP and flow.skippable(ctx.step):
            ctx.reply(f"{error}\n{ctx.t('skipped')}")
            if await flow.skip(ctx, ctx.step):
                return
        if action is OnExhausted.HANDOFF:
            ctx.session.set_label("handoff", flow.name)
            await self._end(ctx, "handoff", f"{error}\n{ctx.t('handoff')}")
            return
        title = self.get_flow(_top(ctx.position).name).title
        await self._end(ctx, "exhausted", f"{error}\n{ctx.t('exhausted', flow=title)}")

    @staticmethod
    def _leave(session: Session) -> None:
        session.flow = None
        session.state = IDLE

    @staticmethod
    async def _notify(hook: ResultHook | None, session: Session, result: FlowResult) -> None:
        if hook is not None:
            await call_flexible(hook, session, result)

    @staticmethod
    async def _emit(ctx: FlowContext, name: str, flow: str) -> None:
        """Queue a flow event; it is announced once the whole update was handled, so a step
        that fails later announces nothing."""
        ctx.events.append((name, flow))

    @staticmethod
    def _step_events(ctx: FlowContext, before: Where, after: Where) -> None:
        """Queue step-level funnel events: the step left (completed, or abandoned when the
        flow was cancelled or gave up) and the step entered."""
        if before == after:
            return
        if before is not None:
            left_early = any(name in _ABANDONING for name, _ in ctx.events)
            what = "flow.step.abandoned" if left_early else "flow.step.completed"
            ctx.step_events.append((what, before[0], before[1]))
        if after is not None:
            ctx.step_events.append(("flow.step.entered", after[0], after[1]))

    @staticmethod
    async def _emit_all(ctx: FlowContext) -> None:
        manager = ctx.session.manager
        if manager is None:
            return
        for name, flow in ctx.events:
            await manager.events.emit(Event(
                name=name, key=str(ctx.session.key), session_id=ctx.session.id, at=ctx.now,
                data={"flow": flow},
            ))
        for name, flow, step in ctx.step_events:
            await manager.events.emit(Event(
                name=name, key=str(ctx.session.key), session_id=ctx.session.id, at=ctx.now,
                data={"flow": flow, "step": step},
            ))


Where = tuple[str, str] | None
_ABANDONING = frozenset({"flow.cancelled", "flow.exhausted", "flow.handoff"})


def _where(pos: FlowPosition | None) -> Where:
    """(flow, step) of the current position, a snapshot safe from in-place changes."""
    if pos is None or pos.step is None:
        return None
    return (pos.name, pos.step)


def _top(pos: FlowPosition) -> FlowPosition:
    while pos.parent is not None:
        pos = pos.parent
    return pos


__all__ = ["MENU_PREFIX", "FlowRunner", "as_outgoing"]
