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

Intake in batches: kombu takes one message per round trip (BRPOP), then records it as
unacknowledged in a second one, so a burst of 100 jobs took 200 round trips through the
consumer thread, one job after another. Here, once a BRPOP has returned a message, the same
consumer takes the rest of what it may hold (its prefetch allowance) in one more round trip:
a script pops them and records each as unacknowledged, atomically, exactly as kombu's own
bookkeeping would (so kombu acknowledges, restores and redelivers them as usual, and a worker
that dies holding them loses nothing: they are in the unacknowledged set, not in limbo).

Selected by CELERY_BROKER_TRANSPORT; the broker URL stays `redis://…`.
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from typing import Any

import redis as redis_py
from kombu.transport import redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from infra.lua import LuaScript

logger = logging.getLogger(__name__)


class ChannelClosed(redis_py.exceptions.ConnectionError):
    """The channel's broker connection is gone (kombu treats this as a connection error)."""


# KEYS: the list BRPOP answered from, kombu's unacked hash, its unacked index. ARGV: at most
# how many, now (Unix seconds, as kombu scores the index). Pops messages and records each as
# kombu's QoS.append would: index[tag] = now, unacked[tag] = [message, exchange, routing key].
_TAKE_MORE = LuaScript(
    """
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOP', KEYS[1])
  if not item then break end
  local properties = cjson.decode(item)['properties']
  local info = properties['delivery_info'] or {}
  local tag = properties['delivery_tag']
  redis.call('ZADD', KEYS[3], ARGV[2], tag)
  redis.call('HSET', KEYS[2], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'] or '')
    .. ',' .. cjson.encode(info['routing_key'] or '') .. ']')
  taken[#taken + 1] = item
end
return taken
"""
)


class QoS(redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        recorded: set[str] = getattr(self.channel, "_recorded", set())
        if delivery_tag in recorded:
            # Taken by `_TAKE_MORE`, which recorded it in Redis already: only the in-memory
            # bookkeeping is left to do.
            recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)

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


# celery-types' kombu stubs leave out the channel's private members (`_create_client`,
# `connection_errors`, `_queue_cycle`, …), hence the ignores.
class Channel(redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorded: set[str] = set()

    def _brpop_read(self, **options: Any) -> bool:
        """kombu's own (5.x), plus the rest of the burst in one more round trip."""
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:  # type: ignore[attr-defined]
                # As kombu: disconnect so the next iteration reconnects.
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            key, item = dest__item
            dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)  # type: ignore[attr-defined]
            self.connection._deliver(loads(bytes_to_str(item)), dest)
            self._take_more(key, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # type: ignore[attr-defined]

    def _take_more(self, key: bytes, queue: str) -> None:
        # What the prefetch allowance leaves, the message just delivered counted.
        room = self.qos.can_consume_max_estimate()
        if not room:
            return
        try:
            items = _TAKE_MORE(
                self.client,
                [bytes_to_str(key), self.unacked_key, self.unacked_index_key],
                [room, time.time()],
            )
        except self.connection_errors:  # type: ignore[attr-defined]
            return  # kombu notices the lost connection on its next read
        for item in items:
            payload = loads(bytes_to_str(item))
            self._recorded.add(payload["properties"]["delivery_tag"])
            self.connection._deliver(payload, queue)

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
