"""`chatstate demo`: the demo bot in the terminal, one line of standard input per message."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from .cli import CLIError, add_store_option, command
from .demo import DemoBot, FlowDemoBot, demo_manager, flow_examples
from .engine import SessionManager
from .model import Incoming, Outgoing


def _configure(parser: argparse.ArgumentParser) -> None:
    add_store_option(parser)
    names = sorted(flow_examples())
    parser.add_argument(
        "example",
        nargs="?",
        metavar="NAME",
        help="run a flow example instead of the name bot"
        + (f": {', '.join(names)}" if names else " (none in this installation)"),
    )
    parser.add_argument(
        "--user",
        default=None,
        help="who you are to the bot (default: your login name); each user has a session",
    )


@command("demo", "chat with a small bot that remembers you across restarts", configure=_configure)
async def demo(args: argparse.Namespace) -> int:
    user = args.user or _login_name()
    interactive = sys.stdin.isatty()
    console = Console(highlight=False)
    runner_factory = None
    if args.example:
        examples = flow_examples()
        if args.example not in examples:
            known = ", ".join(sorted(examples)) or "none in this installation"
            raise CLIError(f"no flow example {args.example!r}; available: {known}")
        runner_factory = examples[args.example]
    manager = SessionManager(args.store) if runner_factory else demo_manager(args.store)
    async with manager:
        say = _printer(console, interactive)
        what = f"flow example {args.example}" if args.example else "demo"
        console.print(
            f"chatstate {what} on [bold]{escape(args.store)}[/] as user [bold]{escape(user)}[/]."
            " Type /help, or /quit to leave."
            if interactive
            else f"chatstate {what} on {args.store} as user {user}",
            markup=interactive,
        )
        bot: DemoBot | FlowDemoBot
        if runner_factory is not None:
            bot = FlowDemoBot(manager, runner_factory(), args.example)
        else:
            bot = DemoBot(manager)
        last = await bot.greet(Incoming(platform="cli", user_id=user))
        say(last)
        async for line in _lines(sys.stdin, interactive, console):
            text = line.strip()
            if text in ("/quit", "/exit"):
                break
            if not text:
                continue
            last = await bot.reply(_incoming(text, user, last))
            say(last)
    if interactive:
        console.print("Bye. Run `chatstate demo` again: I will remember you.")
    return 0


def _incoming(text: str, user: str, last: list[Outgoing]) -> Incoming:
    """Typing the label of a button shown in the last reply presses it."""
    for reply in last:
        for row in reply.buttons:
            for button in row:
                if button.payload and text.casefold() == button.text.casefold():
                    return Incoming.button(button.payload, platform="cli", user_id=user)
    return Incoming.from_text(text, platform="cli", user_id=user)


def _printer(console: Console, interactive: bool) -> Callable[[list[Outgoing]], None]:
    def say(replies: list[Outgoing]) -> None:
        for reply in replies:
            options = [b.text for row in reply.buttons for b in row]
            options += [label for row in reply.keyboard for label in row]
            if interactive:
                console.print(f"[bold cyan]bot>[/] {escape(reply.text)}")
                if options:
                    console.print("     " + "  ".join(f"[reverse] {escape(o)} [/]"
                                                      for o in options))
            else:
                console.print(f"bot> {reply.text}", markup=False)
                if options:
                    console.print("     " + "  ".join(f"[{o}]" for o in options), markup=False)

    return say


async def _lines(stream: TextIO, interactive: bool, console: Console) -> AsyncIterator[str]:
    """Lines of `stream` without blocking the event loop (input() runs in a thread)."""
    while True:
        if interactive:
            try:
                line = await asyncio.to_thread(console.input, "[bold green]you>[/] ")
            except EOFError:
                return
        else:
            line = await asyncio.to_thread(stream.readline)
            if not line:
                return
        yield line


def _login_name() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "local"
    return "".join(ch for ch in name if ch.isalnum() or ch in "_-.") or "local"

