from __future__ import annotations

from typing import Any

from rest_framework import serializers

from infra.serializers import StrictSerializer
from keys.models import ApiKey, Team, TeamMembership, TeamRole


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    team = serializers.SerializerMethodField(help_text="The team that owns the key, if any.")
    state = serializers.CharField(read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "owner",
            "team",
            "state",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "rotated_at",
            "previous_prefix",
            "previous_valid_until",
            "rpm_limit",
            "tpm_limit",
            "allowed_models",
            "is_admin",
        ]
        read_only_fields = fields

    def get_team(self, obj: ApiKey) -> dict[str, Any] | None:
        if obj.team_id is None or obj.team is None:
            return None
        return {"id": obj.team.pk, "name": obj.team.name}


class CreatedApiKeySerializer(ApiKeySerializer):
    key = serializers.SerializerMethodField(help_text="The secret. Shown once, never again.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields

    def get_key(self, obj: ApiKey) -> str:
        return str(self.context["secret"])


class ApiKeyCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    rpm_limit = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000)
    tpm_limit = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=1_000_000_000
    )
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=100
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    is_admin = serializers.BooleanField(required=False, default=False)
    owner = serializers.CharField(
        required=False, help_text="Username to create the key for (operators only)."
    )
    team = serializers.IntegerField(
        required=False, help_text="Id of the team to own the key (its admins, or operators)."
    )


class ApiKeyUpdateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100, required=False)
    rpm_limit = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000)
    tpm_limit = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=1_000_000_000,
        help_text="null lifts the token limit.",
    )
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=100
    )
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="null: never expires."
    )


class ApiKeyRotateSerializer(StrictSerializer):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=30 * 24 * 3600,
        help_text="How long the previous secret keeps working (0: it stops at once).",
    )


class TeamMemberSerializer(serializers.ModelSerializer[TeamMembership]):
    username = serializers.CharField(source="user.get_username", read_only=True)

    class Meta:
        model = TeamMembership
        fields = ["username", "role", "joined_at"]
        read_only_fields = fields


class TeamSerializer(serializers.ModelSerializer[Team]):
    members = TeamMemberSerializer(source="memberships", many=True, read_only=True)

    class Meta:
        model = Team
        fields = ["id", "name", "created_at", "members"]
        read_only_fields = fields


class TeamCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    admin = serializers.CharField(required=False, help_text="Username of the team's first admin.")


class TeamUpdateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)


class TeamMemberAddSerializer(StrictSerializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=TeamRole.choices, default=TeamRole.MEMBER)


class TeamMemberRoleSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=TeamRole.choices)
