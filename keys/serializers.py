from __future__ import annotations

from typing import Any

from rest_framework import serializers

from keys.models import ApiKey


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    state = serializers.CharField(read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "owner",
            "state",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "rpm_limit",
            "tpm_limit",
            "allowed_models",
            "is_admin",
        ]
        read_only_fields = fields


class CreatedApiKeySerializer(ApiKeySerializer):
    key = serializers.SerializerMethodField(help_text="The secret. Shown once, never again.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields

    def get_key(self, obj: ApiKey) -> str:
        return str(self.context["secret"])


class ApiKeyCreateSerializer(serializers.Serializer[Any]):
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


class ApiKeyUpdateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100, required=False)
    rpm_limit = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000)
    tpm_limit = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=1_000_000_000
    )
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=100
    )
