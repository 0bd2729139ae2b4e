"""Server-side and wire figures around one measured run.

* RedisProbe: client round trips per update (every request write of redis-py's asyncio
  connections, a pipeline or script call counting once); Redis server microseconds per update
  from INFO commandstats, top-level commands only (the issue's measure; see the class for how
  commands run inside scripts are kept from counting twice); INFO cpu microseconds per update
  (user + sys of the server process, its network work included) as a second view; commands
  per update.
  Then ``server_cmd_us_warm_per_update``: the same commandstats measure while the server
  re-runs every request of the run back to back (see `RedisProbe.replay`), so that it is
  busy and its caches are warm. During the run itself a server whose client is the bottleneck
  idles between requests and meets each one cold: on a slow machine that can triple the time
  commandstats charges (the raw GET+SET loop, two plain commands, reads 2-5 us there), and
  the inflation grows with the work a request does. The warm figure is what a busy server,
  the one whose CPU decides capacity, spends per update.
* PostgresProbe: transactions per update (pg_stat_database.xact_commit of the database).

`start()` and `stop()` bracket the workload; `finish(messages)` returns the figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol


class Probe(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def finish(self, messages: int) -> dict[str, Any]: ...


# The most requests a run may write and still be replayed (a 5-second run writes far fewer;
# an unbounded one may not).
REPLAY_LIMIT = 2_000_000
REPLAY_DB = b"15"  # the private server's database the replay runs in (the runs use 0)

# What redis-py sends when it opens a connection (the protocol, client name and library, the
# database): the replay's own connection stays on RESP2 in its own database.
_CONNECTION_SETUP = frozenset({b"HELLO", b"CLIENT", b"AUTH", b"SELECT", b"READONLY"})


def _pack(*args: bytes) -> bytes:
    """One command in RESP, as a client writes it."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _as_bytes(request: Any) -> bytes:
    """A request as `send_packed_command` got it (bytes, or a list of bytes and views)."""
    if isinstance(request, (bytes, str, memoryview)):
        request = [request]
    return b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in request)


def _command_name(data: bytes) -> bytes:
    """The name of the first command in RESP `data` ("*<n>\\r\\n$<len>\\r\\n<name>...")."""
    start = data.find(b"\r\n", data.find(b"$")) + 2
    return data[start:data.find(b"\r\n", start)].upper()


