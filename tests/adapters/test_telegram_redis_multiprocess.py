"""Drop-in backends across OS processes on the real Redis: two python-telegram-bot processes with
ChatstatePersistence and one aiogram process with ChatstateStorage, all running at once; what
one writes, the others see (PTB user_data between PTB instances; the FSM session between aiogram
and PTB)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import _standalone_url

SCRIPT = Path(__file__).with_name("telegram_bot_proc.py")
ROOT = Path(__file__).resolve().parents[2]


class BotProcess:
    def __init__(self, kind: str, url: str, prefix: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), kind, url, prefix], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def ready(self) -> None:
        assert self._line() == "ready"

    def say(self, text: str) -> list[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        texts: list[str] = json.loads(self._line())
        return texts

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"bot process exited with {self.proc.wait(10)}")
        return line.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def redis_prefix() -> Iterator[tuple[str, str]]:
    url = _standalone_url()  # skips locally without Redis, fails under CI=true
    prefix = f"cstg{uuid.uuid4().hex[:10]}"
    yield url, prefix
    import redis

    client = redis.Redis.from_url(url)
    for name in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.unlink(name)
    client.close()


@pytest.mark.redis
def test_ptb_and_aiogram_processes_share_state_on_redis(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix
    bots = {name: BotProcess(kind, url, prefix)
            for name, kind in (("ptb1", "ptb"), ("ptb2", "ptb"), ("aio", "aiogram"))}
    try:
        for bot in bots.values():  # all three started at once, all running from here on
            bot.ready()
        # PTB user_data written by one instance is read by the other
        assert bots["ptb1"].say("/note one") == ["notes=['one']"]
        assert bots["ptb2"].say("/note two") == ["notes=['one', 'two']"]
        assert bots["ptb1"].say("/note three") == ["notes=['one', 'two', 'three']"]
        # aiogram's FSM state and data are seen by the PTB bot, and the other way round
        assert bots["aio"].say("/form") == ["form started"]
        assert bots["ptb2"].say("/peek") == ['ptb sees state=Form:name data={"name": "Ada"}']
        assert bots["ptb1"].say("/advance") == [
            'ptb sees state=Form:age data={"from_ptb": true, "name": "Ada"}'
        ]
        assert bots["aio"].say("33") == ["aiogram sees age state, from_ptb=True"]
        assert bots["ptb2"].say("/peek") == ["ptb sees state=None data={}"]
    finally:
        for bot in bots.values():
            bot.stop()
