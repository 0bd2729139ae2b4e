"""`chatstate worker`: the lifecycle runner as its own process (warnings, expiry, purge)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .cli import add_store_option, command


def _configure(parser: argparse.ArgumentParser) -> None:
    add_store_option(parser)
    parser.add_argument(
        "--hooks",
        metavar="MODULE:OBJECT",
        help="the bot's lifecycle hooks (an object or mapping with on_warning, on_expire, "
        "on_close, on_restore), imported from the current directory",
    )
    parser.add_argument(
        "--no-restore",
        action="store_true",
        help="do not send restore notices on start (for workers added to a running fleet)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, metavar="N", help="due sessions claimed per batch"
    )


@command("worker", "run the lifecycle worker (timeouts, warnings, purge)", configure=_configure)
async def worker(args: argparse.Namespace) -> int:
    from .lifecycle import run_worker
    from .policy import LifecyclePolicy

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.hooks and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the bot's own modules, as `--hooks` promises
    options: dict[str, Any] = {}
    if args.no_restore:
        options["restore"] = False
    if args.batch is not None:
        options["batch_size"] = args.batch
    lifecycle = await run_worker(
        args.store, policy=LifecyclePolicy.from_env(), hooks=args.hooks, **options
    )
    logging.getLogger("chatstate.worker").info("stopped: %s", dict(lifecycle.counters))
    return 0
