"""PostgresStore's client-side backstop: a server (or network) that stops answering does not
hang a call. The server's statement_timeout cannot help there, so the store's watchdog closes
a connection whose statement is not answered within command_timeout + a margin, and the call
raises StoreUnavailable. A TCP relay that withholds the server's answers stands for the mute
server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from backends import POSTGRES_URL, drop_postgres_schema, require_postgres
from chatstate.errors import StoreUnavailable
from chatstate.stores.postgres import PostgresStore

pytestmark = pytest.mark.postgres


class MutingRelay:
    """Relays TCP to PostgreSQL; while muted, the server's bytes are held back."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port_to = host, port
        self.port = 0
        self._speaking = asyncio.Event()
        self._speaking.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def mute(self) -> None:
        self._speaking.clear()

    def unmute(self) -> None:
        self._speaking.set()

    async def __aenter__(self) -> MutingRelay:
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
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, from_server=False)),
            asyncio.create_task(self._pipe(up_reader, writer, from_server=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_server: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if from_server:
                    await self._speaking.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    require_postgres()
    name = f"cs_test_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_postgres_schema(name)


def _url_through(relay: MutingRelay, schema: str, **options: Any) -> str:
    parts = urlsplit(POSTGRES_URL)
    netloc = f"{parts.username or 'postgres'}@127.0.0.1:{relay.port}"
    query = "&".join([f"schema={schema}", *(f"{k}={v}" for k, v in options.items())])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


async def test_a_server_that_stops_answering_raises_store_unavailable(schema: str) -> None:
    parts = urlsplit(POSTGRES_URL)
    async with MutingRelay(parts.hostname or "127.0.0.1", parts.port or 5432) as relay:
        store = PostgresStore.from_url(
            _url_through(relay, schema, command_timeout=0.3, read_retries=0, pool_max_size=2))
        await store.open()
        try:
            assert await store.load("telegram:user:1") is None
            relay.mute()
            with pytest.raises(StoreUnavailable, match="did not answer"):
                await asyncio.wait_for(store.load("telegram:user:1"), 30.0)
            assert store._busy == {}  # the watchdog let go of the connection it closed
            relay.unmute()
            # The pool replaced the closed connection: the store works again.
            lease, record = await store.lease_and_load("telegram:user:1", "worker", 30.0)
            assert lease is not None and record is None
        finally:
            relay.unmute()
            await store.close()


async def test_the_watchdog_sleeps_when_no_statement_runs(schema: str) -> None:
    parts = urlsplit(POSTGRES_URL)
    async with MutingRelay(parts.hostname or "127.0.0.1", parts.port or 5432) as relay:
        store = PostgresStore.from_url(_url_through(relay, schema, command_timeout=0.2))
        await store.open()
        try:
            for _ in range(3):
                assert await store.load("telegram:user:1") is None
            assert store._busy == {}
            for _ in range(100):  # it stops once it finds nothing busy
                if store._watchdog is None:
                    break
                await asyncio.sleep(0.05)
            assert store._watchdog is None
        finally:
            await store.close()
