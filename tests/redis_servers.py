"""Test-owned Redis servers: a single redis-server or a 3-master Redis Cluster, started from the
installed binaries on free loopback ports in a temporary directory, and stopped afterwards.

Nothing here touches the machine's shared server on 6379.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def redis_binaries_available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def require_redis_binaries() -> None:
    """Skip locally, fail under CI, when redis-server/redis-cli are not installed."""
    if redis_binaries_available():
        return
    message = "redis-server and redis-cli are not installed (apt-get install redis-server)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " -- under CI=true this is an error, not a skip")
    pytest.skip(message)


def free_port() -> int:
    """A loopback port that is free now and whose +10000 cluster bus port is free too."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((HOST, port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port pair found")


def _wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process owned by a test. `stop()` and `start()` may be repeated; the
    port stays the same so clients can reconnect."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server", "--bind", HOST, "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"), "--daemonize", "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            _wait_until(lambda: _answers(self.port), 10.0, f"redis-server on port {self.port}")
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server now (SIGKILL: like a crash, nothing is flushed)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(self.port), *args],
            check=True, capture_output=True, timeout=30,
        )
        return out.stdout.decode()


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    """A fresh standalone redis-server in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="chatstate-redis-") as tmp:
        server = RedisServer(Path(tmp), None, *extra)
        server.start()
        try:
            yield server
        finally:
            server.stop()


class RedisCluster:
    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers

    @property
    def url(self) -> str:
        nodes = ",".join(f"{HOST}:{s.port}" for s in self.servers)
        return f"redis+cluster://{nodes}"


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[RedisCluster]:
    """A Redis Cluster of `masters` masters without replicas, ready when this yields."""
    with tempfile.TemporaryDirectory(prefix="chatstate-cluster-") as tmp:
        servers = [
            RedisServer(
                Path(tmp) / f"node{i}", None,
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000",
            )
            for i in range(masters)
        ]
        try:
            for server in servers:
                server.start()
            subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *(f"{HOST}:{s.port}" for s in servers), "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )

            def ready() -> bool:
                return all("cluster_state:ok" in s.cli("cluster", "info") for s in servers)

            _wait_until(ready, 30.0, "the Redis Cluster to report cluster_state:ok")
            yield RedisCluster(servers)
        finally:
            for server in servers:
                server.stop()


_SHARED: dict[str, tuple[contextlib.ExitStack, RedisCluster]] = {}


def shared_cluster() -> RedisCluster:
    """The one Redis Cluster of this test session: started on first use (about 2 s), stopped
    by `stop_shared_cluster` (a session fixture in tests/conftest.py calls it) or at exit.

    Store factories are plain callables without fixtures, so the cluster is a lazy singleton;
    every test using it works under its own key prefix."""
    if "cluster" not in _SHARED:
        stack = contextlib.ExitStack()
        cluster = stack.enter_context(redis_cluster(3))
        _SHARED["cluster"] = (stack, cluster)
        atexit.register(stop_shared_cluster)
    return _SHARED["cluster"][1]


def stop_shared_cluster() -> None:
    entry = _SHARED.pop("cluster", None)
    if entry is not None:
        entry[0].close()
