from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from keys import services
from keys.models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = [
        "name",
        "owner",
        "prefix",
        "state",
        "is_admin",
        "rpm_limit",
        "tpm_limit",
        "created_at",
        "last_used_at",
    ]
    list_filter = ["is_admin", ("revoked_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["name", "prefix", "owner__username"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    fields = [
        "name",
        "owner",
        "prefix",
        "rpm_limit",
        "tpm_limit",
        "allowed_models",
        "expires_at",
        "is_admin",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    autocomplete_fields = ["owner"]
    actions = ["revoke_keys"]

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        return obj.state

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.key_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            services.key_update(
                key=obj,
                name=obj.name,
                rpm_limit=obj.rpm_limit,
                tpm_limit=obj.tpm_limit,
                clear_tpm_limit=obj.tpm_limit is None,
                allowed_models=obj.allowed_models,
                expires_at=obj.expires_at,
            )
            return
        created = services.key_create(
            owner=obj.owner,
            name=obj.name,
            rpm_limit=obj.rpm_limit,
            tpm_limit=obj.tpm_limit,
            allowed_models=obj.allowed_models,
            expires_at=obj.expires_at,
            is_admin=obj.is_admin,
        )
        obj.pk = created.key.pk
        obj.prefix = created.key.prefix
        # The one time an operator sees the secret in the admin.
        self.message_user(
            request,
            f"Key created. Copy the secret now, it will not be shown again: {created.secret}",
            messages.WARNING,
        )

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Keys are revoked, not deleted: usage records keep pointing at them.
        return False
