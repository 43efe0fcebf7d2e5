"""What a deployment looks like to the outside, in one place: the API, the dashboard, its live
events and the OpenAPI schema all use `DeploymentSerializer` (users get `PublicDeployment`,
without the fleet's inner workings)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from infra.serializers import StrictSerializer
from models_registry.gpus import GPU_TYPES, gpu_shortage
from models_registry.models import Backend, DeployedModel, ModelKind, ModelState, gpus_in_use
from models_registry.upstreams import upstream_serialize


class DeployRequestSerializer(StrictSerializer):
    """Absent optional fields take the service's defaults (services.DEPLOYMENT_DEFAULTS)."""

    name = serializers.CharField(max_length=64)
    kind = serializers.ChoiceField(
        choices=ModelKind.choices,
        required=False,
        help_text="chat (default): /v1/chat/completions. embedding: /v1/embeddings with a real "
        "model, named after it (all-minilm-l6-v2); its size and context length are the model's.",
    )
    backend = serializers.ChoiceField(
        choices=[backend.value for backend in Backend],
        required=False,
        help_text="simulated (default): Nebula's simulated GPUs. openai-compatible: an engine "
        "such as vLLM or llama.cpp at upstream_urls.",
    )
    params_billions = serializers.FloatField(
        min_value=0.001, max_value=10_000, required=False, help_text="Required when simulated."
    )
    gpu_type = serializers.CharField(
        required=False, help_text=f"Required when simulated. One of: {', '.join(GPU_TYPES)}."
    )
    gpus_per_replica = serializers.IntegerField(required=False)
    replicas = serializers.IntegerField(required=False)
    max_concurrent_seqs = serializers.IntegerField(required=False)
    context_length = serializers.IntegerField(required=False)
    upstream_urls = serializers.ListField(
        child=serializers.CharField(max_length=500),
        required=False,
        help_text="openai-compatible: one base URL per replica, e.g. http://10.0.0.5:8000.",
    )
    upstream_model = serializers.CharField(
        max_length=256, required=False, help_text="The engine's model name (default: name)."
    )
    upstream_api_key = serializers.CharField(
        max_length=4096,
        required=False,
        write_only=True,
        trim_whitespace=True,
        help_text="Sent to the engine as a bearer token; stored encrypted, never shown again.",
    )
    connect_timeout = serializers.FloatField(required=False, help_text="Seconds (default 5).")
    read_timeout = serializers.FloatField(
        required=False, help_text="Longest silence from the engine, in seconds (default 60)."
    )
    queue = serializers.BooleanField(
        required=False,
        default=False,
        help_text="When the fleet's GPUs are busy, wait for them (state `queued`) instead of "
        "a 400. A model too large for its GPUs is refused either way.",
    )


class ScaleRequestSerializer(StrictSerializer):
    replicas = serializers.IntegerField()


def _seconds_left(until: datetime | None) -> float:
    return max((until - timezone.now()).total_seconds(), 0.0) if until else 0.0


class ProgressSerializer(serializers.Serializer[Any]):
    phase = serializers.ChoiceField(choices=["loading", "scaling"])
    percent = serializers.FloatField()
    seconds_left = serializers.FloatField()
    eta = serializers.DateTimeField()


