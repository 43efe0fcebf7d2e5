from __future__ import annotations

from django.db import models


class UsageRecord(models.Model):
    """One row per request to the API, refused ones included. Billing and /metrics read these."""

    request_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey(
        "keys.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="usage_records",
    )
    key_prefix = models.CharField(max_length=16, blank=True)
    model = models.CharField(max_length=256, blank=True)
    endpoint = models.CharField(max_length=64)
    client = models.CharField(max_length=16, default="api")  # "api" or "playground"
    worker = models.CharField(max_length=128, blank=True)  # the worker that ran the job
    status = models.PositiveSmallIntegerField()
    finish_reason = models.CharField(max_length=16, blank=True)  # stop, length, cancelled, error
    error_code = models.CharField(max_length=64, blank=True)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    queue_ms = models.FloatField(null=True, blank=True)
    ttft_ms = models.FloatField("time to first token (ms)", null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["model", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.endpoint} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
