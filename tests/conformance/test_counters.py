"""Named counters (funnels, time series)."""

from __future__ import annotations

import asyncio
import uuid

from chatstate.stores.base import Store


async def test_incr_and_read_by_prefix(store: Store) -> None:
    p = f"t{uuid.uuid4().hex[:8]}:"
    await store.incr({p + "funnel:start": 1, p + "funnel:email": 1})
    await store.incr({p + "funnel:start": 2, p + "other": 5})
    await asyncio.gather(*(store.incr({p + "funnel:start": 1}) for _ in range(20)))
    assert await store.read_counters(p + "funnel:") == {
        p + "funnel:start": 23, p + "funnel:email": 1,
    }
    everything = await store.read_counters(p)
    assert everything[p + "other"] == 5 and len(everything) == 3
    assert await store.read_counters(p + "nothing") == {}
