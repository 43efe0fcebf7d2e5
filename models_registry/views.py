"""`/models`: list, deploy, retrieve, scale and undeploy model deployments."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from keys.access import actor_from_request, require_operator
from models_registry import services
from models_registry.access import deployment_get_for, deployments_visible_to
from models_registry.models import DeployedModel
from models_registry.serializers import (
    DeploymentSerializer,
    DeployRequestSerializer,
    ScaleRequestSerializer,
)


def _with_history(model: DeployedModel, *, operator: bool) -> dict[str, Any]:
    data = services.serialize_model_for(model, operator=operator)
    if operator:
        data["history"] = [
            {"from": e.from_state or None, "to": e.to_state, "note": e.note, "at": e.at.isoformat()}
            for e in model.events.all()
        ]
    return data


class DeploymentListView(APIView):
    @extend_schema(
        responses=inline_serializer(
            "DeploymentList",
            {"object": serializers.CharField(), "data": DeploymentSerializer(many=True)},
        ),
        parameters=[
            OpenApiParameter("all", bool, description="Operators: include stopped and failed.")
        ],
        operation_id="models_list",
    )
    def get(self, request: Request) -> Response:
        actor = actor_from_request(request)
        include_history = request.query_params.get("all") in ("1", "true")
        models = deployments_visible_to(actor, include_history=include_history)
        if actor.is_operator:
            data = [services.serialize_model(m) for m in models]
        else:
            data = [_with_history(m, operator=False) for m in models]
        return Response({"object": "list", "data": data})

    @extend_schema(
        request=DeployRequestSerializer,
        responses={201: DeploymentSerializer},
        operation_id="models_deploy",
    )
    def post(self, request: Request) -> Response:
        actor = actor_from_request(request)
        require_operator(actor)
        body = DeployRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        model = services.model_deploy(owner=actor.user, **body.validated_data)
        return Response(_with_history(model, operator=True), status=status.HTTP_201_CREATED)


class DeploymentDetailView(APIView):
    @extend_schema(responses=DeploymentSerializer, operation_id="models_retrieve")
    def get(self, request: Request, name: str) -> Response:
        actor = actor_from_request(request)
        model = deployment_get_for(actor, name)
        return Response(_with_history(model, operator=actor.is_operator))

    @extend_schema(
        request=ScaleRequestSerializer, responses=DeploymentSerializer, operation_id="models_scale"
    )
    def patch(self, request: Request, name: str) -> Response:
        actor = actor_from_request(request)
        require_operator(actor)
        model = deployment_get_for(actor, name)
        body = ScaleRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        model = services.model_scale(model=model, replicas=body.validated_data["replicas"])
        return Response(_with_history(model, operator=True))

    @extend_schema(responses=DeploymentSerializer, operation_id="models_undeploy")
    def delete(self, request: Request, name: str) -> Response:
        actor = actor_from_request(request)
        require_operator(actor)
        model = services.model_undeploy(model=deployment_get_for(actor, name))
        return Response(_with_history(model, operator=True))
