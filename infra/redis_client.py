"""Redis connections for Nebula's coordination: rate limits, GPU slots, token streams, heartbeats,
the usage ledger and the cache epoch.

One sync client per process (thread-safe pool; used by Celery workers and sync views) and one
async client per event loop (used by the async /v1 views and Channels consumers). In standalone
mode both talk to one in-process server (fakeredis with Lua), so the coordination code is the same
code either way.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from infra import aio

_lock = threading.Lock()
_sync_client: redis.Redis | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)
_fake_server: Any = None


def _client_options() -> dict[str, Any]:
    # Fail fast: a request that cannot reach Redis gets a 503 within NEBULA_REDIS_TIMEOUT, and
    # a Redis that accepts connections but does not answer (stopped, partitioned) counts as
    # down too rather than holding every request for a multiple of the timeout.
    return {
        "socket_connect_timeout": min(1.0, settings.NEBULA_REDIS_TIMEOUT),
        "socket_timeout": settings.NEBULA_REDIS_TIMEOUT,
        "health_check_interval": 15,
    }


def _retry() -> Retry:
    # Reconnect on a dropped connection; never retry a command that timed out (the server is
    # not answering, and retries would multiply the wait).
    return Retry(
        ExponentialBackoff(cap=0.2, base=0.02), retries=2, supported_errors=(RedisConnectionError,)
    )


def _async_retry() -> AsyncRetry:
    return AsyncRetry(
        ExponentialBackoff(cap=0.2, base=0.02), retries=2, supported_errors=(RedisConnectionError,)
    )


def _fake() -> Any:
    global _fake_server
    if _fake_server is None:
        import fakeredis

        _fake_server = fakeredis.FakeServer()
    return _fake_server


def get_redis() -> redis.Redis:
    """The process-wide synchronous client."""
    global _sync_client
    if _sync_client is None:
        with _lock:
            if _sync_client is None:
                if settings.NEBULA_STANDALONE:
                    import fakeredis

                    _sync_client = fakeredis.FakeRedis(server=_fake())
                else:
                    _sync_client = redis.Redis.from_url(
                        settings.REDIS_URL, retry=_retry(), **_client_options()
                    )
    return _sync_client


def get_async_redis() -> aioredis.Redis:
    """The asyncio client of the running event loop (connections cannot cross loops)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        if settings.NEBULA_STANDALONE:
            from fakeredis import aioredis as fake_aioredis

            client = fake_aioredis.FakeRedis(server=_fake())
        else:
            # A blocking pool waits for a free connection under a burst instead of failing
            # with "Too many connections". Commands here take well under a millisecond, so 64
            # connections serve any burst; more only hurt: a cold process hit by hundreds of
            # requests opened one connection per request at once, and on a busy machine some
            # handshakes outlasted the 1 s connect timeout (503s, and a flaky test in CI).
            # A worker's background loop relays up to NEBULA_WORKER_CONCURRENCY engine streams,
            # each with a publish in flight: under load the 64 were all held past the pool's
            # wait and deltas failed as "Redis down" (make bench, scenario 8, 100 streams).
            size = 64
            if aio.is_background_loop(loop):
                size = max(size, settings.NEBULA_WORKER_CONCURRENCY + 16)
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.REDIS_URL,
                max_connections=size,
                timeout=2,
                retry=_async_retry(),
                **_client_options(),
            )
            client = aioredis.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


def new_async_connection() -> aioredis.Redis:
    """A dedicated async client (for a pub/sub subscriber that must not share a pool)."""
    if settings.NEBULA_STANDALONE:
        from fakeredis import aioredis as fake_aioredis

        return fake_aioredis.FakeRedis(server=_fake())
    return aioredis.Redis.from_url(settings.REDIS_URL, **_client_options())


def new_sync_connection(**options: Any) -> redis.Redis:
    """A dedicated sync client, e.g. for blocking reads that must not hold a pooled connection."""
    if settings.NEBULA_STANDALONE:
        import fakeredis

        return fakeredis.FakeRedis(server=_fake())
    return redis.Redis.from_url(settings.REDIS_URL, **{**_client_options(), **options})


def reset_clients() -> None:
    """Forget clients (after fork, or when tests switch databases)."""
    global _sync_client
    with _lock:
        _sync_client = None
        _async_clients.clear()


REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
)
