"""`chatstate worker` as a real process: it expires a due session through the bot's hooks and
stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chatstate import SessionKey, SessionManager
from chatstate.model import Status
from chatstate.policy import LifecyclePolicy

HOOKS = '''
import pathlib

async def on_expire(session, due):
    with pathlib.Path("expired.txt").open("a") as f:
        f.write(f"{session.key} {due.id}\\n")
'''


def test_worker_expires_sessions_and_stops_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    key = SessionKey.user("cli", 7)

    async def create() -> None:
        async with SessionManager(url, policy=LifecyclePolicy(idle_timeout=1.0)) as manager:
            async with manager.session(key) as s:
                s.data["name"] = "Ada"

    asyncio.run(create())
    (tmp_path / "bothooks.py").write_text(HOOKS)
    env = {**os.environ, "CHATSTATE_SESSION_TIMEOUT_MINUTES": "0.02"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "chatstate", "worker", "--store", url, "--hooks", "bothooks"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        expired = tmp_path / "expired.txt"
        while time.monotonic() < deadline and not expired.exists():
            time.sleep(0.1)
        assert expired.exists(), "the worker never called on_expire"
        assert expired.read_text().startswith(f"{key} ")
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output

    async def check() -> None:
        async with SessionManager(url) as manager:
            page = await manager.store.list()
            assert [r.status for r in page.items] == [Status.EXPIRED]

    asyncio.run(check())
