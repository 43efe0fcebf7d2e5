from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


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
    # What the request cost, at the model's price when it was made: computed once, when the
    # record is written, exactly (a Decimal, never a float).
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
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


class UsageDaily(models.Model):
    """Usage records (and refusal tallies) older than the retention, rolled up per UTC day, key,
    model and status by `telemetry.retention.usage_rollup`, then deleted: the record table stays
    bounded, and /metrics and the usage charts keep counting those days (telemetry.services)."""

    day = models.DateTimeField(db_index=True)  # the UTC day's midnight
    api_key = models.ForeignKey(
        "keys.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="usage_days",
    )
    key_prefix = models.CharField(max_length=16, blank=True)
    model = models.CharField(max_length=256, blank=True)
    status = models.PositiveSmallIntegerField()
    requests = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=0)

    class Meta:
        ordering = ["-day"]
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        indexes = [models.Index(fields=["api_key", "day"])]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d} {self.key_prefix or '-'} {self.model} {self.status}"


class RefusalTally(models.Model):
    """Refusals counted per minute instead of recorded one by one (telemetry.refusals): requests
    without a usable key (401) and requests over their key's limits (429)."""

    minute = models.DateTimeField(db_index=True)
    api_key = models.ForeignKey(
        "keys.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="refusal_tallies",
    )
    key_prefix = models.CharField(max_length=16, blank=True)  # "" when no key was recognised
    endpoint = models.CharField(max_length=64)
    model = models.CharField(max_length=64, blank=True)  # "" when refused before it was read
    status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    count = models.PositiveIntegerField()

    class Meta:
        ordering = ["-minute"]
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "key_prefix", "endpoint", "model", "status", "error_code"],
                name="refusal_tally_one_per_minute",
            )
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.endpoint} {self.status} ×{self.count}"


class AuditEvent(models.Model):
    """One operator (or team admin) action: who did what to which object, when, and the object
    before and after. Written by the services that perform the actions, never edited."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="audit_events",
    )
    # Who acted, as shown: a username, "admin key nb_AbC…", or "system".
    actor_label = models.CharField(max_length=150)
    action = models.CharField(max_length=64)  # e.g. "key.create", "model.deploy", "price.set"
    target_type = models.CharField(max_length=32)  # "api_key", "deployment", "price", "budget"
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=256, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action}"
