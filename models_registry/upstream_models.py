"""How a deployment with the openai-compatible backend reaches its engine: the upstream model
name, the (encrypted) API key, timeouts, and one row per replica (a base URL).

Kept out of `models.py` so the fleet's own models stay as they are; `models.py` imports these so
Django and its migrations see them.
"""

from __future__ import annotations

from django.db import models


class UpstreamConfig(models.Model):
    deployment = models.OneToOneField(
        "models_registry.DeployedModel", on_delete=models.CASCADE, related_name="upstream"
    )
    model_name = models.CharField(
        "upstream model", max_length=256, help_text="The name the engine serves the model under."
    )
    # Fernet token (infra.crypto); empty when the engine needs no key. Never shown again.
    api_key_encrypted = models.TextField(blank=True, editable=False)
    connect_timeout = models.FloatField(
        default=5.0, help_text="Seconds to wait for a replica to accept a connection."
    )
    read_timeout = models.FloatField(
        default=60.0,
        help_text="Longest silence from a replica, before its first token or between chunks.",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(connect_timeout__gt=0, read_timeout__gt=0),
                name="upstream_timeouts_positive",
            )
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id} → {self.model_name}"

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)


class UpstreamReplica(models.Model):
    deployment = models.ForeignKey(
        "models_registry.DeployedModel", on_delete=models.CASCADE, related_name="upstream_replicas"
    )
    url = models.CharField("base URL", max_length=500)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["deployment", "position"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "url"], name="upstream_replica_unique")
        ]

    def __str__(self) -> str:
        return self.url
