"""Each benchmark group still runs (tiny `--quick` workload) and reports its figures.

Only the presence and sanity of the figures is checked, never a timing. All groups run in one
process because importing aiogram (a peer) alone takes seconds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backends import IN_CI, require_service, service_up

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "memory": {"chatstate MemoryStore", "aiogram MemoryStorage",
               "aiogram MemoryStorage+isolation", "floor: decode+encode only"},
    "sqlite": {"chatstate SQLiteStore", "chatstate SQLiteStore (cache=0)", "sqlite3 SELECT+UPSERT"},
    "sqlite-full": {"chatstate SQLiteStore (full)", "sqlite3 SELECT+UPSERT (full)"},
    "bytes": {"chatstate MemoryStore", "aiogram MemoryStorage", "dict of dicts"},
    "claim": {"chatstate memory claim_due", "chatstate sqlite claim_due"},
    "redis": {"chatstate RedisStore", "aiogram RedisStorage", "aiogram RedisStorage+isolation",
              "redis-py GET+SET"},
    "postgres": {"chatstate PostgresStore", "asyncpg SELECT+UPSERT"},
}
FIGURES = {
    "redis": {"round_trips_per_update", "server_cmd_us_per_update", "server_cpu_us_per_update",
              "server_commands_per_update", "server_cmd_us_warm_per_update"},
    "postgres": {"xacts_per_update"},
    "bytes": {"bytes_per_idle_session"},
    "claim": {"claim_ms", "sessions", "due"},
}


def runnable(group: str) -> bool:
    if group == "redis":  # the benchmark starts a redis-server of its own
        return shutil.which("redis-server") is not None
    if group == "postgres":
        return service_up("127.0.0.1", 5432)
    return True


@pytest.fixture(scope="module")
def quick_run() -> list[dict[str, Any]]:
    groups = [g for g in EXPECTED if runnable(g)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_sessions", "--quick", "--only", ",".join(groups)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratios (throughput)" in done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("group", sorted(EXPECTED))
def test_benchmark_group_reports_its_figures(group: str, quick_run: list[dict[str, Any]]) -> None:
    if group == "redis" and not runnable(group):
        if IN_CI:
            pytest.fail("redis-server is not installed (see ../shared/SERVICES.md)")
        pytest.skip("redis-server is not installed")
    if group == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
    results = [r for r in quick_run if r["group"] == group]
    assert {r["system"] for r in results} == EXPECTED[group]
    for r in results:
        if r["messages"]:  # a throughput configuration
            assert r["messages"] == r["users"] * 3  # --quick: 3 messages per user
            assert r["extra"]["client_cpu_us_per_update"] > 0
            assert r["msgs_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        extra = r["extra"]
        assert isinstance(extra, dict)
        assert FIGURES.get(group, set()) <= set(extra)
        assert all(isinstance(v, (int, float)) and v >= 0 for v in extra.values())
    if group in ("memory", "sqlite", "redis", "postgres"):
        # Every system ran at both concurrencies.
        assert {(r["system"], r["concurrency"]) for r in results} == {
            (s, c) for s in EXPECTED[group] for c in (1, 8)
        }


def test_the_agent_memory_benchmark_reports_its_figures() -> None:
    done = subprocess.run(
        # LangGraph comes with the `bench` extra only; the Agents SDK is in `all` (its adapter).
        [sys.executable, "-m", "benchmarks.bench_memory", "--quick",
         "--only", "chatstate,agents", "--backends", "memory,sqlite"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["system"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert {"chatstate memory", "chatstate sqlite", "chatstate sqlite (store only)",
            "agents-sdk SQLiteSession"} <= set(results)
    for system, r in results.items():
        assert r["skipped"] is None, (system, r["skipped"])
        assert r["turn10_ms"] > 0 and r["last_ms"] > 0
        assert r["bytes_per_conversation"] > 0 and r["raw_bytes_per_conversation"] > 0
    assert results["chatstate sqlite"]["context_ms"] > 0
    assert "the throughput of agents-sdk SQLiteSession" in done.stderr


def test_the_lifecycle_benchmark_expires_every_session_it_seeds() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_lifecycle", "--quick", "--stores", "memory"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in (done.stdout + done.stderr).splitlines() if x.startswith("memory"))
    fields = dict(re.findall(r"(\w+)=\s*([\d.]+)", line))
    assert int(fields["sessions"]) == int(fields["expired"]) > 0
    assert float(fields["p99"]) > 0


def test_ratios_pair_the_runs_of_each_round_and_give_their_median() -> None:
    """`--repeat`: the k-th run of a system is compared with the k-th run of its peer (made
    moments apart), and the median of those ratios is quoted with their range."""
    import io

    from benchmarks.common import Report, Result

    report = Report(out=io.StringIO())
    for ours, theirs in ((90.0, 100.0), (50.0, 40.0), (80.0, 100.0)):  # 0.9, 1.25, 0.8
        for system, rate in (("peer", theirs), ("ours", ours)):
            report.add(Result(group="g", system=system, users=10, concurrency=1, messages=10,
                              msgs_per_s=rate))
    report.add(Result(group="g", system="ours", users=20, concurrency=1, messages=10,
                      msgs_per_s=30.0))
    report.add(Result(group="g", system="peer", users=20, concurrency=1, messages=10,
                      msgs_per_s=20.0))
    assert report.ratio("ours", "peer") == [
        "ours / peer = 0.90x (10 users, concurrency 1, median of 3 rounds, 0.80-1.25)",
        "ours / peer = 1.50x (20 users, concurrency 1)",
    ]
