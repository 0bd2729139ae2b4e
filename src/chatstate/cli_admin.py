"""`chatstate db upgrade` and `chatstate flows diagram`."""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from .cli import CLIError, add_store_option, command
from .stores.url import open_store


def _configure_db(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser(
        "upgrade", help="create the store's schema or migrate it to this version of chatstate"
    )
    add_store_option(p)


@command("db", "manage the store's schema", configure=_configure_db)
async def db(args: argparse.Namespace) -> int:
    scheme = urlsplit(args.store).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        from .stores.postgres import upgrade  # needs the postgres extra

        applied = await upgrade(args.store)
        if applied:
            print(f"applied schema migration(s) {', '.join(map(str, applied))}")
        else:
            print("the schema is already current")
        return 0
    # The other stores create or check their schema when they open (SQLite refuses a file that
    # is not ours or is newer than this code, with SchemaError).
    store = open_store(args.store)
    await store.open()
    await store.close()
    print(f"the {scheme}:// store is ready (its schema is created and checked when it opens)")
    return 0


def _configure_flows(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("diagram", help="print a Mermaid diagram of a flow")
    p.add_argument(
        "target",
        metavar="TARGET",
        help="a flow example name (e.g. order) or module:attribute of a flow, state machine or "
        "runner (e.g. mybot.flows:signup), imported from the current directory",
    )


@command("flows", "inspect flows", configure=_configure_flows)
def flows(args: argparse.Namespace) -> int:
    from .demo import flow_examples
    from .flows import diagram, diagram_command

    target: str = args.target
    if ":" not in target:
        examples = flow_examples()
        if target not in examples:
            known = ", ".join(sorted(examples)) or "none in this installation"
            raise CLIError(
                f"{target!r} is neither module:attribute nor a flow example ({known})"
            )
        print(diagram(examples[target]()))
        return 0
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the bot's own modules, as `python -m` would see them
    print(diagram_command(target))
    return 0
