"""`/models`: list, deploy, retrieve, scale, undeploy and delete model deployments."""

from __future__ import annotations

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.errors import InvalidRequest
from infra.serializers import validated_body
from keys.access import actor_from_request, require_operator
from models_registry import services
from models_registry.access import deployment_get_for, deployments_visible_to
from models_registry.models import ENDED_STATES
from models_registry.serializers import (
    DeletedDeploymentSerializer,
    DeploymentDetailSerializer,
    DeploymentSerializer,
    DeployRequestSerializer,
    ScaleRequestSerializer,
    deployment_data,
)


class DeploymentListView(APIView):
    @extend_schema(
        responses=inline_serializer(
            "DeploymentList",
            {"object": serializers.CharField(), "data": DeploymentSerializer(many=True)},
        ),
        operation_id="models_list",
    )
    def get(self, request: Request) -> Response:
        if "all" in request.query_params:
            # Round one's `?all=1` showed stopped and failed deployments; they are listed by
            # default now. Refused rather than ignored, so a script learns it changed.
            raise InvalidRequest(
                "'all' is gone: GET /models lists every deployment, stopped and failed ones "
                "included (one per name), until they are deleted.",
                param="all",
            )
        actor = actor_from_request(request)
        models = deployments_visible_to(actor).order_by("name")
        data = [deployment_data(m, operator=actor.is_operator) for m in models]
        return Response({"object": "list", "data": data})

    @extend_schema(
        request=DeployRequestSerializer,
        responses={201: DeploymentDetailSerializer},
        operation_id="models_deploy",
    )
    def post(self, request: Request) -> Response:
        actor = actor_from_request(request)
        require_operator(actor)
        model = services.model_deploy(
            actor=actor, **validated_body(DeployRequestSerializer, request)
        )
        return Response(
            deployment_data(model, operator=True, detail=True), status=status.HTTP_201_CREATED
        )


class DeploymentDetailView(APIView):
    @extend_schema(responses=DeploymentDetailSerializer, operation_id="models_retrieve")
    def get(self, request: Request, name: str) -> Response:
        actor = actor_from_request(request)
        model = deployment_get_for(actor, name)
        return Response(deployment_data(model, operator=actor.is_operator, detail=True))

    @extend_schema(
        request=ScaleRequestSerializer,
        responses=DeploymentDetailSerializer,
        operation_id="models_scale",
    )
    def patch(self, request: Request, name: str) -> Response:
        actor = actor_from_request(request)
        require_operator(actor)
        model = deployment_get_for(actor, name)
        replicas = validated_body(ScaleRequestSerializer, request)["replicas"]
        model = services.model_scale(actor=actor, model=model, replicas=replicas)
        return Response(deployment_data(model, operator=True, detail=True))

    @extend_schema(
        responses={
            200: PolymorphicProxySerializer(
                component_name="UndeployedOrDeleted",
                serializers=[DeploymentDetailSerializer, DeletedDeploymentSerializer],
                resource_type_field_name=None,
            )
        },
        operation_id="models_undeploy",
        description="A live deployment is undeployed (it answers in state `stopping`); a "
        "stopped or failed one is deleted from the listings.",
    )
    def delete(self, request: Request, name: str) -> Response:
        actor = actor_from_request(request)
        require_operator(actor)
        model = deployment_get_for(actor, name)
        if model.state in ENDED_STATES:
            return Response(services.model_delete(actor=actor, model=model))
        model = services.model_undeploy(actor=actor, model=model)
        return Response(deployment_data(model, operator=True, detail=True))
