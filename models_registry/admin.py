from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from infra.errors import NebulaError
from keys.access import actor_for_user
from models_registry import services
from models_registry.models import DeployedModel, ModelEvent, UpstreamConfig, UpstreamReplica


class ModelEventInline(admin.TabularInline[ModelEvent, DeployedModel]):
    model = ModelEvent
    extra = 0
    can_delete = False
    readonly_fields = ["at", "from_state", "to_state", "note"]
    fields = ["at", "from_state", "to_state", "note"]

    def has_add_permission(self, request: HttpRequest, obj: DeployedModel | None = None) -> bool:
        return False


class UpstreamConfigInline(admin.StackedInline[UpstreamConfig, DeployedModel]):
    """An upstream deployment's engine settings; the encrypted key is not shown at all."""

    model = UpstreamConfig
    extra = 0
    can_delete = False
    fields = readonly_fields = ("model_name", "has_api_key", "connect_timeout", "read_timeout")

    def has_add_permission(self, request: HttpRequest, obj: DeployedModel | None = None) -> bool:
        return False


class UpstreamReplicaInline(admin.TabularInline[UpstreamReplica, DeployedModel]):
    model = UpstreamReplica
    extra = 0
    can_delete = False
    fields = readonly_fields = ("position", "url")

    def has_add_permission(self, request: HttpRequest, obj: DeployedModel | None = None) -> bool:
        return False


@admin.register(DeployedModel)
class DeployedModelAdmin(admin.ModelAdmin[DeployedModel]):
    """Deployments change state only through the lifecycle, so fields here are read-only; use
    the actions (or the dashboard / API) to scale and undeploy."""

    list_display = [
        "name",
        "state",
        "backend",
        "gpu_type",
        "gpus_per_replica",
        "replicas",
        "max_concurrent_seqs",
        "capacity",
        "params_billions",
        "owner",
        "updated_at",
    ]
    list_filter = ["state", "backend", "gpu_type"]
    search_fields = ["name"]
    readonly_fields = [
        "name",
        "backend",
        "parameters",
        "gpu_type",
        "gpus_per_replica",
        "replicas",
        "max_concurrent_seqs",
        "context_length",
        "owner",
        "state",
        "failure_reason",
        "target_replicas",
        "load_started_at",
        "load_eta",
        "created_at",
        "updated_at",
    ]
    inlines = [UpstreamConfigInline, UpstreamReplicaInline, ModelEventInline]
    actions = ["undeploy"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # deploy from the dashboard or POST /models: it runs the lifecycle

    @admin.action(description="Undeploy selected models")
    def undeploy(self, request: HttpRequest, queryset: QuerySet[DeployedModel]) -> None:
        for model in queryset:
            try:
                services.model_undeploy(actor=actor_for_user(request.user), model=model)
            except NebulaError as error:
                self.message_user(request, f"{model.name}: {error.message}", messages.WARNING)
