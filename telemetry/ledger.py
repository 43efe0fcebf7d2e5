"""The usage ledger: every request's record goes through a Redis stream into the database.

Producers (web processes for refused or abandoned requests, workers for jobs that ran) append a
`UsageEvent` to `nebula:usage` — for workers inside the same script that frees the GPU slot, so
a job cannot finish without its record. Consumers (a thread in every worker, or in the web
process when standalone) read the stream as one consumer group, insert in batches, and only then
acknowledge. A consumer that dies leaves its entries pending; another claims them after a while.
The request id is unique in the table and inserts ignore conflicts, so an entry handled twice is
still one row.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from django.db import DataError, IntegrityError, close_old_connections, transaction

from billing.prices import price_table_for_ledger
from infra.db import run_db
from infra.errors import DATABASE_ERRORS
from infra.events import OVERVIEW_GROUP, OverviewEventPayload, broadcast
from infra.redis_client import REDIS_ERRORS, get_async_redis, get_redis, new_sync_connection
from keys.models import ApiKey
from keys.services import keys_touch_last_used
from telemetry.events import STREAM, UsageEvent, encode
from telemetry.models import UsageRecord
from telemetry.prometheus import metrics_observe
from telemetry.refusals import refusal_tallies_flush

logger = logging.getLogger(__name__)

GROUP = "ledger"
# Records the database refused (malformed): kept for an operator to look at, never dropped.
DEAD_LETTERS = "nebula:usage:dead"
_BATCH = 500
_CLAIM_IDLE_MS = 30_000
# After a batch smaller than _BATCH, wait this long before reading again, so records reach the
# database in batches of a quarter second's worth. One transaction (and one Prometheus update)
# per request cost a worker more CPU than running the requests did at a few hundred a second
# (`make bench`, docs/BENCHMARKS.md); a record is at most this much later in the database.
_LINGER_SECONDS = 0.25
# How often a consumer moves settled minutes of refusal tallies into the database.
_TALLY_SECONDS = 15.0


async def usage_record(event: UsageEvent) -> None:
    """Append a record from a web process. Falls back to the database if Redis is down."""
    try:
        await get_async_redis().xadd(STREAM, {"d": encode(event)})
    except REDIS_ERRORS:
        await run_db(functools.partial(usage_write_batch, [event], redis_up=False))


def _decode(fields: dict[bytes, bytes]) -> UsageEvent | None:
    raw = fields.get(b"d")
    if raw is None:
        return None
    event: UsageEvent = orjson.loads(raw)
    # The worker's final message found nobody listening: the web process (and so the client)
    # went away before the answer arrived.
    if fields.get(b"delivered") == b"0" and event["status"] == 200:
        event["status"] = 499
        event["finish_reason"] = "cancelled"
        event["error_code"] = "client_gone"
    return event


def usage_write_batch(events: list[UsageEvent], *, redis_up: bool = True) -> int:
    """Insert records (idempotent by request id); update keys' last use; feed Prometheus.

    With `redis_up=False` (the fallback while Redis is down) only the database is written: each
    Redis call would just wait out its timeout.
    """
    if not events:
        return 0
    # A key deleted since (with its owner) keeps its records, without the link.
    key_ids = {event["key_id"] for event in events if event["key_id"] is not None}
    known = set(ApiKey.objects.filter(pk__in=key_ids).values_list("pk", flat=True))
    # Each record's cost, once, at the price in effect when it was made (billing.prices).
    prices = price_table_for_ledger(get_redis() if redis_up else None)
    rows = [
        UsageRecord(
            request_id=event["request_id"],
            api_key_id=event["key_id"] if event["key_id"] in known else None,
            key_prefix=event["key_prefix"],
            model=event["model"],
            endpoint=event["endpoint"],
            client=event["client"],
            worker=event["worker"],
            status=event["status"],
            finish_reason=event["finish_reason"],
            error_code=event["error_code"],
            stream=event["stream"],
            prompt_tokens=event["prompt_tokens"],
            completion_tokens=event["completion_tokens"],
            queue_ms=event["queue_ms"],
            ttft_ms=event["ttft_ms"],
            latency_ms=event["latency_ms"],
            created_at=datetime.fromtimestamp(event["created_at"], tz=UTC),
            cost=prices.cost(
                event["model"],
                event["created_at"],
                event["prompt_tokens"],
                event["completion_tokens"],
            ),
        )
        for event in events
    ]
    last_used: dict[int, datetime] = {}
    for row in rows:
        if row.api_key_id is not None and row.status < 400:
            last_used[row.api_key_id] = max(
                last_used.get(row.api_key_id, row.created_at), row.created_at
            )
    with transaction.atomic():
        existing = set(
            UsageRecord.objects.filter(request_id__in=[row.request_id for row in rows]).values_list(
                "request_id", flat=True
            )
        )
        fresh = [row for row in rows if row.request_id not in existing]
        UsageRecord.objects.bulk_create(fresh, ignore_conflicts=True, batch_size=500)
        keys_touch_last_used(last_used)
    if not redis_up:
        return len(fresh)
    inserted = {row.request_id for row in fresh}
    try:
        metrics_observe([event for event in events if event["request_id"] in inserted])
    except REDIS_ERRORS:
        logger.warning("could not update Prometheus aggregates", exc_info=True)
    if fresh:
        _announce_new_usage()
    return len(fresh)


def _announce_new_usage() -> None:
    """Open overview pages recompute their numbers. The event carries none: each consumer
    computes what its own user may see."""
    payload: OverviewEventPayload = {"type": "overview.changed"}
    broadcast(OVERVIEW_GROUP, payload)


class LedgerConsumer:
    """Moves usage events from the stream into the database until stopped."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stop = threading.Event()
        self._client: redis.Redis | None = None
        self._unacknowledged = True  # entries a previous run of this consumer left pending

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            # Its own connection: blocking reads must not hold a pooled one.
            self._client = new_sync_connection(socket_timeout=10)
        return self._client

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def run(self) -> None:
        next_tallies = 0.0
        while not self.stop.is_set():
            try:
                self.ensure_group()
                while not self.stop.is_set():
                    if 0 < self.drain_once(block_ms=1000) < _BATCH:
                        self.stop.wait(_LINGER_SECONDS)
                    if time.monotonic() >= next_tallies:
                        refusal_tallies_flush(self.client)
                        next_tallies = time.monotonic() + _TALLY_SECONDS
            except REDIS_ERRORS:
                logger.warning("usage ledger lost Redis; retrying in 1 s")
                self._client = None
                self.stop.wait(1.0)
            except redis.exceptions.ResponseError as error:
                if "NOGROUP" in str(error):  # the stream was deleted (Redis restarted)
                    continue
                logger.exception("usage ledger error")
                self.stop.wait(1.0)
            except DATABASE_ERRORS:
                # Entries stay pending in the stream; the next round retries them.
                logger.warning("usage ledger cannot reach the database; retrying in 1 s")
                close_old_connections()
                self.stop.wait(1.0)
            except Exception:
                logger.exception("usage ledger error; retrying in 1 s")
                close_old_connections()
                self.stop.wait(1.0)

    def drain_once(self, block_ms: int = 0) -> int:
        """Handle one batch: abandoned entries of dead consumers first, then new ones."""
        claimed = self.client.xautoclaim(
            STREAM, GROUP, self.name, min_idle_time=_CLAIM_IDLE_MS, start_id="0-0", count=_BATCH
        )
        entries: list[tuple[bytes, dict[bytes, bytes]]] = [
            entry for entry in claimed[1] if entry and entry[1]
        ]
        if not entries and self._unacknowledged:
            # A batch this consumer read but could not write (the database was down): retry
            # it now rather than after _CLAIM_IDLE_MS.
            response: Any = self.client.xreadgroup(GROUP, self.name, {STREAM: "0"}, count=_BATCH)
            for _stream, stream_entries in response or []:
                entries.extend(entry for entry in stream_entries if entry and entry[1])
            self._unacknowledged = bool(entries)
        if not entries:
            response = self.client.xreadgroup(
                GROUP, self.name, {STREAM: ">"}, count=_BATCH, block=block_ms or None
            )
            for _stream, stream_entries in response or []:
                entries.extend(stream_entries)
        if not entries:
            return 0
        self._unacknowledged = True
        events = [event for _id, fields in entries if (event := _decode(fields)) is not None]
        close_old_connections()
        try:
            usage_write_batch(events)
        except (IntegrityError, DataError):
            # One bad record must not block the ledger: write one by one, set aside the bad.
            for event in events:
                try:
                    usage_write_batch([event])
                except (IntegrityError, DataError):
                    logger.exception("usage record %s refused; moved aside", event["request_id"])
                    self.client.xadd(DEAD_LETTERS, {"d": encode(event)})
        ids = [entry_id for entry_id, _ in entries]
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(STREAM, GROUP, *ids)
        pipe.xdel(STREAM, *ids)
        pipe.execute()
        self._unacknowledged = False
        return len(entries)


def ledger_flush(timeout: float = 10.0) -> None:
    """Drain the stream now (tests, shutdown). Returns when nothing is left or on timeout."""
    consumer = LedgerConsumer(f"flush-{time.monotonic_ns()}")
    consumer.ensure_group()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if consumer.drain_once() == 0:
                pending = consumer.client.xpending(STREAM, GROUP)
                if not pending or not pending.get("pending"):
                    refusal_tallies_flush(consumer.client)
                    return
                time.sleep(0.05)
    finally:
        consumer.client.xgroup_delconsumer(STREAM, GROUP, consumer.name)
        consumer.client.close()
