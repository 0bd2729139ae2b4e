"""Server-side and wire figures around one measured run.

* RedisProbe: client round trips per update (every request write of redis-py's asyncio
  connections, a pipeline or script call counting once), Redis server CPU microseconds per
  update (INFO cpu: user + sys of the server process, which includes its network work) and
  server commands per update (INFO commandstats; commands run inside scripts count too).
* PostgresProbe: transactions per update (pg_stat_database.xact_commit of the database).

`start()` and `stop()` bracket the workload; `finish(messages)` returns the figures.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class Probe(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def finish(self, messages: int) -> dict[str, Any]: ...


class RedisProbe:
    def __init__(self, url: str) -> None:
        self.url = url
        self.round_trips = 0
        self._original: Any = None
        self._before: tuple[float, int] = (0.0, 0)
        self._after: tuple[float, int] = (0.0, 0)

    async def _server_figures(self) -> tuple[float, int]:
        """(server CPU seconds, commands processed), read on a connection of its own."""
        from redis.asyncio import Redis

        client = Redis.from_url(self.url)
        try:
            cpu = await client.info("cpu")
            stats = await client.info("commandstats")
        finally:
            await client.aclose()
        seconds = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        calls = sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))
        return seconds, calls

    async def start(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        self._before = await self._server_figures()
        original = AbstractConnection.send_packed_command
        probe = self

        async def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            probe.round_trips += 1
            await original(conn, command, check_health)

        self._original = original
        setattr(AbstractConnection, "send_packed_command", counting)  # noqa: B010

    async def stop(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        setattr(AbstractConnection, "send_packed_command", self._original)  # noqa: B010
        # The INFO calls of the probe itself: 2 commands on each reading, subtracted below.
        self._after = await self._server_figures()

    async def finish(self, messages: int) -> dict[str, Any]:
        if not messages:
            return {}
        cpu = self._after[0] - self._before[0]
        commands = self._after[1] - self._before[1] - 2
        return {
            "round_trips_per_update": round(self.round_trips / messages, 3),
            "server_cpu_us_per_update": round(cpu * 1e6 / messages, 2),
            "server_commands_per_update": round(commands / messages, 2),
        }


class PostgresProbe:
    def __init__(self, url: str) -> None:
        self.url = url
        self._before = 0

    async def _commits(self, settle: bool = False) -> int:
        """xact_commit of this database. With `settle`, wait until the backends that just
        closed have flushed their statistics (the count stops moving)."""
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            query = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            value: int = await conn.fetchval(query)
            for _ in range(20 if settle else 0):
                await asyncio.sleep(0.25)
                await conn.execute("SELECT pg_stat_clear_snapshot()")
                newer: int = await conn.fetchval(query)
                if newer == value:
                    break
                value = newer
            return value
        finally:
            await conn.close()

    async def start(self) -> None:
        self._before = await self._commits(settle=True)

    async def stop(self) -> None:
        return None

    async def finish(self, messages: int) -> dict[str, Any]:
        # Called after the system's pool closed, so every backend flushed its counts.
        after = await self._commits(settle=True)
        if not messages:
            return {}
        return {"xacts_per_update": round((after - self._before) / messages, 3)}
