"""Budgets on the request path: which apply to a key, what a request reserves, and settling.

Admission (`inference.gateway`) asks `budget_charge` for what a request must reserve and
against which spend keys; the admission script (`billing.lua` fragments) checks and charges
them with the rate limits. Whoever ends the job calls `budget_settle`. The budgets that apply
to a key (its own, its owner's, its team's) are cached per process for one cache epoch, like
the key itself: changing a budget bumps the epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import redis
import redis.asyncio as aioredis
from django.db.models import Q, Sum

from billing.lua import SETTLE, hold_key
from billing.models import Budget, Period, Scope
from billing.prices import Price, price_table_current
from billing.units import from_units, to_units
from infra.db import run_db
from infra.epoch import EpochCache, current_epoch
from infra.errors import RateLimited
from keys.models import ApiKey
from telemetry.models import UsageDaily, UsageRecord

# A hold outlives any job (the longest stream included); one that expires unsettled leaves its
# reservation counted until the period ends: never an overspend.
HOLD_TTL_SECONDS = 86_400


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """A budget as admission needs it."""

    id: int
    scope: str
    label: str
    amount_units: int
    period: str


def period_bounds(period: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The period containing `now` (UTC): [start, end), or (None, None) for "total"."""
    now = now.astimezone(UTC)
    if period == Period.DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == Period.MONTH:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        return start, end
    return None, None


def spend_key(budget_id: int, period: str, now: datetime) -> str:
    start, _ = period_bounds(period, now)
    label = "total" if start is None else f"{period}-{start:%Y%m%d}"
    return f"nebula:budget:{budget_id}:{label}"


def _limit(budget: Budget) -> BudgetLimit:
    return BudgetLimit(
        id=budget.pk,
        scope=budget.scope,
        label=budget.target_label,
        amount_units=to_units(budget.amount),
        period=budget.period,
    )


def budgets_for_key_load(key_id: int) -> tuple[BudgetLimit, ...]:
    """The key's own budget, its owner's, and its team's (in that order), from the database."""
    key = ApiKey.objects.filter(pk=key_id).values("owner_id", "team_id").first()
    if key is None:
        return ()
    match = Q(api_key_id=key_id) | Q(user_id=key["owner_id"])
    if key["team_id"] is not None:
        match |= Q(team_id=key["team_id"])
    order = {Scope.KEY: 0, Scope.USER: 1, Scope.TEAM: 2}
    budgets = Budget.objects.filter(match).select_related("api_key", "user", "team")
    return tuple(_limit(b) for b in sorted(budgets, key=lambda b: order[Scope(b.scope)]))


_key_budgets: EpochCache[int, tuple[BudgetLimit, ...]] = EpochCache("budgets")


async def budgets_for_key(key_id: int) -> tuple[BudgetLimit, ...]:
    cached = _key_budgets.get(key_id)
    if isinstance(cached, tuple):
        return cached
    epoch = current_epoch()
    budgets = await run_db(budgets_for_key_load, key_id)
    _key_budgets.put(key_id, budgets, epoch=epoch)
    return budgets


@dataclass(frozen=True)
class BudgetCharge:
    """What one request reserves (`reserve_units`, its worst-case cost) and against what."""

    request_id: str
    budgets: tuple[BudgetLimit, ...]
    spend_keys: tuple[str, ...]
    reserve_units: int
    price: Price
    at: datetime

    def script_keys(self) -> list[str]:
        return [hold_key(self.request_id), *self.spend_keys]

    def script_args(self) -> list[int]:
        return [
            self.reserve_units,
            self.price.prompt_units,
            self.price.completion_units,
            HOLD_TTL_SECONDS,
            *(budget.amount_units for budget in self.budgets),
        ]


