"""What /prices and /budgets accept and return. Money is a decimal string both ways (a JSON
number is a binary float to most clients, and a float is not money)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from billing.models import Budget, Period, Scope
from billing.spend import BudgetStatus
from infra.serializers import StrictSerializer
from models_registry.models import ModelPrice


class Money(serializers.CharField):
    """A decimal amount as a string; JSON numbers are refused (floats lose cents)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError('Give money as a decimal string, like "2.50".')
        return str(super().to_internal_value(data))


class PriceSerializer(serializers.ModelSerializer[ModelPrice]):
    model = serializers.CharField(source="model_name")
    prompt_per_million = serializers.SerializerMethodField()
    completion_per_million = serializers.SerializerMethodField()

    class Meta:
        model = ModelPrice
        fields = ["id", "model", "prompt_per_million", "completion_per_million", "effective_from"]
        read_only_fields = fields

    def get_prompt_per_million(self, obj: ModelPrice) -> str:
        return f"{obj.prompt_per_million.normalize():f}"

    def get_completion_per_million(self, obj: ModelPrice) -> str:
        return f"{obj.completion_per_million.normalize():f}"


class PriceSetSerializer(StrictSerializer):
    model = serializers.CharField(required=False, max_length=64)
    prompt_per_million = Money()
    completion_per_million = Money()
    effective_from = serializers.DateTimeField(required=False)


class BudgetSetSerializer(StrictSerializer):
    scope = serializers.ChoiceField(choices=Scope.values)
    api_key = serializers.IntegerField(required=False, min_value=1)
    user = serializers.CharField(required=False, max_length=150)
    team = serializers.IntegerField(required=False, min_value=1)
    amount = Money()
    period = serializers.ChoiceField(choices=Period.values, default=Period.MONTH)


class BudgetUpdateSerializer(StrictSerializer):
    amount = Money(required=False)
    period = serializers.ChoiceField(choices=Period.values, required=False)


def budget_representation(status: BudgetStatus) -> dict[str, Any]:
    budget: Budget = status.budget
    target: dict[str, Any]
    if budget.api_key is not None:
        target = {"id": budget.api_key.pk, "name": budget.api_key.name}
        target["prefix"] = budget.api_key.prefix
    elif budget.team is not None:
        target = {"id": budget.team.pk, "name": budget.team.name}
    else:
        target = {"username": budget.user.get_username() if budget.user else None}
    return {
        "object": "budget",
        "id": budget.pk,
        "scope": budget.scope,
        "target": target,
        "amount": f"{budget.amount.normalize():f}",
        "period": budget.period,
        "operator_set": budget.operator_set,
        "updated_at": budget.updated_at.isoformat(),
        **status.as_dict(),
    }
