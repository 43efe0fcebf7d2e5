"""`/apikeys` and `/teams`: parse, find what the caller may see, call one service, render."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.serializers import validated_body
from keys import services
from keys.access import (
    actor_from_request,
    key_get_for,
    keys_visible_to,
    parse_id,
    require_key_manager,
    team_get_for,
    teams_visible_to,
)
from keys.models import Team
from keys.serializers import (
    ApiKeyCreateSerializer,
    ApiKeyRotateSerializer,
    ApiKeySerializer,
    ApiKeyUpdateSerializer,
    CreatedApiKeySerializer,
    TeamCreateSerializer,
    TeamMemberAddSerializer,
    TeamMemberRoleSerializer,
    TeamMemberSerializer,
    TeamSerializer,
    TeamUpdateSerializer,
)


def _secret_response(created: services.CreatedKey, *, status_code: int) -> Response:
    payload = CreatedApiKeySerializer(created.key, context={"secret": created.secret}).data
    # The secret must not stay in any cache between here and the person who asked for it.
    return Response(payload, status=status_code, headers={"Cache-Control": "no-store"})


class ApiKeyListCreateView(APIView):
    @extend_schema(
        responses=inline_serializer(
            "ApiKeyList",
            {"object": serializers.CharField(), "data": ApiKeySerializer(many=True)},
        ),
        parameters=[
            OpenApiParameter("owner", str, description="Only keys of this user (by username)."),
            OpenApiParameter("team", int, description="Only keys of this team (by id)."),
        ],
        operation_id="apikeys_list",
    )
    def get(self, request: Request) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        keys = keys_visible_to(actor)
        if owner := request.query_params.get("owner"):
            keys = keys.filter(owner__username=owner)
        if (team := request.query_params.get("team")) is not None:
            keys = keys.filter(team_id=parse_id(team))  # 0, for what is no id: no team
        return Response({"object": "list", "data": ApiKeySerializer(keys, many=True).data})

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: CreatedApiKeySerializer},
        operation_id="apikeys_create",
    )
    def post(self, request: Request) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        created = services.key_create(
            actor=actor, **validated_body(ApiKeyCreateSerializer, request)
        )
        return _secret_response(created, status_code=status.HTTP_201_CREATED)


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
        changes = validated_body(ApiKeyUpdateSerializer, request)
        key = services.key_update(actor=actor, key=key, **changes)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(responses=ApiKeySerializer, operation_id="apikeys_revoke")
    def delete(self, request: Request, key_id: str) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        key = services.key_revoke(actor=actor, key=key_get_for(actor, key_id))
        return Response(ApiKeySerializer(key).data)


class ApiKeyRotateView(APIView):
    @extend_schema(
        request=ApiKeyRotateSerializer,
        responses=CreatedApiKeySerializer,
        operation_id="apikeys_rotate",
    )
    def post(self, request: Request, key_id: str) -> Response:
        actor = actor_from_request(request)
        require_key_manager(actor)
        key = key_get_for(actor, key_id)
        grace = validated_body(ApiKeyRotateSerializer, request)["grace_seconds"]
        created = services.key_rotate(actor=actor, key=key, grace_seconds=grace)
        return _secret_response(created, status_code=status.HTTP_200_OK)


# --- Teams --------------------------------------------------------------------------------------


def _team(team: Team) -> dict[str, Any]:
    fresh = Team.objects.prefetch_related("memberships__user").get(pk=team.pk)
    return dict(TeamSerializer(fresh).data)


class TeamListCreateView(APIView):
    @extend_schema(
        responses=inline_serializer(
            "TeamList", {"object": serializers.CharField(), "data": TeamSerializer(many=True)}
        ),
        operation_id="teams_list",
    )
    def get(self, request: Request) -> Response:
        teams = teams_visible_to(actor_from_request(request)).prefetch_related("memberships__user")
        return Response({"object": "list", "data": TeamSerializer(teams, many=True).data})

    @extend_schema(
        request=TeamCreateSerializer, responses={201: TeamSerializer}, operation_id="teams_create"
    )
    def post(self, request: Request) -> Response:
        actor = actor_from_request(request)
        team = services.team_create(actor=actor, **validated_body(TeamCreateSerializer, request))
        return Response(_team(team), status=status.HTTP_201_CREATED)


class TeamDetailView(APIView):
    @extend_schema(responses=TeamSerializer, operation_id="teams_retrieve")
    def get(self, request: Request, team_id: str) -> Response:
        return Response(_team(team_get_for(actor_from_request(request), team_id)))

    @extend_schema(
        request=TeamUpdateSerializer, responses=TeamSerializer, operation_id="teams_update"
    )
    def patch(self, request: Request, team_id: str) -> Response:
        actor = actor_from_request(request)
        team = team_get_for(actor, team_id)
        team = services.team_rename(
            actor=actor, team=team, **validated_body(TeamUpdateSerializer, request)
        )
        return Response(_team(team))


class TeamMemberListView(APIView):
    @extend_schema(
        responses=inline_serializer(
            "TeamMemberList",
            {"object": serializers.CharField(), "data": TeamMemberSerializer(many=True)},
        ),
        operation_id="team_members_list",
    )
    def get(self, request: Request, team_id: str) -> Response:
        team = team_get_for(actor_from_request(request), team_id)
        members = team.memberships.select_related("user").order_by("user__username")
        return Response({"object": "list", "data": TeamMemberSerializer(members, many=True).data})

    @extend_schema(
        request=TeamMemberAddSerializer,
        responses={201: TeamMemberSerializer},
        operation_id="team_members_add",
    )
    def post(self, request: Request, team_id: str) -> Response:
        actor = actor_from_request(request)
        team = team_get_for(actor, team_id)
        body = validated_body(TeamMemberAddSerializer, request)
        membership = services.team_member_add(
            actor=actor, team=team, user=body["username"], role=body["role"]
        )
        return Response(TeamMemberSerializer(membership).data, status=status.HTTP_201_CREATED)


class TeamMemberDetailView(APIView):
    @extend_schema(
        request=TeamMemberRoleSerializer,
        responses=TeamMemberSerializer,
        operation_id="team_members_update",
    )
    def patch(self, request: Request, team_id: str, username: str) -> Response:
        actor = actor_from_request(request)
        team = team_get_for(actor, team_id)
        role = validated_body(TeamMemberRoleSerializer, request)["role"]
        membership = services.team_member_set_role(actor=actor, team=team, user=username, role=role)
        return Response(TeamMemberSerializer(membership).data)

    @extend_schema(responses={204: None}, operation_id="team_members_remove")
    def delete(self, request: Request, team_id: str, username: str) -> Response:
        actor = actor_from_request(request)
        team = team_get_for(actor, team_id)
        services.team_member_remove(actor=actor, team=team, user=username)
        return Response(status=status.HTTP_204_NO_CONTENT)
