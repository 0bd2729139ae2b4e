"""The shared workload, measurement and reporting of chatstate's benchmarks.

Workload: N users x M messages. A user sends one message at a time (the next only after the
reply), as in a chat; `concurrency` users are in flight at once. One message is one *cycle*:
open the session, set a state name, update two data fields, increment a counter, commit. Every
system under test implements the cycle as `async def cycle(user: int, message: int)`.

Results: one JSON line per configuration on stdout (for machines), a rich table on stderr at the
end (for people), and ratios against the peers.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

Cycle = Callable[[int, int], Awaitable[None]]

STATES = ("asking_name", "asking_topic", "chatting")

console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 150)

# Short column labels for the figures in `Result.extra` (the JSON keeps the long names).
SHORT = {
    "round_trips_per_update": "round trips/upd",
    "server_cmd_us_per_update": "server cmd µs/upd",  # the measure: INFO commandstats
    "server_cmd_us_warm_per_update": "warm",  # the same, the run replayed back to back
    "server_cpu_us_per_update": "server CPU µs/upd",  # INFO cpu: user + sys, network included
    "client_commands_per_update": "client cmds/upd",
    "server_commands_per_update": "server cmds/upd",
    "xacts_per_update": "xacts/upd",
    "bytes_per_idle_session": "bytes/idle session",
    # CPU seconds of this process (every thread) per message: less moved by other processes
    # on the machine than messages/second, and for the embedded stores it is all the work.
    "client_cpu_us_per_update": "client CPU µs/upd",
}


@dataclass(frozen=True)
class Workload:
    users: int
    messages: int = 20
    concurrency: int = 1

    @property
    def total(self) -> int:
        return self.users * self.messages


@dataclass
class Result:
    """One configuration's figures. `extra` holds per-system figures (round trips, CPU, ...).
    `users_done` < `users` when the run was time-boxed."""

    group: str  # what is compared: "memory", "sqlite", "redis", "postgres", ...
    system: str  # e.g. "chatstate MemoryStore", "aiogram MemoryStorage"
    users: int = 0
    users_done: int = 0
    concurrency: int = 0
    messages: int = 0
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` of the (sorted) values lie (nearest rank)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


async def run_workload(
    cycle: Cycle, workload: Workload, max_seconds: float | None = None
) -> tuple[float, list[float], int]:
    """Run the workload; returns (wall seconds, per-message latencies in seconds, users done).

    With `max_seconds`, workers take no new user after that long (a user started is finished,
    so every user still sends all its messages: one creating and the rest updating)."""
    latencies: list[float] = []
    next_user = 0
    clock = time.perf_counter
    started = clock()
    deadline = started + max_seconds if max_seconds else float("inf")

    async def worker() -> None:
        nonlocal next_user
        while next_user < workload.users and clock() < deadline:
            user = next_user
            next_user += 1
            for message in range(workload.messages):
                start = clock()
                await cycle(user, message)
                latencies.append(clock() - start)

    await asyncio.gather(*(worker() for _ in range(workload.concurrency)))
    return clock() - started, latencies, next_user


def make_result(
    group: str, system: str, workload: Workload, seconds: float, latencies: list[float],
    users_done: int, **extra: Any,
) -> Result:
    latencies.sort()
    count = len(latencies)
    return Result(
        group=group,
        system=system,
        users=workload.users,
        users_done=users_done,
        concurrency=workload.concurrency,
        messages=count,
        seconds=round(seconds, 4),
        msgs_per_s=round(count / seconds, 1) if seconds else 0.0,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 4),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 4),
        extra=extra,
    )


class Report:
    """Collects results, prints each as a JSON line at once and a table at the end."""

    def __init__(self, out: Any = None) -> None:
        self.results: list[Result] = []
        self.out = out if out is not None else sys.stdout

    def add(self, result: Result) -> Result:
        self.results.append(result)
        print(result.to_json(), file=self.out, flush=True)
        return result

    def find(self, system: str, users: int, concurrency: int) -> Result | None:
        for r in self.results:
            if r.system == system and r.users == users and r.concurrency == concurrency:
                return r
        return None

    def print_tables(self) -> None:
        throughput = [r for r in self.results if r.messages]
        if throughput:
            table = Table(title="messages/second (N users x 20 messages)")
            for name in ("system", "users", "done", "conc.", "msg/s", "p50 ms", "p99 ms",
                         "notes"):
                table.add_column(name, justify="left" if name in ("system", "notes") else "right")
            for r in throughput:
                notes = _notes(r.extra)
                table.add_row(r.system, f"{r.users:,}", f"{r.users_done:,}", str(r.concurrency),
                              f"{r.msgs_per_s:,.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", notes)
            console.print(table)
        other = [r for r in self.results if not r.messages]
        if other:
            table = Table(title="other figures")
            table.add_column("group")
            table.add_column("system")
            table.add_column("figures")
            for r in other:
                table.add_row(r.group, r.system,
                              _notes(r.extra))
            console.print(table)

    def ratio(self, system: str, peer: str, *, label: str | None = None) -> list[str]:
        """'system / peer = 1.7x' for every configuration both ran (throughput). A
        configuration run in several rounds (`--repeat`) pairs the k-th run of `system` with
        the k-th of `peer` (measured one after the other) and gives the median of the rounds'
        ratios with their range."""
        lines = []
        for users, concurrency in dict.fromkeys(
            (r.users, r.concurrency) for r in self.results if r.system == system and r.messages
        ):
            ours, theirs = (
                [r.msgs_per_s for r in self.results
                 if r.system == name and r.messages and r.users == users
                 and r.concurrency == concurrency]
                for name in (system, peer)
            )
            values = sorted(a / b for a, b in zip(ours, theirs, strict=False) if b)
            if not values:
                continue
            spread = (
                f", median of {len(values)} rounds, {values[0]:.2f}-{values[-1]:.2f}"
                if len(values) > 1 else ""
            )
            lines.append(
                f"{label or system} / {peer} = {statistics.median(values):.2f}x "
                f"({users:,} users, concurrency {concurrency}{spread})"
            )
        return lines

    def print_ratios(self, pairs: Sequence[tuple[str, str]]) -> None:
        lines = [line for system, peer in pairs for line in self.ratio(system, peer)]
        if lines:
            console.print("[bold]ratios (throughput)[/]")
            for line in lines:
                console.print("  " + line)


def _notes(extra: dict[str, Any]) -> str:
    return ", ".join(f"{SHORT.get(k, k)} {_fmt(v)}" for k, v in extra.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def note(text: str) -> None:
    console.print(f"[dim]{text}[/]")
