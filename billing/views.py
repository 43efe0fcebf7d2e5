"""`/prices`, `/models/<name>/prices` and `/budgets`: parse, find what the caller may see, call
one service, render."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import services
from billing.access import budget_get_for, budgets_visible_to
from billing.models import Budget, Scope
from billing.serializers import (
    BudgetSetSerializer,
    BudgetUpdateSerializer,
    PriceSerializer,
    PriceSetSerializer,
    budget_representation,
)
from billing.spend import budget_statuses
from infra.errors import InvalidRequest, NotFound
from infra.serializers import validated_body
from keys.access import (
    Actor,
    actor_from_request,
    key_get_for,
    require_key_manager,
    team_get_for,
)
from models_registry.models import ModelPrice


def _prices(model: str | None) -> Response:
    prices = ModelPrice.objects.order_by("model_name", "-effective_from")
    if model:
        prices = prices.filter(model_name=model)
    return Response({"object": "list", "data": PriceSerializer(prices, many=True).data})


def _price_set(request: Request, model: str | None) -> Response:
    body = validated_body(PriceSetSerializer, request)
    name = model or body.pop("model", None)
    body.pop("model", None)
    if not name:
        raise InvalidRequest("model is required.", param="model")
    price = services.price_set(actor=actor_from_request(request), model=name, **body)
    return Response(PriceSerializer(price).data, status=status.HTTP_201_CREATED)


class PriceListView(APIView):
    """Every price, newest first per model: the history stays (records keep what they cost)."""

    @extend_schema(
        operation_id="prices_list",
        parameters=[OpenApiParameter("model", str, description="Only this model's prices.")],
        responses={200: dict},
    )
    def get(self, request: Request) -> Response:
        return _prices(request.query_params.get("model"))

    @extend_schema(
        operation_id="prices_set",
        request=PriceSetSerializer,
        responses={201: PriceSerializer},
    )
    def post(self, request: Request) -> Response:
        return _price_set(request, None)


class ModelPriceView(APIView):
    """The same, for one model by name (prices outlive deployments of that name)."""

    @extend_schema(operation_id="model_prices_list", responses={200: dict})
    def get(self, request: Request, name: str) -> Response:
        return _prices(name)

    @extend_schema(
        operation_id="model_prices_set",
        request=PriceSetSerializer,
        responses={201: PriceSerializer},
    )
    def post(self, request: Request, name: str) -> Response:
        return _price_set(request, name)


def _budget(budget: Budget) -> dict[str, Any]:
    return budget_representation(budget_statuses([budget])[0])


def _target(actor: Actor, body: dict[str, Any]) -> Any:
    scope = body["scope"]
    given = {field for field in ("api_key", "user", "team") if field in body}
    wanted = {Scope.KEY: "api_key", Scope.USER: "user", Scope.TEAM: "team"}[Scope(scope)]
    if given != {wanted}:
        raise InvalidRequest(f"A {scope} budget names its {wanted}, and only that.", param=wanted)
    if scope == Scope.KEY:
        return key_get_for(actor, body["api_key"])
    if scope == Scope.TEAM:
        return team_get_for(actor, body["team"])
    user = get_user_model().objects.filter(username=body["user"]).first()
    if user is None or (not actor.is_operator and user.pk != actor.user_id):
        raise NotFound(f"No user '{body['user']}'.", param="user", code="user_not_found")
    return user


class BudgetListView(APIView):
    @extend_schema(
        operation_id="budgets_list",
        parameters=[OpenApiParameter("scope", str, description="key, user or team.")],
        responses={200: dict},
    )
    def get(self, request: Request) -> Response:
        budgets = budgets_visible_to(actor_from_request(request))
        if scope := request.query_params.get("scope"):
            budgets = budgets.filter(scope=scope)
        data = [budget_representation(s) for s in budget_statuses(list(budgets))]
        return Response({"object": "list", "data": data})

    @extend_schema(operation_id="budgets_set", request=BudgetSetSerializer, responses={200: dict})
    def post(self, request: Request) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        body = validated_body(BudgetSetSerializer, request)
        budget = services.budget_set(
            actor=actor,
            scope=body["scope"],
            target=_target(actor, body),
            amount=body["amount"],
            period=body["period"],
        )
        return Response(_budget(budget), status=status.HTTP_200_OK)


class BudgetDetailView(APIView):
    @extend_schema(operation_id="budgets_retrieve", responses={200: dict})
    def get(self, request: Request, budget_id: str) -> Response:
        return Response(_budget(budget_get_for(actor_from_request(request), budget_id)))

    @extend_schema(
        operation_id="budgets_update", request=BudgetUpdateSerializer, responses={200: dict}
    )
    def patch(self, request: Request, budget_id: str) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        budget = budget_get_for(actor, budget_id)
        body = validated_body(BudgetUpdateSerializer, request)
        target = budget.api_key or budget.user or budget.team
        budget = services.budget_set(
            actor=actor,
            scope=budget.scope,
            target=target,
            amount=body.get("amount", budget.amount),
            period=body.get("period", budget.period),
        )
        return Response(_budget(budget))

    @extend_schema(operation_id="budgets_delete", responses={204: None})
    def delete(self, request: Request, budget_id: str) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        services.budget_delete(actor=actor, budget=budget_get_for(actor, budget_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
