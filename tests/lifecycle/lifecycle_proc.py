"""A lifecycle runner process for tests/test_lifecycle_multiprocess.py.

Every hook call is appended as one line ``kind session_id due_id`` to this process's own file
(one `os.write` per line on an O_APPEND descriptor, so a SIGKILL never leaves half a line).
Writes the --ready file once started; stops gracefully on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from chatstate.events import Event, EventBus
from chatstate.lifecycle import WARN_SKIPPED, Due, run_worker
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--warn", type=float, default=1.0)
    parser.add_argument("--claim", type=float, default=1.0)
    parser.add_argument("--lease", type=float, default=0.6)
    parser.add_argument("--restore", action="store_true")
    args = parser.parse_args()
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(kind: str, session: Session, due: Due | None) -> None:
        due_id = due.id if due is not None else "-"
        delay = due.delay if due is not None else 0.0
        os.write(fd, f"{kind} {session.id} {due_id} {delay:.4f}\n".encode())

    hooks = {
        "on_warning": lambda s, d: record("warn", s, d),
        "on_expire": lambda s, d: record("expire", s, d),
        "on_restore": lambda s, d: record("restore", s, d),
    }
    events = EventBus()

    def warn_skipped(event: Event) -> None:  # a warning overtaken by its session's expiry
        os.write(fd, f"warn_skipped {event.session_id} - 0\n".encode())

    events.on(WARN_SKIPPED, warn_skipped)
    policy = LifecyclePolicy(idle_timeout=args.timeout, warn_before=args.warn, max_age=None)

    async def run() -> None:
        ready = asyncio.Event()
        worker = asyncio.create_task(run_worker(
            args.url, policy=policy, hooks=hooks, ready=ready, poll_interval=0.1,
            claim_seconds=args.claim, restore=args.restore, batch_size=100,
            manager_options={"lease_seconds": args.lease, "lock_timeout": 3.0, "events": events},
        ))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({worker, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            Path(args.ready).write_text("ready")  # noqa: ASYNC240 - once, tiny
        await worker  # until SIGTERM (run_worker's handler) stops it gracefully

    asyncio.run(run())


if __name__ == "__main__":
    main()
