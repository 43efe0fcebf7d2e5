"""The dashboard's spend and budgets page, and the forms that set prices and budgets (thin
views over `billing.services`; what anyone may see comes from `billing.access` and
`telemetry.services`)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from billing import services
from billing.access import budgets_visible_to
from billing.models import Budget, Scope
from billing.prices import current_prices
from billing.spend import budget_statuses, spend_report
from dashboard.billing_forms import SPEND_WINDOWS, BudgetForm, KeyBudgetForm, PriceForm
from dashboard.forms import attach_error
from dashboard.views import dashboard_view
from infra.errors import NebulaError, NotFound
from keys.access import Actor, key_get_for, require_operator, team_get_for
from telemetry.services import (
    TimeRange,
    days_visible_to,
    records_visible_to,
    tallies_visible_to,
)


def _billing_page(
    request: HttpRequest,
    actor: Actor,
    *,
    price_form: PriceForm | None = None,
    budget_form: BudgetForm | None = None,
    status: int = 200,
) -> HttpResponse:
    window = request.GET.get("window", "24h")
    if window not in dict(SPEND_WINDOWS):
        window = "24h"
    time_range = TimeRange.parse(None, None, window)
    records = records_visible_to(actor).filter(
        created_at__gte=time_range.since, created_at__lt=time_range.until
    )
    return render(
        request,
        "dashboard/billing.html",
        status=status,
        context={"section": "billing"}
        | dict(
            operator=actor.is_operator,
            window=window,
            windows=SPEND_WINDOWS,
            spend=spend_report(
                records,
                days_visible_to(actor).filter(day__gte=time_range.since, day__lt=time_range.until),
                tallies_visible_to(actor).filter(
                    minute__gte=time_range.since, minute__lt=time_range.until
                ),
            ),
            budgets=budget_statuses(list(budgets_visible_to(actor))),
            prices=current_prices(),
            price_form=price_form or (PriceForm() if actor.is_operator else None),
            budget_form=budget_form or (BudgetForm() if actor.is_operator else None),
        ),
    )


@dashboard_view
def billing(request: HttpRequest, actor: Actor) -> HttpResponse:
    return _billing_page(request, actor)


@dashboard_view
@require_POST
def price_add(request: HttpRequest, actor: Actor) -> HttpResponse:
    require_operator(actor)
    form = PriceForm(request.POST)
    if form.is_valid():
        try:
            price = services.price_set(actor=actor, **form.cleaned_data)
        except NebulaError as error:
            attach_error(form, error)
        else:
            messages.success(
                request,
                f"{price.model_name} costs {price.prompt_per_million.normalize():f} per million "
                f"prompt tokens and {price.completion_per_million.normalize():f} per million "
                "completion tokens from now on.",
            )
            return redirect(request.POST.get("next") or "dashboard-billing")
    return _billing_page(request, actor, price_form=form, status=400)


def _budget_target(actor: Actor, scope: str, target: str) -> Any:
    if scope == Scope.KEY:
        return key_get_for(actor, target)
    if scope == Scope.TEAM:
        return team_get_for(actor, target)
    user = get_user_model().objects.filter(username=target).first()
    if user is None:
        raise NotFound(f"No user '{target}'.", param="target", code="user_not_found")
    return user


@dashboard_view
@require_POST
def budget_add(request: HttpRequest, actor: Actor) -> HttpResponse:
    require_operator(actor)
    form = BudgetForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            target = _budget_target(actor, data["scope"], data["target"])
            budget = services.budget_set(
                actor=actor,
                scope=data["scope"],
                target=target,
                amount=data["amount"],
                period=data["period"],
            )
        except NebulaError as error:
            error.param = "target" if error.param not in form.fields else error.param
            attach_error(form, error)
        else:
            messages.success(request, f"Budget set: {budget}.")
            return redirect("dashboard-billing")
    return _billing_page(request, actor, budget_form=form, status=400)


@dashboard_view
@require_POST
def key_budget(request: HttpRequest, actor: Actor, key_id: int) -> HttpResponse:
    """Set or remove a key's own budget from its page."""
    key = key_get_for(actor, key_id)
    form = KeyBudgetForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The budget was not saved: check the period.")
        return redirect("dashboard-key", key_id=key.pk)
    amount = form.cleaned_data["amount"].strip()
    try:
        if amount:
            budget = services.budget_set(
                actor=actor,
                scope=Scope.KEY,
                target=key,
                amount=amount,
                period=form.cleaned_data["period"],
            )
            messages.success(request, f"Budget set: {budget}.")
        elif (own := Budget.objects.filter(api_key=key).first()) is not None:
            services.budget_delete(actor=actor, budget=own)
            messages.success(request, f"“{key.name}” has no budget of its own now.")
    except NebulaError as error:
        messages.error(request, error.message)
    return redirect("dashboard-key", key_id=key.pk)
