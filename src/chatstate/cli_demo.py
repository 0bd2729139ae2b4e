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

from .cli import add_store_option, command
from .demo import DemoBot, demo_manager
from .model import Incoming, Outgoing


def _configure(parser: argparse.ArgumentParser) -> None:
    add_store_option(parser)
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
    async with demo_manager(args.store) as manager:
        bot = DemoBot(manager)
        say = _printer(console, interactive)
        console.print(
            f"chatstate demo on [bold]{escape(args.store)}[/] as user [bold]{escape(user)}[/]. "
            "Type /help, or /quit to leave."
            if interactive
            else f"chatstate demo on {args.store} as user {user}",
            markup=interactive,
        )
        record = await manager.get(DemoBot.key_for(Incoming(platform="cli", user_id=user)))
        if record is not None and record.data.get("name"):
            say([Outgoing(text=f"Welcome back, {record.data['name']}!")])
        else:
            say(await bot.reply(Incoming(platform="cli", user_id=user, text="")))
        async for line in _lines(sys.stdin, interactive, console):
            text = line.strip()
            if text in ("/quit", "/exit"):
                break
            if not text:
                continue
            say(await bot.reply(Incoming.from_text(text, platform="cli", user_id=user)))
    if interactive:
        console.print("Bye. Run `chatstate demo` again: I will remember you.")
    return 0


def _printer(console: Console, interactive: bool) -> Callable[[list[Outgoing]], None]:
    def say(replies: list[Outgoing]) -> None:
        for reply in replies:
            if interactive:
                console.print(f"[bold cyan]bot>[/] {escape(reply.text)}")
            else:
                console.print(f"bot> {reply.text}", markup=False)

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

