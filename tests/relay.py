"""A TCP relay between a test's client and a real server on loopback, for tests that watch or
hold back what crosses the wire (round trips, a server that stops answering)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

Side = Literal["client", "server"]


class TcpRelay:
    """Listens on a free loopback port and relays each connection to `host:port`; subclasses
    see every chunk first (`on_data`, which may wait)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port_to = host, port
        self.port = 0  # where clients connect, once entered
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def on_data(self, side: Side, data: bytes, link: dict[str, Any]) -> None:
        """Called with every chunk `side` sent, before it is passed on; `link` is a dict of
        the connection's own (both directions share it)."""

    async def __aenter__(self) -> Any:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port_to)
        link: dict[str, Any] = {}
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, "client", link)),
            asyncio.create_task(self._pipe(up_reader, writer, "server", link)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: Side,
        link: dict[str, Any],
    ) -> None:
        try:
            while data := await reader.read(65536):
                await self.on_data(side, data, link)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
