from __future__ import annotations

from typing import Any

from rest_framework import serializers

from models_registry.gpus import GPU_TYPES


class DeployRequestSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=64)
    params_billions = serializers.FloatField(min_value=0.001, max_value=10_000)
    gpu_type = serializers.CharField(help_text=f"One of: {', '.join(GPU_TYPES)}.")
    gpus_per_replica = serializers.IntegerField(required=False, default=1)
    replicas = serializers.IntegerField(required=False, default=1)
    max_concurrent_seqs = serializers.IntegerField(required=False, default=8)
    context_length = serializers.IntegerField(required=False, default=8192)


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
    history = serializers.ListField(child=serializers.DictField(), required=False)
