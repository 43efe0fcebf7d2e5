"""`/apikeys`: create, list, retrieve, update and revoke API keys."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.errors import InvalidRequest
from keys import services
from keys.access import (
    actor_from_request,
    authorize_key_settings,
    key_get_for,
    keys_visible_to,
    require_key_manager,
    require_operator,
)
from keys.serializers import (
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    ApiKeyUpdateSerializer,
    CreatedApiKeySerializer,
)


class ApiKeyListCreateView(APIView):
    @extend_schema(
        responses=inline_serializer(
            "ApiKeyList",
            {"object": serializers.CharField(), "data": ApiKeySerializer(many=True)},
        ),
        operation_id="apikeys_list",
    )
    def get(self, request: Request) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        keys = keys_visible_to(actor)
        owner = request.query_params.get("owner")
        if owner:
            keys = keys.filter(owner__username=owner)
        return Response({"object": "list", "data": ApiKeySerializer(keys, many=True).data})

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: CreatedApiKeySerializer},
        operation_id="apikeys_create",
    )
    def post(self, request: Request) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        body = ApiKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data: dict[str, Any] = dict(body.validated_data)
        owner = actor.user
        if username := data.pop("owner", None):
            require_operator(actor)
            owner = get_user_model().objects.filter(username=username).first()
            if owner is None:
                raise InvalidRequest(f"No user named '{username}'.", param="owner")
        authorize_key_settings(
            actor,
            owner=owner,
            rpm_limit=data.get("rpm_limit"),
            tpm_limit=data.get("tpm_limit"),
            is_admin=data.get("is_admin", False),
        )
        created = services.key_create(owner=owner, **data)
        payload = CreatedApiKeySerializer(created.key, context={"secret": created.secret}).data
        return Response(payload, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(APIView):
    @extend_schema(responses=ApiKeySerializer, operation_id="apikeys_retrieve")
    def get(self, request: Request, key_id: str) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        return Response(ApiKeySerializer(key_get_for(actor, key_id)).data)

    @extend_schema(
        request=ApiKeyUpdateSerializer, responses=ApiKeySerializer, operation_id="apikeys_update"
    )
    def patch(self, request: Request, key_id: str) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        key = key_get_for(actor, key_id)
        body = ApiKeyUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data: dict[str, Any] = dict(body.validated_data)
        authorize_key_settings(
            actor, owner=key.owner, rpm_limit=data.get("rpm_limit"), tpm_limit=data.get("tpm_limit")
        )
        if "tpm_limit" in data and data["tpm_limit"] is None:
            data.pop("tpm_limit")
            if not actor.is_operator:
                require_operator(actor)  # lifting a token limit raises capacity
            data["clear_tpm_limit"] = True
        key = services.key_update(key=key, **data)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(responses=ApiKeySerializer, operation_id="apikeys_revoke")
    def delete(self, request: Request, key_id: str) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        key = services.key_revoke(key=key_get_for(actor, key_id))
        return Response(ApiKeySerializer(key).data)
