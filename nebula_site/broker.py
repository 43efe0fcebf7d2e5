"""Celery's Redis transport (kombu's), minus a cost it pays on every message.

kombu keeps a delivered message in an "unacked" hash until the task acknowledges it (what
makes `acks_late` survive a dead worker). Each of those bookkeeping steps, two per task, builds
a brand-new `redis.Redis` client over the channel's connection pool, and with redis-py 8 that
means filling a case-insensitive table of ~200 response callbacks: 13% of a worker's CPU at
concurrency 50 in `make bench` (docs/BENCHMARKS.md). A client over a connection pool is
thread-safe and holds no connection of its own, so one per channel and pool does the same work.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


# celery-types' kombu stubs leave out the channel's private `_create_client`, hence the ignores.
class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        client = self._shared_client
        # The pool is replaced after a disconnect; a client of the old one must not be reused.
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
