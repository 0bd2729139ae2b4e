"""`POST /v1/chat` throughput and p99 latency of `chatstate serve`, beside a bare endpoint of the
same framework (FastAPI on uvicorn, one worker) on the same machine: the framework's ceiling.

    python benchmarks/bench_server.py            # SQLite and Redis, 20 s per run
    python benchmarks/bench_server.py --quick    # 5 s per run

Load comes from wrk (Debian: apt-get install -y wrk) with 64 connections; each request is a
message from one of 1,000 users, answered by the demo bot (one session update with two history
messages). Rate limiting is off for the run. Prints a table; target: chat >= 0.5x the bare
endpoint's requests/second.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_APP = '''
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Body(BaseModel):
    message: str
    user_id: str | None = None


@app.post("/v1/chat")
async def chat(body: Body) -> dict:
    return {"user_id": body.user_id, "reply": body.message}
'''

SERVE = (
    "import argparse, sys; from chatstate.server.cli import serve_command; "
    "serve_command(argparse.Namespace(store=sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]),"
    " no_lifecycle=False, bot=None, log_level='warning'))"
)

WRK_SCRIPT = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"message": "message %d", "user_id": "bench%d"}', n, n % 1000)
  return wrk.format(nil, "/v1/chat", nil, body)
end
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not come up")


def run_wrk(port: int, seconds: int, script: Path) -> tuple[float, float, int]:
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/v1/chat"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99_match = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99_match is not None, out
    value, unit = float(p99_match.group(1)), p99_match.group(2)
    p99_ms = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p99_ms, int(errors.group(1)) if errors else 0


def measure(cmd: list[str], port: int, seconds: int, script: Path, env: dict[str, str]) -> tuple[
    float, float, int
]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_up(port, proc)
        run_wrk(port, 2, script)  # warm-up: sessions created, connections open
        return run_wrk(port, seconds, script)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per measurement")
    parser.add_argument("--seconds", type=int, default=None)
    args = parser.parse_args()
    seconds = args.seconds or (5 if args.quick else 20)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    env = {**os.environ, "CHATSTATE_CHAT_RATE_PER_MINUTE": "0", "CHATSTATE_LOG_LEVEL": "warning"}
    rows: list[tuple[str, float, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "chat.lua"
        script.write_text(WRK_SCRIPT)
        bare = Path(tmp) / "bare_app.py"
        bare.write_text(BARE_APP)
        port = free_port()
        rows.append(("bare FastAPI endpoint", *measure(
            [sys.executable, "-m", "uvicorn", "--app-dir", tmp, "bare_app:app", "--port",
             str(port), "--log-level", "warning", "--no-access-log"],
            port, seconds, script, env,
        )))
        stores = [("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}")]
        if redis_up():
            stores.append(("redis", "redis://127.0.0.1:6379/15"))
        else:
            print("Redis is not running on 127.0.0.1:6379: skipping the Redis run")
        for name, url in stores:
            port = free_port()
            try:
                rows.append((f"chatstate serve ({name})", *measure(
                    [sys.executable, "-c", SERVE, url, str(port)], port, seconds, script, env,
                )))
            except Exception as exc:  # report and go on with the other store
                print(f"{name}: {exc}")
        if any(url.startswith("redis") for _, url in stores):
            import redis

            redis.Redis(db=15).flushdb()
    base = rows[0][1]
    print(f"\nPOST /v1/chat, 64 connections, {seconds} s, wrk -t2, one uvicorn worker")
    print(f"{'server':<28}{'req/s':>10}{'p99 ms':>10}{'x bare':>9}{'errors':>8}")
    for name, rps, p99, errors in rows:
        print(f"{name:<28}{rps:>10.0f}{p99:>10.1f}{rps / base:>9.2f}{errors:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
