"""Correct updates across many instances on one SQLite file:

* no lost update with 4 OS processes x 64 concurrent tasks x 20 keys through SessionManager
  (the worker body is tests/mp_workload.py, shared with the other stores' tests), with the
  default ``shared=auto``: each store sees the others open the file and takes leases.

Two plain processes incrementing one record: tests/test_store_sqlite.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chatstate.stores.sqlite import SQLiteStore
from mp_workload import Workload, run_processes, verify_opened

pytestmark = [pytest.mark.slow]


def test_no_lost_updates_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    work = Workload(url=f"sqlite:///{path}")

    async def prepare() -> None:  # the schema exists before four processes race to make it
        store = SQLiteStore(str(path))
        await store.open()
        await store.close()

    asyncio.run(prepare())
    run_processes(work)
    asyncio.run(verify_opened(work, SQLiteStore(str(path))))
