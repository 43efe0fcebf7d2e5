"""Celery's Redis transport (kombu), minus two ways it crashes a worker when Redis drops.

With `acks_late`, every running job is an unacknowledged message. When the connection to Redis
drops, kombu closes the channel, and then
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


class Channel(redis.Channel):
    QoS = QoS

    def _create_client(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise ChannelClosed("this broker channel was closed when its connection dropped")
        return super()._create_client(asynchronous)  # type: ignore[misc]


class Transport(redis.Transport):
    Channel = Channel
