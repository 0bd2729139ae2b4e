"""PostgresStore's client-side backstop: a server (or network) that stops answering does not
hang a call. The server's statement_timeout cannot help there, so the store's watchdog closes
a connection whose statement is not answered within command_timeout + a margin, and the call
raises StoreUnavailable. A TCP relay that withholds the server's answers stands for the mute
server."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from backends import POSTGRES_URL
from chatstate.errors import StoreUnavailable
from chatstate.stores.postgres import PostgresStore
from relay import Side, TcpRelay

pytestmark = pytest.mark.postgres


class MutingRelay(TcpRelay):
    """Relays TCP to PostgreSQL; while muted, the server's bytes are held back."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._speaking = asyncio.Event()
        self._speaking.set()

    def mute(self) -> None:
        self._speaking.clear()

    def unmute(self) -> None:
        self._speaking.set()

    async def on_data(self, side: Side, data: bytes, link: dict[str, Any]) -> None:
        if side == "server":
            await self._speaking.wait()


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
