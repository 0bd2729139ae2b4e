"""The benchmark's warm Redis figure replays a run's requests: the replay must redo the run.

Checked on chatstate's RedisStore (leases, scripts, history, indexes, at concurrency 1 and
16): after the replay, the replay's database holds exactly what the run left in its own."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from benchmarks.common import Workload, run_workload
from benchmarks.probes import REPLAY_DB, RedisProbe, _pack
from benchmarks.servers import private_redis
from benchmarks.systems import chatstate_on, redis_store_url

from redis_servers import require_redis_binaries


async def _contents(client: Any) -> dict[bytes, Any]:
    """Every key and its value (hashes, lists, sets, sorted sets, strings)."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        if kind == "hash":
            out[key] = await client.hgetall(key)
        elif kind == "list":
            out[key] = await client.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = await client.smembers(key)
        elif kind == "zset":
            out[key] = await client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = await client.get(key)
    return out


@pytest.mark.parametrize("concurrency", [1, 16])
async def test_the_replay_leaves_what_the_run_left(concurrency: int) -> None:
    require_redis_binaries()
    async with private_redis() as url:
        workload = Workload(users=40, messages=5, concurrency=concurrency)
        async with chatstate_on(lambda: redis_store_url(url))(workload) as cycle:
            probe = RedisProbe(url, replay=True)
            await probe.start()
            _, latencies, _ = await run_workload(cycle, workload, 0)
            await probe.stop()
        assert len(latencies) == 200
        usec = await probe.replay(keep=True)
        assert usec is not None and usec > 0
        run = aioredis.Redis.from_url(url)
        # (The URL's database would win over a db= argument.)
        replayed = aioredis.Redis.from_url(url.rsplit("/", 1)[0] + "/" + REPLAY_DB.decode())
        try:
            ran = await _contents(run)
            del ran[next(k for k in ran if k.endswith(b":layout"))]  # written by open()
            assert len(ran) > 40
            assert (await replayed.connection_pool.get_connection()).db == int(REPLAY_DB)
            assert await _contents(replayed) == ran
        finally:
            await run.aclose()
            await replayed.aclose()


async def test_an_error_reply_means_no_warm_figure() -> None:
    require_redis_binaries()
    async with private_redis() as url:
        probe = RedisProbe(url, replay=True)
        probe.recorded = [_pack(b"INCR", b"k"), _pack(b"HGET", b"k", b"f")]
        assert await probe.replay() is None  # HGET of a string: WRONGTYPE
        probe.recorded = [_pack(b"INCR", b"k")]
        assert await probe.replay() is not None


async def test_a_probe_on_a_given_server_neither_records_nor_replays() -> None:
    # With CHATSTATE_BENCH_REDIS_URL the server is the user's: nothing may be flushed there.
    require_redis_binaries()
    async with private_redis() as url:
        workload = Workload(users=5, messages=2, concurrency=1)
        async with chatstate_on(lambda: redis_store_url(url))(workload) as cycle:
            probe = RedisProbe(url)
            await probe.start()
            _, latencies, _ = await run_workload(cycle, workload, 0)
            await probe.stop()
        assert probe.recorded is None
        figures = await probe.finish(len(latencies))
        assert "server_cmd_us_warm_per_update" not in figures
        assert figures["round_trips_per_update"] > 0
