"""What was spent: per key, user, team and model over a time range (for /metrics and the
dashboard), and where each budget stands in its current period (for soft-limit alerts)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from billing.budgets import budget_spent_in_db, period_bounds, spend_key
from billing.models import Budget
from billing.units import from_units
from infra.redis_client import REDIS_ERRORS, get_redis
from telemetry.models import RefusalTally, UsageDaily, UsageRecord

ZERO = Decimal(0)


def _money(value: Decimal | None) -> str:
    """Money as a string (JSON numbers are floats to most clients): all ten decimals."""
    return f"{(value or ZERO).quantize(Decimal('1e-10')):f}"


def spend_report(
    records: QuerySet[UsageRecord],
    days: QuerySet[UsageDaily] | None = None,
    tallies: QuerySet[RefusalTally] | None = None,
) -> dict[str, Any]:
    """Spend of `records` and of the rolled-up `days` (all already narrowed to what the reader
    may see and to the range; telemetry.retention rolls records and refusal tallies past the
    retention into days): the total, and per key, per key owner, per team and per model,
    dearest first, each with its requests (refused ones, which cost nothing, included)."""

    def grouped(*fields: str) -> list[dict[str, Any]]:
        rows = list(records.values(*fields).annotate(cost=Sum("cost"), requests=Count("id")))
        if days is not None:
            rows += days.values(*fields).annotate(cost=Sum("cost"), requests=Sum("requests"))
        if tallies is not None:
            rows += tallies.values(*fields).annotate(requests=Sum("count"))
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in rows:
            group = tuple(row[field] for field in fields)
            into = merged.setdefault(group, {**row, "cost": ZERO, "requests": 0})
            into["cost"] += row.get("cost") or ZERO
            into["requests"] += row["requests"] or 0
        ordered = sorted(merged.values(), key=lambda row: (-row["cost"], *map(str, row.values())))
        return [{**row, "cost": _money(row["cost"])} for row in ordered]

    total = records.aggregate(total=Sum("cost"))["total"] or ZERO
    if days is not None:
        total += days.aggregate(total=Sum("cost"))["total"] or ZERO
    keys = [
        {
            "key": {
                "id": row["api_key"],
                "name": row["api_key__name"],
                "prefix": row["api_key__prefix"],
            },
            "cost": row["cost"],
            "requests": row["requests"],
        }
        for row in grouped("api_key", "api_key__name", "api_key__prefix")
        if row["api_key"] is not None
    ]
    users = [
        {"user": row["api_key__owner__username"], "cost": row["cost"], "requests": row["requests"]}
        for row in grouped("api_key__owner__username")
        if row["api_key__owner__username"] is not None
    ]
    teams = [
        {
            "team": {"id": row["api_key__team"], "name": row["api_key__team__name"]},
            "cost": row["cost"],
            "requests": row["requests"],
        }
        for row in grouped("api_key__team", "api_key__team__name")
        if row["api_key__team"] is not None
    ]
    models = [
        {"model": row["model"], "cost": row["cost"], "requests": row["requests"]}
        for row in grouped("model")
        if row["model"]
    ]
    return {
        "total": _money(total),
        "keys": keys,
        "users": users,
        "teams": teams,
        "models": models,
    }


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    spent: Decimal  # in the current period; in Redis, reservations of requests under way too
    period_start: datetime | None
    period_end: datetime | None

    @property
    def percent(self) -> float:
        if not self.budget.amount:
            return 100.0 if self.spent > 0 else 0.0
        return float(self.spent / self.budget.amount * 100)

    @property
    def alert(self) -> bool:
        """Past the soft limit (NEBULA_BUDGET_ALERT_PERCENT of the amount)."""
        return self.percent >= settings.NEBULA_BUDGET_ALERT_PERCENT

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.budget.amount

    def as_dict(self) -> dict[str, Any]:
        return {
            "spent": _money(self.spent),
            "percent": round(self.percent, 2),
            "alert": self.alert,
            "exhausted": self.exhausted,
            "period_start": self.period_start.isoformat() if self.period_start else None,
            "period_end": self.period_end.isoformat() if self.period_end else None,
        }


def budget_statuses(budgets: list[Budget]) -> list[BudgetStatus]:
    """Where each budget stands: the spend Redis counts (what admission enforces), or, where
    Redis has none for this period yet, the records in the database."""
    now = timezone.now().astimezone(UTC)
    keys = [spend_key(b.pk, b.period, now) for b in budgets]
    values: list[Any] = [None] * len(budgets)
    if keys:
        with contextlib.suppress(*REDIS_ERRORS):
            values = list(get_redis().mget(keys))
    statuses = []
    for budget, raw in zip(budgets, values, strict=True):
        start, end = period_bounds(budget.period, now)
        if raw is not None:
            spent = from_units(int(raw))
        else:
            spent = budget_spent_in_db(budget.pk, start, end)
        statuses.append(BudgetStatus(budget, spent, start, end))
    return statuses
