"""The demo bot: a tiny chat bot that shows what a session is.

It asks for the user's name, remembers it and counts the messages, across restarts when the
store is durable. `/whoami` shows the session, `/reset` forgets it. The terminal demo
(`chatstate demo`) and the web-chat demo both drive this class: it takes an `Incoming` and
returns `Outgoing` replies, and knows nothing of the platform.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from .clock import Clock
from .engine import SessionManager
from .model import Incoming, Message, Outgoing, SessionKey, SessionRecord
from .policy import LifecyclePolicy
from .session import Session
from .stores.base import Store

if TYPE_CHECKING:
    from .flows import FlowRunner

log = logging.getLogger("chatstate.demo")

HELP = (
    "I remember your name and count your messages, even after a restart.\n"
    "Commands: /feedback starts a short form (a flow: /back and /cancel work in it), "
    "/whoami shows your session, /reset forgets you, /help shows this"
)

# The name survives an idle timeout (a new session starts, but it still knows you); /reset
# deletes the session for good.
DEMO_POLICY = LifecyclePolicy(carry_over=("name",))
DEMO_DEFAULTS = {"name": None, "count": 0}
_OWN_UPDATE_COMMANDS = frozenset({"reset", "whoami", "help", "start"})


def demo_flows() -> FlowRunner:
    """The demo's one flow, so the dashboard has a funnel, a diagram and steps to move to."""
    from .flows import FlowRunner, Step, Wizard, validators

    feedback = Wizard(
        "feedback",
        [
            Step("rating", "How would you rate chatstate, from 1 to 5?",
                 choices=["1", "2", "3", "4", "5"], columns=5),
            Step("liked", "What did you like most?",
                 choices=["Sessions", "Flows", "Dashboard", "Memory"], columns=2),
            Step("email", "Your email, if you would like an answer (or /skip):",
                 validate=validators.email(), optional=True),
        ],
        title="Feedback",
        confirm=True,
        store_as="feedback",
        on_complete=lambda data: f"Thank you! You rated chatstate {data['rating']} of 5.",
    )
    return FlowRunner({"feedback": feedback})


_DEFAULT: object = object()


class DemoBot:
    """Replies to one update at a time; every reply comes out of one committed session update.

    `flows` (default: `demo_flows()`) answers its commands and everything said inside a flow;
    pass None for the name-and-counter bot alone."""

    def __init__(self, manager: SessionManager, flows: FlowRunner | object | None = _DEFAULT
                 ) -> None:
        self.manager = manager
        self.flows: FlowRunner | None = (
            demo_flows() if flows is _DEFAULT else flows  # type: ignore[assignment]
        )

    def _for_flows(self, s: Session, incoming: Incoming) -> bool:
        """Whether the flow runner answers: inside a flow, a button, or a command that is not
        one of the demo's own."""
        if self.flows is None:
            return False
        return s.flow is not None or incoming.payload is not None or (
            incoming.command is not None and incoming.command not in _OWN_UPDATE_COMMANDS
        )

    @staticmethod
    def key_for(incoming: Incoming) -> SessionKey:
        return SessionKey.user(incoming.platform, incoming.user_id or "anonymous")

    async def greet(self, incoming: Incoming) -> list[Outgoing]:
        """What the bot says when a user opens the chat: welcome back a known user, otherwise
        start the session by asking for the name."""
        record = await self.manager.get(self.key_for(incoming))
        if record is not None and record.data.get("name"):
            return [Outgoing(text=f"Welcome back, {record.data['name']}!")]
        return await self.reply(msgspec.structs.replace(incoming, text="", command=None))

    async def reply(self, incoming: Incoming) -> list[Outgoing]:
        key = self.key_for(incoming)
        command = incoming.command
        if command == "reset":
            # clear() deletes the session with its history; it takes the key's lock itself,
            # so it runs outside a session block.
            await self.manager.clear(key)
            async with self.manager.session(key, message=False) as s:
                s.state = "asking_name"  # a brand-new session (new id) that waits for a name
            return [Outgoing(text="I forgot everything about you. What's your name?")]
        if command == "whoami":
            record = await self.manager.get(key)
            return [Outgoing(text=describe(record))]
        if command in ("help", "start"):
            return [Outgoing(text=HELP)]

        text = (incoming.text or incoming.payload or "").strip()
        # An empty text (the terminal demo's greeting) is not a message from the user.
        async with self.manager.session(key, message=bool(text)) as s:
            if text:
                s.append(Message(role="user", content=text))
            replies = await self.session_reply(s, incoming)
            s.append(*(Message(role="assistant", content=r.text) for r in replies if r.text))
        return replies

    # The server's one-update path (chatstate.server.bots): for a text, the server opens the
    # session, records the user's message and the reply, and commits once; commands and empty
    # texts still go through `reply`, which runs outside a session update.

    @staticmethod
    def needs_own_update(incoming: Incoming) -> bool:
        """True for what `session_reply` cannot answer inside one open session: /reset (it
        deletes the session), /whoami, /help, /start (they change nothing) and empty texts."""
        return incoming.command in _OWN_UPDATE_COMMANDS or not (
            incoming.text or incoming.payload or ""
        ).strip()

    async def session_reply(self, s: Session, incoming: Incoming) -> list[Outgoing]:
        """Answer a text inside the caller's open session `s` (which counts the message and
        records the user's message and this reply in the history)."""
        if self._for_flows(s, incoming):
            assert self.flows is not None
            return await self.flows.handle(s, incoming)
        return [Outgoing(text=self._answer(s, (incoming.text or incoming.payload or "").strip()))]

    @staticmethod
    def _answer(s: Session, text: str) -> str:
        name = s.data.get("name")
        if name is None:
            if s.state == "asking_name" and text:
                s.data["name"] = name = text[:60]
                s.state = None
                return f"Nice to meet you, {name}! Say anything; /whoami shows your session."
            s.state = "asking_name"
            return "Hello! I am the chatstate demo bot. What's your name?"
        s.data["count"] = count = int(s.data.get("count") or 0) + 1
        answer = f"{name}, that is message number {count} you sent me."
        if text:
            answer += f" You said: {text}"
        return answer


