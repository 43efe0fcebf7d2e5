"""Celery's Redis transport (kombu), with one crash fixed.

When the connection to Redis drops while a worker holds an unacknowledged message (with
`acks_late`, any job that is running), kombu closes the channel's connection pool and then tries
to put the message back on the queue through that pool, which fails with an AttributeError that
Celery treats as unrecoverable: the worker process exits. Every Redis restart under load would
take the workers down with it. Here that failure is logged instead; the message stays in
kombu's unacknowledged set, which kombu itself restores after the visibility timeout, and web
processes resend the jobs of a lost worker long before that (see inference.services).

Selected by CELERY_BROKER_TRANSPORT; the broker URL stays `redis://…`.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis

logger = logging.getLogger(__name__)


class QoS(redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except AttributeError:
            delivered: dict[str, Any] = self._delivered or {}
            logger.warning(
                "lost the broker holding %d unacknowledged message(s); they return to the queue "
                "after the visibility timeout",
                len(delivered),
            )
            delivered.clear()


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
