"""KeyLocks: per-key FIFO locks whose map holds only keys that are held or awaited."""

from __future__ import annotations

import asyncio

import pytest

from chatstate.locks import KeyLocks


async def test_an_uncontended_key_is_taken_and_given_back_without_waiting() -> None:
    locks = KeyLocks()
    assert locks.try_acquire("a")
    assert locks.locked("a") and len(locks) == 1
    assert not locks.try_acquire("a")  # held: refused, never waits
    locks.release("a")
    assert not locks.locked("a") and len(locks) == 0


async def test_waiters_arriving_at_a_held_key_get_it_in_order() -> None:
    locks = KeyLocks()
    assert locks.try_acquire("k")  # held alone until the first waiter comes
    order: list[int] = []

    async def wait(i: int) -> None:
        assert await locks.acquire("k")
        order.append(i)
        await asyncio.sleep(0)
        locks.release("k")

    tasks = [asyncio.create_task(wait(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert order == [] and locks.locked("k")
    locks.release("k")
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert len(locks) == 0


async def test_a_waiter_that_gives_up_leaves_nothing_behind() -> None:
    locks = KeyLocks()
    assert locks.try_acquire("k")
    assert not await locks.acquire("k", wait=0.01)  # timed out
    cancelled = asyncio.create_task(locks.acquire("k"))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert locks.locked("k")
    locks.release("k")
    assert len(locks) == 0
    assert locks.try_acquire("k")  # free again, as if never contended
    locks.release("k")
    assert len(locks) == 0
