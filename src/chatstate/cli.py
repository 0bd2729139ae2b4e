"""The `chatstate` command line.

Subcommands live in a registry. Adding one takes a few lines, in this file or in a
`cli_*.py` module listed in `COMMAND_MODULES`::

    @command("worker", "run the lifecycle worker", configure=add_store_option)
    async def worker(args: argparse.Namespace) -> int:
        ...
        return 0

`configure` adds the subcommand's arguments to its argparse parser; the run function gets the
parsed arguments and returns an exit code (it may be async). Bad input raises `CLIError` or a
`ChatstateError`: the user sees one line and the exit code is 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .errors import ChatstateError

EXIT_OK = 0
EXIT_BAD_INPUT = 2

DEFAULT_STORE_URL = "sqlite:///chatstate.db"
STORE_ENV = "CHATSTATE_STORE_URL"

RunFn = Callable[[argparse.Namespace], "int | Awaitable[int | None] | None"]
ConfigureFn = Callable[[argparse.ArgumentParser], None]


class CLIError(Exception):
    """Bad input on the command line: printed as one line, exit code 2."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: RunFn
    configure: ConfigureFn | None = None


COMMANDS: dict[str, Command] = {}

# Modules whose import registers subcommands (each uses @command).
COMMAND_MODULES: list[str] = [
    "chatstate.cli_demo",
    "chatstate.cli_sessions",
    "chatstate.cli_admin",
    "chatstate.cli_worker",
    "chatstate.server.cli",
]


def command(
    name: str, help: str, *, configure: ConfigureFn | None = None
) -> Callable[[RunFn], RunFn]:
    """Register the decorated function as the subcommand `name`."""

    def register(run: RunFn) -> RunFn:
        COMMANDS[name] = Command(name=name, help=help, run=run, configure=configure)
        return run

    return register


def add_store_option(parser: argparse.ArgumentParser) -> None:
    """`--store URL`, defaulting to $CHATSTATE_STORE_URL, then the SQLite file."""
    parser.add_argument(
        "--store",
        metavar="URL",
        default=os.environ.get(STORE_ENV) or DEFAULT_STORE_URL,
        help=f"store URL (default: ${STORE_ENV} or {DEFAULT_STORE_URL}); e.g. memory://, "
        "sqlite:///path.db, redis://127.0.0.1:6379/0, postgresql://user@host/db",
    )


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(
        prog="chatstate",
        description="Conversation state for chat bots and LLM agents.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"chatstate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.configure is not None:
            cmd.configure(sub)
        sub.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args._run(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except (CLIError, ChatstateError, OSError) as exc:
        message = str(exc) or type(exc).__name__
        print(f"chatstate: error: {message.splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    return int(result or EXIT_OK)


async def _await(awaitable: Awaitable[int | None]) -> int | None:
    return await awaitable
