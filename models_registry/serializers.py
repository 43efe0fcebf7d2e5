from __future__ import annotations

from typing import Any

from rest_framework import serializers

from models_registry.gpus import GPU_TYPES
from models_registry.models import Backend


class DeployRequestSerializer(serializers.Serializer[Any]):
    """Absent optional fields take the service's defaults (services.DEPLOYMENT_DEFAULTS)."""

    name = serializers.CharField(max_length=64)
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


class ScaleRequestSerializer(serializers.Serializer[Any]):
    replicas = serializers.IntegerField()


class DeploymentSerializer(serializers.Serializer[Any]):
    """Documents the shape `services.serialize_model` returns."""

    id = serializers.CharField()
    name = serializers.CharField()
    state = serializers.ChoiceField(
        choices=["pending", "loading", "ready", "stopping", "stopped", "failed"]
    )
    params_billions = serializers.FloatField()
    parameters = serializers.IntegerField()
    gpu_type = serializers.CharField()
    gpus_per_replica = serializers.IntegerField()
    replicas = serializers.IntegerField()
    max_concurrent_seqs = serializers.IntegerField()
    capacity = serializers.IntegerField()
    context_length = serializers.IntegerField()
    weights_gb = serializers.FloatField()
    failure_reason = serializers.CharField(allow_null=True)
    owner = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField(allow_null=True)
    backend = serializers.CharField(required=False)
    upstream = serializers.DictField(
        allow_null=True,
        required=False,
        help_text="Operators, openai-compatible deployments: the upstream model, whether it has "
        "an API key (never the key), timeouts, and each replica's URL, health, latency and load.",
    )
    history = serializers.ListField(child=serializers.DictField(), required=False)
