"""The bot behind `POST /v1/chat`: pluggable, the demo bot by default.

Two shapes are accepted:

* a *session bot*: ``async def reply(session, incoming) -> list[Outgoing]`` (a function, or an
  object with such a `reply` method). The server opens the session, records the user's message,
  calls the bot, records the replies and commits, all in one update.
* a *self-managed bot*: ``async def reply(incoming)`` that opens the session itself through the
  manager it was built with.
* both, like `chatstate.demo.DemoBot`: an object with ``session_reply(session, incoming)`` for
  the one-update path, ``reply(incoming)`` for what must run outside a session update, and
  ``needs_own_update(incoming) -> bool`` saying which is which.

`CHATSTATE_BOT=module:attribute` names one; a class (or zero/one-argument factory) is called with
the manager when it takes one.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine import SessionManager
from ..errors import ConfigurationError
from ..model import Incoming, Outgoing
from ..session import Session

SessionBotFn = Callable[[Session, Incoming], Awaitable[Any]]
SelfManagedFn = Callable[[Incoming], Awaitable[Any]]


@dataclass(frozen=True)
class Bot:
    name: str
    session_reply: SessionBotFn | None = None  # set for session bots
    self_reply: SelfManagedFn | None = None  # set for self-managed bots
    # Set for bots with both: True for an update that must go to `self_reply`.
    own_update: Callable[[Incoming], bool] | None = None

    def in_session(self, incoming: Incoming) -> bool:
        """Whether `incoming` is answered inside the server's session update."""
        if self.session_reply is None:
            return False
        return self.own_update is None or not self.own_update(incoming)


def as_outgoing(result: Any) -> list[Outgoing]:
    """Accept a str, an Outgoing, or a list of them (bots return what is natural)."""
    if result is None:
        return []
    if isinstance(result, str):
        return [Outgoing(text=result)]
    if isinstance(result, Outgoing):
        return [result]
    if isinstance(result, Sequence):
        out: list[Outgoing] = []
        for item in result:
            out.extend(as_outgoing(item))
        return out
    raise TypeError(f"a bot must return str, Outgoing or a list of them, not {type(result)}")


def _positional_count(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return -1
    return sum(
        1 for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


def make_bot(obj: Any, manager: SessionManager, name: str | None = None) -> Bot:
    """Turn a function, object, class or factory into a `Bot`."""
    label: str = name or str(getattr(obj, "__name__", type(obj).__name__))
    if inspect.isclass(obj):
        factory: Any = obj
        obj = factory(manager) if _positional_count(factory.__init__) >= 2 else factory()
    session_reply = getattr(obj, "session_reply", None) if not inspect.isfunction(obj) else None
    if callable(session_reply) and _positional_count(session_reply) == 2:
        own_reply = getattr(obj, "reply", None)
        own_update = getattr(obj, "needs_own_update", None)
        if callable(own_reply) and _positional_count(own_reply) == 1 and callable(own_update):
            return Bot(label, session_reply=_async(session_reply), self_reply=_async(own_reply),
                       own_update=own_update)
        return Bot(label, session_reply=_async(session_reply))
    reply = getattr(obj, "reply", None) if not inspect.isfunction(obj) else None
    fn: Callable[..., Any] = reply if callable(reply) else obj
    if not callable(fn):
        raise ConfigurationError(f"bot {label!r} is neither callable nor has a reply() method")
    count = _positional_count(fn)
    if count == 2:
        return Bot(label, session_reply=_async(fn))
    if count == 1:
        if fn is obj and inspect.isfunction(obj):
            # a one-argument function may be a factory taking the manager
            params = list(inspect.signature(obj).parameters)
            if params and params[0] == "manager":
                return make_bot(obj(manager), manager, label)
        return Bot(label, self_reply=_async(fn))
    raise ConfigurationError(
        f"bot {label!r} must be 'async def reply(session, incoming)' or "
        "'async def reply(incoming)'"
    )


def _async(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    if inspect.iscoroutinefunction(fn):
        return fn

    async def call(*args: Any) -> Any:
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    return call


def load_bot(spec: str | None, manager: SessionManager) -> Bot:
    """The bot `spec` ("module:attribute") names, or the demo bot."""
    if spec is None:
        try:
            from ..demo import DemoBot
        except ImportError as exc:  # pragma: no cover - the demo ships with the package
            raise ConfigurationError(
                "the demo bot is not available; set CHATSTATE_BOT=module:attribute"
            ) from exc
        return make_bot(DemoBot(manager), manager, "demo")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"CHATSTATE_BOT={spec!r} is not 'module:attribute', e.g. 'mybot:reply'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"CHATSTATE_BOT: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"CHATSTATE_BOT: {module_name!r} has no attribute {attr!r}"
            ) from None
    return make_bot(obj, manager, spec)
