from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from telemetry.audit import AUDIT_FIELDS
from telemetry.models import AuditEvent, UsageDaily, UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin[UsageRecord]):
    """Read-only: usage is what happened, and billing depends on it staying that way."""

    list_display = [
        "created_at",
        "request_id",
        "key_prefix",
        "model",
        "endpoint",
        "status",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "latency_ms",
        "stream",
    ]
    list_filter = [
        "status",
        "model",
        "finish_reason",
        "stream",
        "client",
        "worker",
        "created_at",
        "api_key",
    ]
    search_fields = ["request_id", "key_prefix", "model"]
    date_hierarchy = "created_at"
    list_select_related = ["api_key"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False


@admin.register(UsageDaily)
class UsageDailyAdmin(admin.ModelAdmin[UsageDaily]):
    """Read-only: the rolled-up days (telemetry.retention) are billing history too."""

    list_display = [
        "day",
        "key_prefix",
        "model",
        "status",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost",
    ]
    list_filter = ["status", "model", "day"]
    search_fields = ["key_prefix", "model"]
    date_hierarchy = "day"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageDaily | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageDaily | None = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    """Read-only: the audit log is what operators did, and stays that way."""

    list_display = ["created_at", "actor_label", "action", "target_type", "target_label"]
    list_filter = ["action", "target_type", "created_at"]
    search_fields = ["actor_label", "action", "target_id", "target_label"]
    date_hierarchy = "created_at"
    readonly_fields = ["actor_label", *AUDIT_FIELDS]
    fields = list(readonly_fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        # Viewing the change page needs "change" or "view": staff see it read-only.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False
