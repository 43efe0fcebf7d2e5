"""Celery's Redis transport (kombu's), minus a cost it pays on every message and two ways it
crashes a worker when Redis drops.

Cost: kombu keeps a delivered message in an "unacked" hash until the task acknowledges it (what
makes `acks_late` survive a dead worker). Each of those bookkeeping steps, two per task, builds
a brand-new `redis.Redis` client over the channel's connection pool, and with redis-py 8 that
means filling a case-insensitive table of ~200 response callbacks: 13% of a worker's CPU at
concurrency 50 in `make bench` (docs/BENCHMARKS.md). A client over a connection pool is
thread-safe and holds no connection of its own, so one per channel and pool does the same work.

Crashes: with `acks_late`, every running job is an unacknowledged message. When the connection
to Redis drops, kombu closes the channel, and then
- tries to put those messages back on the queue through the channel it just closed, and
- once reconnected, acknowledges each job that finishes on that old, closed channel.
Both reach for the closed channel's connection settings and fail with an AttributeError, which
Celery treats as unrecoverable: the worker process exits. Every Redis restart under load took
the workers down with it (tests/reliability/test_redis_faults_live.py, test_soak_live.py).
Here a closed channel raises a connection error instead, which kombu and Celery handle (log and
go on). Nothing is lost: the messages stay in kombu's unacknowledged set, which kombu restores
after the visibility timeout, and a job delivered twice is dropped by its claim in Redis
(inference.jobs); web processes resend the jobs of a lost worker long before that anyway.

Selected by CELERY_BROKER_TRANSPORT; the broker URL stays `redis://…`.
"""

from __future__ import annotations

import logging
from typing import Any

import redis as redis_py
from kombu.transport import redis

logger = logging.getLogger(__name__)


class ChannelClosed(redis_py.exceptions.ConnectionError):
    """The channel's broker connection is gone (kombu treats this as a connection error)."""


class QoS(redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except ChannelClosed:
            delivered: dict[str, Any] = self._delivered or {}
            logger.warning(
                "lost the broker holding %d unacknowledged message(s); they return to the queue "
                "after the visibility timeout",
                len(delivered),
            )
            delivered.clear()

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except ChannelClosed:
            logger.warning(
                "could not acknowledge message %s: its broker connection was lost meanwhile; "
                "should it be delivered again, its job's claim drops it",
                delivery_tag,
            )


# celery-types' kombu stubs leave out the channel's private `_create_client`, hence the ignores.
class Channel(redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise ChannelClosed("this broker channel was closed when its connection dropped")
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        client = self._shared_client
        # The pool is replaced after a disconnect; a client of the old one must not be reused.
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(redis.Transport):
    Channel = Channel
