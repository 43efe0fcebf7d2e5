"""Price and budget operations, for DRF, the dashboard, the admin and commands: each checks
who acts (`billing.access`, `keys.access`), validates, writes, records the action in the audit
log in the same transaction, and bumps the cache epoch so every process sees it on its next
request (`billing.prices`, `billing.budgets`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.access import authorize_budget_set
from billing.models import Budget, Period, Scope
from billing.units import MAX_AMOUNT, MAX_PRICE, PRICE_PLACES
from infra.epoch import epoch_bump_on_commit
from infra.errors import Conflict, InvalidRequest
from keys.access import Actor, require_operator
from keys.models import ApiKey, Team
from keys.services import MODEL_NAME_RE
from models_registry.models import ModelPrice
from telemetry.audit import audit_by


def _decimal(value: object, *, param: str, places: int, most: Decimal) -> Decimal:
    """A non-negative amount with at most `places` decimals, given as a string or number
    (floats are refused by the serializers before this: a binary fraction is not money)."""
    if isinstance(value, bool | float):
        raise InvalidRequest(f'{param} must be a decimal string, like "2.50".', param=param)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidRequest(f"{param} must be a decimal number.", param=param) from None
    if not amount.is_finite() or amount < 0 or amount > most:
        raise InvalidRequest(f"{param} must be a number from 0 to {most}.", param=param)
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        raise InvalidRequest(f"{param} has at most {places} decimals.", param=param)
    return amount


def price_snapshot(price: ModelPrice) -> dict[str, Any]:
    return {
        "model": price.model_name,
        "prompt_per_million": str(price.prompt_per_million.normalize()),
        "completion_per_million": str(price.completion_per_million.normalize()),
        "effective_from": price.effective_from.isoformat(),
    }


def price_check(
    *, model: str, prompt_per_million: object, completion_per_million: object
) -> tuple[Decimal, Decimal]:
    """The prices as exact decimals, or a 400 naming what is wrong (no write)."""
    if not isinstance(model, str) or not MODEL_NAME_RE.match(model):
        raise InvalidRequest("model must be a model name.", param="model")
    prompt = _decimal(
        prompt_per_million, param="prompt_per_million", places=PRICE_PLACES, most=MAX_PRICE
    )
    completion = _decimal(
        completion_per_million, param="completion_per_million", places=PRICE_PLACES, most=MAX_PRICE
    )
    return prompt, completion


@transaction.atomic
def price_set(
    *,
    actor: Actor,
    model: str,
    prompt_per_million: object,
    completion_per_million: object,
    effective_from: datetime | None = None,
) -> ModelPrice:
    """A new price for `model` from `effective_from` (now by default) on; the history before it
    stays, so records already made keep what they cost. Operators only."""
    require_operator(actor)
    prompt, completion = price_check(
        model=model,
        prompt_per_million=prompt_per_million,
        completion_per_million=completion_per_million,
    )
    start = effective_from or timezone.now()
    if timezone.is_naive(start):
        raise InvalidRequest("effective_from needs a time zone.", param="effective_from")
    before_row = (
        ModelPrice.objects.filter(model_name=model, effective_from__lte=start)
        .order_by("-effective_from")
        .first()
    )
    try:
        with transaction.atomic():
            price = ModelPrice.objects.create(
                model_name=model,
                prompt_per_million=prompt,
                completion_per_million=completion,
                effective_from=start,
                created_by=actor.user if getattr(actor.user, "pk", None) else None,
            )
    except IntegrityError:
        raise Conflict(
            f"'{model}' already has a price from {start.isoformat()}.", code="price_exists"
        ) from None
    audit_by(
        actor,
        "price.set",
        target_type="price",
        target=price,
        label=model,
        before=price_snapshot(before_row) if before_row is not None else None,
        after=price_snapshot(price),
    )
    epoch_bump_on_commit()
    return price


def budget_snapshot(budget: Budget) -> dict[str, Any]:
    return {
        "scope": budget.scope,
        "target": budget.target_label,
        "amount": str(budget.amount.normalize()),
        "period": budget.period,
    }


def _target(scope: str, target: Any) -> dict[str, Any]:
    if scope == Scope.KEY and isinstance(target, ApiKey):
        return {"api_key": target}
    if scope == Scope.TEAM and isinstance(target, Team):
        return {"team": target}
    if scope == Scope.USER and target is not None and hasattr(target, "get_username"):
        return {"user": target}
    raise InvalidRequest(f"A {scope} budget needs a {scope} to apply to.", param=scope)


def budget_check(*, scope: str, amount: object, period: str) -> Decimal:
    """The amount as an exact decimal, or a 400 naming what is wrong (no write)."""
    if scope not in Scope.values:
        raise InvalidRequest("scope must be key, user or team.", param="scope")
    if period not in Period.values:
        raise InvalidRequest("period must be day, month or total.", param="period")
    return _decimal(amount, param="amount", places=10, most=MAX_AMOUNT)


@transaction.atomic
def budget_set(
    *, actor: Actor, scope: str, target: Any, amount: object, period: str = Period.MONTH
) -> Budget:
    """Set the budget of a key, a user or a team (creating it, or replacing its amount and
    period). The spend already made counts: a new or changed budget applies to the current
    period's records as they are in the database (and in Redis, for an unchanged period)."""
    clean = budget_check(scope=scope, amount=amount, period=period)
    where = _target(scope, target)
    existing = Budget.objects.select_for_update().filter(**where).first()
    authorize_budget_set(actor, scope=scope, key=where.get("api_key"), existing=existing)
    before = budget_snapshot(existing) if existing is not None else None
    budget = existing or Budget(scope=scope, **where)
    budget.amount, budget.period = clean, period
    budget.operator_set = actor.is_operator
    budget.updated_at = timezone.now()
    try:
        with transaction.atomic():
            budget.save()
    except IntegrityError:
        # Another request created this target's budget at the same moment.
        raise Conflict(
            f"The budget of {budget.target_label} was just set by someone else; try again.",
            code="budget_exists",
        ) from None
    after = budget_snapshot(budget)
    if after != before:
        audit_by(
            actor,
            "budget.set",
            target_type="budget",
            target=budget,
            label=budget.target_label,
            before=before,
            after=after,
        )
    epoch_bump_on_commit()
    return budget


@transaction.atomic
def budget_delete(*, actor: Actor, budget: Budget) -> None:
    authorize_budget_set(actor, scope=budget.scope, key=budget.api_key, existing=budget)
    before = budget_snapshot(budget)
    audit_by(
        actor,
        "budget.delete",
        target_type="budget",
        target=budget,
        label=budget.target_label,
        before=before,
    )
    budget.delete()
    epoch_bump_on_commit()
