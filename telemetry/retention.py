"""Retention: usage records older than NEBULA_USAGE_RETENTION_DAYS become daily aggregates.

`usage_rollup` (the Celery beat task `telemetry.usage_rollup`, the `rollup_usage` command) adds
whole UTC days of records, and of refusal tallies, into `UsageDaily` (per day, key, model and
status: requests, cancelled, tokens, cost) and deletes them, a batch per transaction. Reports
read both (telemetry.services), so totals, errors by status, tokens and cost of a rolled-up day
are what they were; what a day loses is the single request (the request log, latency and TTFT
percentiles), which is what retention means.

Running twice at once (two beats by mistake, or the command during the task) cannot count a
record twice: a batch's records are locked (PostgreSQL; SQLite has one writer at a time), so a
second rollup waits for the first and then finds them gone, and a transaction is rolled back
(and the batch retried) unless it deleted every record it counted.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from telemetry.models import RefusalTally, UsageDaily, UsageRecord

logger = logging.getLogger(__name__)

ROLLUP_TASK = "telemetry.usage_rollup"
BATCH = 5000
_ATTEMPTS = 5

_Group = tuple[datetime, int | None, str, str, int]  # day, key id, key prefix, model, status


@dataclass
class _Sums:
    requests: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)


@dataclass(frozen=True)
class RollupResult:
    records: int
    tallies: int
    cutoff: datetime | None


class _Raced(Exception):
    """Another rollup took some of this batch's rows first."""


def day_start(moment: datetime) -> datetime:
    utc = moment.astimezone(UTC)
    return datetime(utc.year, utc.month, utc.day, tzinfo=UTC)


def rollup_cutoff(*, now: datetime | None = None, days: int | None = None) -> datetime | None:
    """Records before this (a UTC midnight) are rolled up; None when retention is off (0)."""
    days = settings.NEBULA_USAGE_RETENTION_DAYS if days is None else days
    if days <= 0:
        return None
    return day_start((now or timezone.now()) - timedelta(days=days))


def _add(groups: dict[_Group, _Sums]) -> None:
    # In one order, whoever runs: two rollups locking the same daily rows cannot deadlock.
    for (day, key_id, prefix, model, status), sums in sorted(
        groups.items(), key=lambda item: repr(item[0])
    ):
        row = (
            UsageDaily.objects.select_for_update()
            .filter(day=day, api_key_id=key_id, key_prefix=prefix, model=model, status=status)
            .first()
        )
        if row is None:
            UsageDaily.objects.create(
                day=day,
                api_key_id=key_id,
                key_prefix=prefix,
                model=model,
                status=status,
                requests=sums.requests,
                cancelled=sums.cancelled,
                prompt_tokens=sums.prompt_tokens,
                completion_tokens=sums.completion_tokens,
                cost=sums.cost,
            )
            continue
        UsageDaily.objects.filter(pk=row.pk).update(
            requests=F("requests") + sums.requests,
            cancelled=F("cancelled") + sums.cancelled,
            prompt_tokens=F("prompt_tokens") + sums.prompt_tokens,
            completion_tokens=F("completion_tokens") + sums.completion_tokens,
            cost=F("cost") + sums.cost,
        )


def _records_batch(cutoff: datetime, size: int) -> int:
    with transaction.atomic():
        rows = list(
            UsageRecord.objects.select_for_update()
            .filter(created_at__lt=cutoff)
            .order_by("created_at", "id")
            .values_list(
                "id", "created_at", "api_key_id", "key_prefix", "model", "status",
                "finish_reason", "prompt_tokens", "completion_tokens", "cost",
            )[:size]
        )  # fmt: skip
        if not rows:
            return 0
        groups: dict[_Group, _Sums] = defaultdict(_Sums)
        for _pk, created, key_id, prefix, model, status, finish, prompt, completion, cost in rows:
            sums = groups[(day_start(created), key_id, prefix, model, status)]
            sums.requests += 1
            sums.cancelled += finish == "cancelled"
            sums.prompt_tokens += prompt
            sums.completion_tokens += completion
            sums.cost += cost
        _add(groups)
        deleted, _ = UsageRecord.objects.filter(pk__in=[row[0] for row in rows]).delete()
        if deleted != len(rows):
            raise _Raced
        return len(rows)


def _tallies_batch(cutoff: datetime, size: int) -> int:
    with transaction.atomic():
        rows = list(
            RefusalTally.objects.select_for_update()
            .filter(minute__lt=cutoff)
            .order_by("minute", "id")
            .values_list("id", "minute", "api_key_id", "key_prefix", "model", "status", "count")[
                :size
            ]
        )
        if not rows:
            return 0
        groups: dict[_Group, _Sums] = defaultdict(_Sums)
        for _pk, minute, key_id, prefix, model, status, count in rows:
            groups[(day_start(minute), key_id, prefix, model, status)].requests += count
        _add(groups)
        deleted, _ = RefusalTally.objects.filter(pk__in=[row[0] for row in rows]).delete()
        if deleted != len(rows):
            raise _Raced
        return len(rows)


def usage_rollup(*, now: datetime | None = None, batch: int = BATCH) -> RollupResult:
    """Roll up and delete every record and tally older than the retention."""
    cutoff = rollup_cutoff(now=now)
    if cutoff is None:
        return RollupResult(records=0, tallies=0, cutoff=None)
    totals = {"records": 0, "tallies": 0}
    for name, step in (("records", _records_batch), ("tallies", _tallies_batch)):
        attempts = 0
        while True:
            try:
                done = step(cutoff, batch)
            except _Raced:
                attempts += 1
                if attempts >= _ATTEMPTS:
                    logger.warning("usage rollup kept racing another one; leaving it the rest")
                    break
                continue
            if not done:
                break
            totals[name] += done
    if totals["records"] or totals["tallies"]:
        logger.info(
            "rolled up %d usage records and %d refusal tallies older than %s",
            totals["records"],
            totals["tallies"],
            cutoff.date(),
        )
    return RollupResult(records=totals["records"], tallies=totals["tallies"], cutoff=cutoff)


def rollup_thread_start(*, interval: float | None = None) -> threading.Event:
    """The standalone layout's beat (no Redis, no Celery): a thread in the web process that
    rolls up every NEBULA_USAGE_ROLLUP_SECONDS, the first time one interval after start, as
    beat does. Set the returned event to stop it."""
    every = float(settings.NEBULA_USAGE_ROLLUP_SECONDS) if interval is None else interval
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                usage_rollup()
            except Exception:  # the next round tries again; the web process serves on
                logger.exception("usage rollup failed")
            finally:
                close_old_connections()

    threading.Thread(target=loop, name="nebula-usage-rollup", daemon=True).start()
    return stop
