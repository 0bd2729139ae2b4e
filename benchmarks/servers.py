"""Private servers for the benchmarks, so that other work on the machine does not pollute the
server-side figures (Redis CPU, PostgreSQL transaction counts).

* Redis: a redis-server of our own on a free loopback port, in a temporary directory, stopped at
  the end (falls back to $CHATSTATE_BENCH_REDIS_URL when given).
* PostgreSQL: a database of our own (`chatstate_bench_<pid>`) on the local server, dropped at the
  end; pg_stat_database counts per database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

POSTGRES_ADMIN_URL = os.environ.get(
    "CHATSTATE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def private_redis() -> AsyncIterator[str]:
    given = os.environ.get("CHATSTATE_BENCH_REDIS_URL")
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; set CHATSTATE_BENCH_REDIS_URL")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chatstate-bench-redis-") as workdir:
        proc = await asyncio.create_subprocess_exec(
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await _wait_for_port(port, proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_for_port(port: int, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"redis-server did not listen on port {port} within 10 s")


@asynccontextmanager
async def private_postgres_database() -> AsyncIterator[str]:
    """Yield the URL of a fresh database; drop it afterwards."""
    import asyncpg

    name = f"chatstate_bench_{os.getpid()}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