class DeploymentSerializer(serializers.ModelSerializer[DeployedModel]):
    id = serializers.CharField(source="name", help_text="The name clients call it by.")
    pk = serializers.IntegerField(read_only=True)
    state = serializers.ChoiceField(choices=ModelState.values)
    params_billions = serializers.SerializerMethodField()
    capacity = serializers.IntegerField(help_text="Sequences served at once, fleet-wide.")
    weights_gb = serializers.SerializerMethodField()
    failure_reason = serializers.SerializerMethodField()
    queue_reason = serializers.SerializerMethodField(
        help_text="Why a queued deployment waits: the GPUs it needs against those free."
    )
    progress = serializers.SerializerMethodField(
        help_text="A load under way (the deployment's, or a scale-up's new replicas')."
    )
    owner = serializers.SerializerMethodField()
    upstream = serializers.SerializerMethodField(
        help_text="Operators, openai-compatible deployments: the upstream model, whether it has "
        "an API key (never the key), timeouts, and each replica's URL, health, latency and load."
    )

    class Meta:
        model = DeployedModel
        fields = [
            "id",
            "pk",
            "name",
            "kind",
            "backend",
            "state",
            "params_billions",
            "parameters",
            "gpu_type",
            "gpus_per_replica",
            "replicas",
            "target_replicas",
            "max_concurrent_seqs",
            "capacity",
            "context_length",
            "weights_gb",
            "failure_reason",
            "queue_reason",
            "progress",
            "owner",
            "upstream",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_params_billions(self, model: DeployedModel) -> float:
        return round(model.params_billions, 3)

    def get_weights_gb(self, model: DeployedModel) -> float:
        return round(model.weights_gb, 2)

    def get_failure_reason(self, model: DeployedModel) -> str | None:
        return model.failure_reason or None

    def get_queue_reason(self, model: DeployedModel) -> str | None:
        if model.state != ModelState.QUEUED:
            return None
        shortage = gpu_shortage(
            gpu=model.gpu,
            needed=model.gpus_per_replica * model.replicas,
            held=gpus_in_use(model.gpu_type),
            inventory=settings.NEBULA_GPU_INVENTORY,
        )
        if shortage is None:
            return "Waiting for deployments queued ahead of it."
        return f"Waiting for GPUs: {shortage.describe()}."

    @extend_schema_field(ProgressSerializer(allow_null=True))
    def get_progress(self, model: DeployedModel) -> dict[str, Any] | None:
        started, eta = model.load_started_at, model.load_eta
        if started is None or eta is None:
            return None
        if model.state == ModelState.LOADING:
            phase = "loading"
        elif model.state == ModelState.READY and model.target_replicas:
            phase = "scaling"
        else:
            return None
        total = (eta - started).total_seconds()
        left = _seconds_left(eta)
        percent = 100.0 if total <= 0 else min(max(100 * (1 - left / total), 0.0), 100.0)
        return {
            "phase": phase,
            "percent": round(percent, 1),
            "seconds_left": round(left, 1),
            "eta": eta.isoformat(),
        }

    def get_owner(self, model: DeployedModel) -> str | None:
        return model.owner.get_username() if model.owner_id and model.owner else None

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_upstream(self, model: DeployedModel) -> dict[str, Any] | None:
        return upstream_serialize(model)


# What a user (not an operator) may not see of a deployment: who runs it, on what hardware, and
# how the fleet is doing.
PRIVATE_FIELDS = (
    "owner",
    "gpu_type",
    "gpus_per_replica",
    "replicas",
    "target_replicas",
    "failure_reason",
    "queue_reason",
    "progress",
    "backend",
    "upstream",
)


class PublicDeploymentSerializer(DeploymentSerializer):
    class Meta(DeploymentSerializer.Meta):
        fields = [f for f in DeploymentSerializer.Meta.fields if f not in PRIVATE_FIELDS]
        read_only_fields = fields


HISTORY_ENTRY = inline_serializer(
    "DeploymentHistoryEntry",
    {
        "from": serializers.CharField(allow_null=True),
        "to": serializers.CharField(),
        "note": serializers.CharField(),
        "at": serializers.DateTimeField(),
    },
    many=True,
)


class DeploymentDetailSerializer(DeploymentSerializer):
    """A deployment with its lifecycle, for operators."""

    history = serializers.SerializerMethodField()

    class Meta(DeploymentSerializer.Meta):
        fields = [*DeploymentSerializer.Meta.fields, "history"]
        read_only_fields = fields

    @extend_schema_field(HISTORY_ENTRY)
    def get_history(self, model: DeployedModel) -> list[dict[str, Any]]:
        return [
            {"from": e.from_state or None, "to": e.to_state, "note": e.note, "at": e.at.isoformat()}
            for e in model.events.all()
        ]


class DeletedDeploymentSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    deleted = serializers.BooleanField()


def deployment_data(
    model: DeployedModel, *, operator: bool, detail: bool = False
) -> dict[str, Any]:
    """The one representation of a deployment, as `operator` or not may see it."""
    if not operator:
        serializer: type[DeploymentSerializer] = PublicDeploymentSerializer
    else:
        serializer = DeploymentDetailSerializer if detail else DeploymentSerializer
    return dict(serializer(model).data)
