"""Refusals that are counted rather than recorded one by one.

A request without a usable key (401) or over its key's limit (429) cost us almost nothing to
refuse, and a flood of them must not cost a database row each (4 threads sending a bad key wrote
5,596 rows in 10 s). They are tallied per minute in Redis (one pipelined round trip: the tally
and the Prometheus counter), and the usage ledger's consumers move each finished minute into
`RefusalTally` rows: one per (minute, key, endpoint, status, code), however many refusals.
Every other refusal (a bad request from a known key, an unknown model, a full fleet) is still
one usage record each: those are bounded by the key's rate limit (it is charged for them).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import redis
from django.db import transaction

from infra.logging import redact
from infra.redis_client import REDIS_ERRORS, get_async_redis
from keys.models import ApiKey
from telemetry.models import RefusalTally
from telemetry.prometheus import HASH as PROMETHEUS_HASH
from telemetry.prometheus import requests_field

logger = logging.getLogger(__name__)

TALLIED_STATUSES = frozenset({401, 429})
_PREFIX = "nebula:refusals:"
MINUTES = "nebula:refusals"  # the minutes that have tallies, scored by the minute
# A minute is moved into the database once it is this old (clocks of web processes differ a
# little; a refusal counted late into a minute already moved would be lost).
_SETTLED_AFTER_S = 120
_KEEP_S = 86_400  # a minute nobody moved (no ledger consumer ran) is kept this long


def _minute_key(minute: int) -> str:
    return f"{_PREFIX}{minute}"


def _field(
    *, key_id: int | None, key_prefix: str, endpoint: str, model: str, status: int, code: str
) -> str:
    # The model name is what the client sent: keep it out of the separator and short.
    model = redact(model.replace("|", "").replace("\x00", ""))[:64]
    return f"{key_id or ''}|{key_prefix}|{endpoint}|{model}|{status}|{code}"


async def refusal_tally(
    *,
    key_id: int | None,
    key_prefix: str,
    endpoint: str,
    model: str = "",
    status: int,
    code: str,
) -> None:
    """Count one refusal. Without Redis it is only logged: nothing else would be cheap."""
    minute = int(time.time() // 60) * 60
    pipe = get_async_redis().pipeline(transaction=False)
    pipe.hincrby(
        _minute_key(minute),
        _field(
            key_id=key_id,
            key_prefix=key_prefix,
            endpoint=endpoint,
            model=model,
            status=status,
            code=code,
        ),
        1,
    )
    pipe.expire(_minute_key(minute), _KEEP_S)
    pipe.zadd(MINUTES, {str(minute): minute})
    pipe.hincrbyfloat(PROMETHEUS_HASH, requests_field(key_prefix or "-", status), 1)
    try:
        await pipe.execute()
    except REDIS_ERRORS:
        logger.warning("could not count a %d refusal on %s: Redis is unreachable", status, endpoint)


def refusal_tallies_flush(client: redis.Redis) -> int:
    """Write every minute's tallies into the database; returns the rows written. Minutes old
    enough to be complete then leave Redis; the others are written again next time.

    Idempotent: a minute's row holds the minute's absolute count (from its hash), so writing a
    minute twice (it was still open, or a flush died before deleting it) changes nothing.
    """
    written = 0
    settled_before = time.time() - _SETTLED_AFTER_S - 60
    minutes: list[bytes] = client.zrange(MINUTES, 0, -1)  # type: ignore[assignment]
    for raw in minutes:
        minute = int(raw)
        name = _minute_key(minute)
        counts = client.hgetall(name)
        rows = []
        for field_b, count_b in counts.items():
            field = field_b.decode() if isinstance(field_b, bytes) else str(field_b)
            key_id, key_prefix, endpoint, model, status, code = field.split("|", 5)
            rows.append(
                RefusalTally(
                    minute=datetime.fromtimestamp(minute, tz=UTC),
                    api_key_id=int(key_id) if key_id else None,
                    key_prefix=key_prefix,
                    endpoint=endpoint,
                    model=model,
                    status=int(status),
                    error_code=code,
                    count=int(count_b),
                )
            )
        known = set(
            ApiKey.objects.filter(
                pk__in={row.api_key_id for row in rows if row.api_key_id}
            ).values_list("pk", flat=True)
        )
        for row in rows:
            if row.api_key_id not in known:
                row.api_key_id = None  # a key deleted since keeps its tallies, unlinked
        with transaction.atomic():
            RefusalTally.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["minute", "key_prefix", "endpoint", "model", "status", "error_code"],
                update_fields=["count", "api_key"],
            )
        if minute < settled_before:
            client.delete(name)
            client.zrem(MINUTES, raw)
        written += len(rows)
    return written
