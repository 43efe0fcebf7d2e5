"""Spend and budgets keep counting the records that retention rolled up into daily totals."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.budgets import budget_spent_in_db
from billing.prices import price_tables_forget
from billing.services import budget_set, price_set
from billing.spend import spend_report
from keys.access import SYSTEM
from telemetry.models import UsageDaily, UsageRecord
from telemetry.retention import usage_rollup
from tests.billing.test_prices import _record

pytestmark = pytest.mark.django_db


def test_rolled_up_days_still_count_in_spend_and_in_a_budgets_rebuilt_spend(
    settings, make_key, alice
):
    settings.NEBULA_USAGE_RETENTION_DAYS = 30
    key, _ = make_key(alice)
    now = timezone.now()

    price_set(
        actor=SYSTEM,
        model="nebula-7b",
        prompt_per_million="1",
        completion_per_million="3",
        effective_from=now - timedelta(days=90),
    )
    price_tables_forget()
    for day in (45, 44, 40):  # past the retention: rolled up and deleted
        _record(f"old-{day}", at=now - timedelta(days=day), prompt=1000, completion=500, key=key)
    _record("recent", at=now - timedelta(hours=1), prompt=2000, completion=100, key=key)
    budget = budget_set(actor=SYSTEM, scope="key", target=key, amount="100", period="total")
    since = now - timedelta(days=60)

    def spent() -> tuple[Decimal, list[tuple[str, int]], Decimal]:
        records = UsageRecord.objects.filter(created_at__gte=since)
        days = UsageDaily.objects.filter(day__gte=since)
        report = spend_report(records, days)
        per_key = [(row["cost"], row["requests"]) for row in report["keys"]]
        return Decimal(report["total"]), per_key, budget_spent_in_db(budget.pk, None, None)

    before = spent()
    assert usage_rollup().records == 3
    assert UsageRecord.objects.count() == 1

    assert spent() == before
    total = Decimal("0.0075") + Decimal("0.0023")  # 3 × (0.001 + 0.0015), and the recent one
    assert before == (total, [(f"{total:.10f}", 4)], total)
