"""The async Redis pools: one per event loop, sized for what runs on it."""

import asyncio

from infra import aio
from infra.redis_client import get_async_redis, reset_clients


async def _pool_size() -> int:
    return get_async_redis().connection_pool.max_connections


def test_a_workers_background_loop_has_a_connection_for_every_stream_it_may_relay(settings):
    # Each relayed engine stream has one publish in flight; a pool smaller than the streams
    # made them wait past the pool's timeout under load, and fail as if Redis were down.
    settings.NEBULA_WORKER_CONCURRENCY = 200
    reset_clients()
    try:
        assert aio.run(_pool_size()) == 216
        assert asyncio.run(_pool_size()) == 64  # a web process's loop: bursts share 64
    finally:
        reset_clients()