class _ReplayConnection:
    """A plain connection for the replay: writes RESP, counts replies until a marker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import hiredis

        self.reader, self.writer = reader, writer
        self.parse = hiredis.Reader()

    @classmethod
    async def open(cls, url: str) -> _ReplayConnection:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return cls(*await asyncio.open_connection(parts.hostname or "127.0.0.1",
                                                  parts.port or 6379))

    async def send(self, requests: Iterable[bytes], marker: bytes) -> None:
        """Write `requests`, then ECHO `marker`."""
        pending = 0
        for data in requests:
            self.writer.write(data)
            pending += len(data)
            if pending >= 1 << 18:
                await self.writer.drain()
                pending = 0
        self.writer.write(_pack(b"ECHO", marker))
        await self.writer.drain()

    async def replies_until(self, marker: bytes) -> int:
        """Read replies up to the echoed `marker`; return how many were errors."""
        errors = 0
        while True:
            reply = self.parse.gets()
            while reply is not False:
                if isinstance(reply, Exception):
                    errors += 1
                elif reply == marker:
                    return errors
                reply = self.parse.gets()
            data = await self.reader.read(1 << 20)
            if not data:
                raise ConnectionError("the server closed the replay connection")
            self.parse.feed(data)

    async def run(self, requests: Iterable[bytes], marker: bytes) -> int:
        """Send and read at once (the server's replies never pile up); errors met."""
        sending = asyncio.ensure_future(self.send(requests, marker))
        errors = await self.replies_until(marker)
        await sending
        return errors

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class RedisProbe:
    """Redis figures of one run, on the issue's terms.

    * ``round_trips_per_update``: request writes of redis-py's asyncio connections per update
      (a pipeline or a script call counts once).
    * ``server_cmd_us_per_update``: the issue's "Redis server CPU microseconds per update
      (from INFO commandstats)": the ``usec`` that commandstats charges to the commands the
      clients sent, per update. Redis 7 charges a command run inside a Lua script twice: in
      the script's own ``usec`` (cmdstat_evalsha times the whole script, its nested calls
      included) and again on the nested command's own line (cmdstat_hset, ...), so the plain
      sum of every line double counts. The probe therefore counts, client side, how many of
      each command the clients sent (``send_command`` and the pipelines' ``pack_commands``),
      and takes from each commandstats line only the share of its calls that were sent at top
      level: ``usec * min(1, sent / calls)``. A command only ever run inside scripts (the
      store's HSET, ZADD, ...) contributes nothing of its own (its time is in EVALSHA's), a
      script call contributes all its time, and a command run both ways (aiogram's GET, also
      run by the redis-py lock's release script) contributes its top-level calls at the
      command's average cost per call. EXEC is treated like a script: commandstats times it
      with the commands queued in its MULTI, which also have their own lines, so commands
      sent between MULTI and EXEC count as nested. The probe's own INFO calls are not
      counted.
    * ``server_cpu_us_per_update``: INFO cpu (user + sys of the whole server process, which
      includes its network work and its idle event loop), per update: a second view.
    * ``server_commands_per_update``: commands executed per update (commandstats calls, those
      run inside scripts included) and ``client_commands_per_update``: top-level commands
      sent per update.
    """

    def __init__(self, url: str, *, replay: bool = False) -> None:
        self.url = url
        self.replays = replay  # only on a server the benchmark started: the replay flushes
        self.round_trips = 0
        self.sent: dict[str, int] = {}
        self._patched: list[tuple[str, Any]] = []
        self._before: tuple[float, dict[str, tuple[int, int]]] = (0.0, {})
        self._after: tuple[float, dict[str, tuple[int, int]]] = (0.0, {})
        # Every request the clients wrote during the run, as written (for `replay`), up to
        # REPLAY_LIMIT of them; None once the run wrote more, or when nothing will replay.
        self.recorded: list[Any] | None = [] if replay else None

    async def _server_figures(self) -> tuple[float, dict[str, tuple[int, int]]]:
        """(server CPU seconds, commandstats line -> (calls, usec)), read on a connection of
        its own (before the counting starts and after it stopped)."""
        from redis.asyncio import Redis

        client = Redis.from_url(self.url)
        try:
            cpu = await client.info("cpu")
            stats = await client.info("commandstats")
        finally:
            await client.aclose()
        seconds = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        lines = {
            name[len("cmdstat_"):]: (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items() if name.startswith("cmdstat_")
        }
        return seconds, lines

    def _count(self, name: Any) -> None:
        if isinstance(name, bytes):
            name = name.decode()
        # "SCRIPT LOAD" (one argument or two words) is commandstats' "script|load".
        key = "|".join(str(name).lower().split())
        self.sent[key] = self.sent.get(key, 0) + 1

    async def start(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        self._before = await self._server_figures()
        probe = self
        send_packed = AbstractConnection.send_packed_command
        send_command = AbstractConnection.send_command
        pack_commands = AbstractConnection.pack_commands

        async def counting_send_packed(conn: Any, command: Any, check_health: bool = True) -> None:
            probe.round_trips += 1
            probe._record(command)
            await send_packed(conn, command, check_health)

        async def counting_send_command(conn: Any, *args: Any, **kwargs: Any) -> None:
            if args:
                name = args[0]
                # redis-py sends a two-word command name as one argument ("SCRIPT LOAD"),
                # or container commands as two (e.g. "CLIENT", "SETNAME").
                probe._count(name)
            await send_command(conn, *args, **kwargs)

        def counting_pack_commands(conn: Any, commands: Any) -> Any:
            commands = list(commands)
            nested = False
            for args in commands:
                if not args:
                    continue
                name = str(args[0].decode() if isinstance(args[0], bytes) else args[0]).upper()
                if name in ("EXEC", "DISCARD"):
                    nested = False
                if not nested:  # queued inside MULTI: run, and timed, within EXEC
                    probe._count(name)
                if name == "MULTI":
                    nested = True
            return pack_commands(conn, commands)

        self._patched = [
            ("send_packed_command", send_packed), ("send_command", send_command),
            ("pack_commands", pack_commands),
        ]
        setattr(AbstractConnection, "send_packed_command", counting_send_packed)  # noqa: B010
        setattr(AbstractConnection, "send_command", counting_send_command)  # noqa: B010
        setattr(AbstractConnection, "pack_commands", counting_pack_commands)  # noqa: B010

    def _record(self, request: Any) -> None:
        """Keep the request as written (its parts are immutable: nothing to copy now)."""
        recorded = self.recorded
        if recorded is not None:
            recorded.append(request)
            if len(recorded) > REPLAY_LIMIT:
                self.recorded = None  # too long a run to keep: no warm figure

    async def stop(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        for name, original in self._patched:
            setattr(AbstractConnection, name, original)
        self._patched = []
        self._after = await self._server_figures()

    def top_level_usec(
        self, before: dict[str, tuple[int, int]] | None = None,
        after: dict[str, tuple[int, int]] | None = None,
    ) -> float:
        """commandstats usec of the top-level commands (see the class docstring), between two
        readings (by default those around the run)."""
        before = self._before[1] if before is None else before
        after = self._after[1] if after is None else after
        total = 0.0
        for line, (calls, usec) in after.items():
            calls -= before.get(line, (0, 0))[0]
            usec -= before.get(line, (0, 0))[1]
            sent = self.sent.get(line, 0)
            if calls > 0 and sent > 0:
                total += usec * min(1.0, sent / calls)
        return total

    async def finish(self, messages: int) -> dict[str, Any]:
        if not messages:
            return {}
        cpu = self._after[0] - self._before[0]
        before, after = self._before[1], self._after[1]
        # The probe's own INFO calls between the two readings are not the workload's.
        commands = sum(
            calls - before.get(line, (0, 0))[0]
            for line, (calls, _) in after.items() if line != "info"
        )
        figures = {
            "round_trips_per_update": round(self.round_trips / messages, 3),
            "server_cmd_us_per_update": round(self.top_level_usec() / messages, 2),
            "server_cpu_us_per_update": round(cpu * 1e6 / messages, 2),
            "server_commands_per_update": round(commands / messages, 2),
            "client_commands_per_update": round(sum(self.sent.values()) / messages, 2),
        }
        warm = await self.replay() if self.replays else None
        if warm is not None:
            figures["server_cmd_us_warm_per_update"] = round(warm / messages, 2)
        return figures

    async def replay(self, *, keep: bool = False) -> float | None:
        """Re-run the recorded requests back to back in an empty database (REPLAY_DB) of the
        same server and return their top-level commandstats usec (None if the run was too
        long to record, or the replay met an error reply: then it did not redo the run).
        The database is emptied again afterwards, unless `keep` (to inspect it).

        Every run starts on keys of its own (a fresh prefix), and each client wrote a key's
        requests in order, one after the answer to the one before: sent in the recorded order
        on one connection, they find the same state and do the same work as in the run."""
        if not self.recorded:
            return None
        requests = (data for data in map(_as_bytes, self.recorded)
                    if _command_name(data) not in _CONNECTION_SETUP)
        conn = await _ReplayConnection.open(self.url)
        try:
            await conn.run([_pack(b"SELECT", REPLAY_DB), _pack(b"FLUSHDB")], b"ready")
            before = (await self._server_figures())[1]
            errors = await conn.run(requests, b"replayed")
            after = (await self._server_figures())[1]
            await conn.run([] if keep else [_pack(b"FLUSHDB")], b"clean")
        finally:
            await conn.close()
        return None if errors else self.top_level_usec(before, after)


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
