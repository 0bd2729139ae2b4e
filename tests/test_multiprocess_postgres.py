"""Correct updates across many instances on PostgreSQL:

* no lost update with 4 OS processes x 64 concurrent tasks x 20 keys through SessionManager
  (the worker body is tests/mp_workload.py, shared with the other stores' tests).

Lease expiry and renewal through the engine: tests/test_leases_across_managers.py.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from backends import POSTGRES_URL, drop_postgres_schema, require_postgres
from chatstate.stores.postgres import PostgresStore, upgrade
from mp_workload import Workload, run_processes, verify_opened

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_no_lost_updates_across_processes() -> None:
    require_postgres()
    schema = f"cs_test_{uuid.uuid4().hex[:12]}"
    # A bounded pool per process (4 x 8 connections) keeps the server's connection slots free
    # for the rest of the suite; 64 tasks per process queue on it.
    work = Workload(url=POSTGRES_URL, options={"schema": schema, "pool_max_size": 8})

    async def prepare() -> None:
        await upgrade(f"{POSTGRES_URL}?schema={schema}")

    asyncio.run(prepare())
    try:
        run_processes(work)
        asyncio.run(verify_opened(work, PostgresStore.from_url(POSTGRES_URL, schema=schema)))
    finally:
        asyncio.run(drop_postgres_schema(schema))