async def budget_charge(
    *,
    request_id: str,
    key_id: int,
    model: str,
    worst_case_tokens: tuple[int, int] | None,
    token_cost: int,
) -> BudgetCharge | None:
    """What the request reserves against the key's budgets; None when none applies.

    `worst_case_tokens` is (prompt tokens, the most completion tokens the request may make, all
    choices together). A submission that does not say prices its token cost (prompt plus the
    reserved completion) at the dearer of the two prices: more, never less, than it can cost.
    """
    budgets = await budgets_for_key(key_id)
    if not budgets:
        return None
    price = (await price_table_current()).at(model, time.time())
    if worst_case_tokens is not None:
        prompt, completion = worst_case_tokens
        reserve = prompt * price.prompt_units + completion * price.completion_units
    else:
        reserve = token_cost * max(price.prompt_units, price.completion_units)
    now = datetime.now(UTC)
    return BudgetCharge(
        request_id=request_id,
        budgets=budgets,
        spend_keys=tuple(spend_key(b.id, b.period, now) for b in budgets),
        reserve_units=reserve,
        price=price,
        at=now,
    )


def budget_spent_in_db(budget_id: int, start: datetime | None, end: datetime | None) -> Decimal:
    """What the records of a budget's keys cost within [start, end) (None: unbounded), the
    days rolled up past the retention (telemetry.retention) included: a day counts when its
    midnight is in the period, and periods start at midnight."""
    budget = Budget.objects.filter(pk=budget_id).first()
    if budget is None:
        return Decimal(0)
    total = Decimal(0)
    for rows, when in (
        (UsageRecord.objects.all(), "created_at"),
        (UsageDaily.objects.all(), "day"),
    ):
        if budget.scope == Scope.KEY:
            rows = rows.filter(api_key_id=budget.api_key_id)
        elif budget.scope == Scope.USER:
            rows = rows.filter(api_key__owner_id=budget.user_id)
        elif budget.team_id is not None:
            rows = rows.filter(api_key__team_id=budget.team_id)
        if start is not None:
            rows = rows.filter(**{f"{when}__gte": start})
        if end is not None:
            rows = rows.filter(**{f"{when}__lt": end})
        total += rows.aggregate(total=Sum("cost"))["total"] or Decimal(0)
    return total


async def budgets_warm(client: aioredis.Redis, charge: BudgetCharge, cold: list[int]) -> None:
    """Rebuild the spend keys the admission script found missing (1-based indices into the
    charge's budgets) from the database, with a TTL to their period's end. SET NX: if another
    process rebuilt one meanwhile (and requests were charged to it since), that one stands."""
    for index in cold:
        budget = charge.budgets[index - 1]
        start, end = period_bounds(budget.period, charge.at)
        spent = await run_db(budget_spent_in_db, budget.id, start, end)
        await client.set(
            charge.spend_keys[index - 1],
            to_units(spent),
            nx=True,
            pxat=int(end.timestamp() * 1000) if end is not None else None,
        )


def budget_settle(
    client: redis.Redis, *, request_id: str, prompt_tokens: int, completion: int
) -> None:
    """Replace the request's reservation by what it cost (once; later calls do nothing)."""
    SETTLE(client, [hold_key(request_id)], [prompt_tokens, completion])


async def budget_settle_async(
    client: aioredis.Redis, *, request_id: str, prompt_tokens: int, completion: int
) -> None:
    await SETTLE.acall(client, [hold_key(request_id)], [prompt_tokens, completion])


_PERIOD_WORDS = {Period.DAY: "today", Period.MONTH: "this month", Period.TOTAL: "in total"}


def budget_refusal(charge: BudgetCharge, *, index: int, spent_units: int) -> RateLimited:
    """OpenAI's 429 for a quota used up, naming the budget and its figures."""
    budget = charge.budgets[index - 1]
    left = max(budget.amount_units - spent_units, 0)
    when = _PERIOD_WORDS.get(Period(budget.period), "")
    error = RateLimited(
        f"You exceeded your current quota: the budget of {budget.label} is "
        f"{from_units(budget.amount_units).normalize():f} {when}; "
        f"{from_units(spent_units).normalize():f} is spent or reserved by requests under way, "
        f"{from_units(left).normalize():f} is left, and this request could cost up to "
        f"{from_units(charge.reserve_units).normalize():f}. Lower max_tokens, wait for the "
        "requests under way to finish"
        + (" or for the next period" if budget.period != Period.TOTAL else "")
        + ", or ask an operator to raise the budget.",
        code="insufficient_quota",
    )
    error.type = "insufficient_quota"
    return error
