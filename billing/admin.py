"""Prices and budgets in Django's admin, through the same services as the API and the dashboard
(the same checks, the same audit entries). A price is never edited in place: a new price, from
its time on, is added; the history stays, so records keep what they cost."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from billing import services
from billing.models import Budget
from billing.spend import budget_statuses
from infra.errors import NebulaError
from keys.access import actor_for_user
from models_registry.models import ModelPrice


def _checked(form: Any, check: Any) -> Any:
    """A form whose clean() runs the service's validation, so a refusal shows on the form."""

    class CheckedForm(form):
        def clean(self) -> dict[str, Any]:
            data: dict[str, Any] = super().clean()
            if not self.errors:
                try:
                    check(data)
                except NebulaError as error:
                    field = error.param if error.param in self.fields else None
                    self.add_error(field, error.message)
            return data

    return CheckedForm


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin[ModelPrice]):
    list_display = ["model_name", "prompt_per_million", "completion_per_million", "effective_from"]
    list_filter = ["model_name"]
    search_fields = ["model_name"]
    fields = ["model_name", "prompt_per_million", "completion_per_million", "effective_from"]

    def has_change_permission(self, request: HttpRequest, obj: ModelPrice | None = None) -> bool:
        return False  # a change is a new price from its time on

    def has_delete_permission(self, request: HttpRequest, obj: ModelPrice | None = None) -> bool:
        return False

    def get_form(
        self, request: HttpRequest, obj: ModelPrice | None = None, change: bool = False, **kw: Any
    ) -> Any:
        def check(data: dict[str, Any]) -> None:
            services.price_check(
                model=data.get("model_name", ""),
                prompt_per_million=str(data.get("prompt_per_million", "")),
                completion_per_million=str(data.get("completion_per_million", "")),
            )

        return _checked(super().get_form(request, obj, change=change, **kw), check)

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool) -> None:
        saved = services.price_set(
            actor=actor_for_user(request.user),
            model=obj.model_name,
            prompt_per_million=str(obj.prompt_per_million),
            completion_per_million=str(obj.completion_per_million),
            effective_from=obj.effective_from,
        )
        obj.pk = saved.pk


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin[Budget]):
    list_display = ["target", "scope", "amount", "period", "spent", "operator_set", "updated_at"]
    list_filter = ["scope", "period"]
    search_fields = ["api_key__name", "api_key__prefix", "user__username", "team__name"]
    fields = ["scope", "api_key", "user", "team", "amount", "period"]
    autocomplete_fields = ["user"]
    raw_id_fields = ["api_key"]

    @admin.display(description="applies to")
    def target(self, obj: Budget) -> str:
        return obj.target_label

    @admin.display(description="spent this period")
    def spent(self, obj: Budget) -> str:
        status = budget_statuses([obj])[0]
        return f"{status.spent.normalize():f} ({status.percent:.0f}%)"

    def get_form(
        self, request: HttpRequest, obj: Budget | None = None, change: bool = False, **kw: Any
    ) -> Any:
        def check(data: dict[str, Any]) -> None:
            services.budget_check(
                scope=data.get("scope", obj.scope if obj else ""),
                amount=str(data.get("amount", "")),
                period=data.get("period", ""),
            )

        return _checked(super().get_form(request, obj, change=change, **kw), check)

    def get_readonly_fields(self, request: HttpRequest, obj: Budget | None = None) -> Any:
        return ["scope", "api_key", "user", "team"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        target = obj.api_key or obj.user or obj.team
        saved = services.budget_set(
            actor=actor_for_user(request.user),
            scope=obj.scope,
            target=target,
            amount=str(obj.amount),
            period=obj.period,
        )
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Budget) -> None:
        services.budget_delete(actor=actor_for_user(request.user), budget=obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for budget in queryset:
            services.budget_delete(actor=actor_for_user(request.user), budget=budget)
