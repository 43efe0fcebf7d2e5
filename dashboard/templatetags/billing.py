"""Budgets and prices on pages that other views render (the key page, the overview, the models
page): each tag asks `billing` what the logged-in person may see."""

from __future__ import annotations

from typing import Any

from django import template
from django.db.models import Q

from billing.access import budgets_visible_to
from billing.prices import current_prices
from billing.spend import BudgetStatus, budget_statuses
from dashboard.billing_forms import KeyBudgetForm, PriceForm
from keys.access import actor_for_user, can_change_key
from keys.models import ApiKey
from models_registry.models import ModelPrice

register = template.Library()


@register.simple_tag(takes_context=True)
def budget_alerts(context: dict[str, Any]) -> list[BudgetStatus]:
    """The budgets the viewer may see that are past their soft limit."""
    user = context["request"].user
    if not user.is_authenticated:
        return []
    statuses = budget_statuses(list(budgets_visible_to(actor_for_user(user))))
    return [status for status in statuses if status.alert]


@register.simple_tag(takes_context=True)
def key_budget(context: dict[str, Any], key: ApiKey) -> dict[str, Any]:
    """The key's own budget and what applies to it (its owner's, its team's), and whether the
    viewer may change the key's own."""
    actor = actor_for_user(context["request"].user)
    match = Q(api_key_id=key.pk) | Q(user_id=key.owner_id)
    if key.team_id is not None:
        match |= Q(team_id=key.team_id)
    applying = budgets_visible_to(actor).filter(match)
    statuses = budget_statuses(list(applying))
    own = next((s for s in statuses if s.budget.api_key_id == key.pk), None)
    may_set = can_change_key(actor, key) and (
        actor.is_operator or own is None or not own.budget.operator_set
    )
    initial = (
        {"amount": f"{own.budget.amount.normalize():f}", "period": own.budget.period} if own else {}
    )
    return {
        "own": own,
        "others": [s for s in statuses if s is not own],
        "may_set": may_set,
        "form": KeyBudgetForm(initial=initial),
    }


@register.simple_tag
def model_prices() -> list[ModelPrice]:
    return current_prices()


@register.simple_tag
def new_price_form() -> PriceForm:
    return PriceForm()


@register.filter
def money(value: Any) -> str:
    """An amount as typed: no trailing zeros, no float."""
    try:
        return f"{value.normalize():f}"
    except AttributeError:
        return str(value)