def describe(record: SessionRecord | None) -> str:
    """A few lines that show what the session holds."""
    if record is None:
        return "You have no session yet: say something."
    lines = [
        f"key:           {record.key}",
        f"session id:    {record.id}",
        f"status:        {record.status.value}",
        f"state:         {record.state or '-'}",
        f"name:          {record.data.get('name') or '-'}",
        f"count:         {record.data.get('count', 0)}",
        f"messages:      {record.counters.messages}",
        f"version:       {record.version}",
        f"created:       {_when(record.created_at)}",
        f"last activity: {_when(record.last_activity)}",
    ]
    if record.expires_at is not None:
        lines.append(f"expires:       {_when(record.expires_at)}")
    return "\n".join(lines)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def demo_manager(store: Store | str | None, *, clock: Clock | None = None) -> SessionManager:
    """The manager the demo bot runs on: the demo's policy and defaults on `store`."""
    return SessionManager(store, policy=DEMO_POLICY, defaults=DEMO_DEFAULTS, clock=clock)


class FlowDemoBot:
    """Drives one example flow runner (see examples/registry.py) inside the session: the same
    `reply(incoming)` shape as `DemoBot`, so the terminal and the web chat can serve both."""

    def __init__(self, manager: SessionManager, runner: FlowRunner, name: str) -> None:
        self.manager = manager
        self.runner = runner
        self.platform = f"cli-{name}"  # a session per example, apart from the name demo's

    def key_for(self, incoming: Incoming) -> SessionKey:
        return SessionKey.user(self.platform, incoming.user_id or "anonymous")

    async def greet(self, incoming: Incoming) -> list[Outgoing]:
        """The runner's menu: one button per flow."""
        return [self.runner.menu(incoming.language or "en")]

    async def reply(self, incoming: Incoming) -> list[Outgoing]:
        replies: list[Outgoing] = []
        async with self.manager.session(self.key_for(incoming)) as s:
            replies = await self.runner.handle(s, incoming)
        return replies


def flow_examples() -> Mapping[str, Callable[[], FlowRunner]]:
    """The flow examples of a source checkout (examples/registry.py's FLOW_EXAMPLES), or an
    empty mapping when chatstate is installed without its examples."""
    try:
        registry = importlib.import_module("examples.registry")
    except ImportError:
        root = Path(__file__).resolve().parents[2]  # src/chatstate/demo.py -> the checkout
        if not (root / "examples" / "registry.py").is_file():
            return {}
        sys.path.append(str(root))
        try:
            registry = importlib.import_module("examples.registry")
        except Exception:  # a broken example must not break the rest of the CLI
            log.warning("could not import the flow examples from %s", root, exc_info=True)
            return {}
    examples: Mapping[str, Callable[[], FlowRunner]] = registry.FLOW_EXAMPLES
    return examples
