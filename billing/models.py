"""Budgets: how much a key, a user or a team may spend per day, per month, or in total.

Prices live with the models they price (`models_registry.models.ModelPrice`); what each request
cost is on its usage record (`telemetry.models.UsageRecord.cost`). What a budget has spent in
its current period is kept in Redis, where admission checks and charges it (`billing.budgets`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Period(models.TextChoices):
    DAY = "day", "per day (UTC)"
    MONTH = "month", "per month (UTC)"
    TOTAL = "total", "in total"


class Scope(models.TextChoices):
    KEY = "key", "API key"
    USER = "user", "user"
    TEAM = "team", "team"


class Budget(models.Model):
    """At most `amount` spent per `period` by one key, by every key a user owns, or by every
    key of a team. A request must fit every budget that applies to it."""

    scope = models.CharField(max_length=8, choices=Scope.choices)
    api_key = models.OneToOneField(
        "keys.ApiKey", on_delete=models.CASCADE, null=True, blank=True, related_name="budget"
    )
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="budget",
    )
    team = models.OneToOneField(
        "keys.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="budget"
    )
    amount = models.DecimalField(max_digits=16, decimal_places=10)
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    # Set or last changed by an operator: then only an operator may change or remove it (a
    # team admin or a key's owner may not lift what an operator capped).
    operator_set = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["scope", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gte=0), name="budget_not_negative"),
            models.CheckConstraint(
                condition=(
                    models.Q(
                        scope="key", api_key__isnull=False, user__isnull=True, team__isnull=True
                    )
                    | models.Q(
                        scope="user", api_key__isnull=True, user__isnull=False, team__isnull=True
                    )
                    | models.Q(
                        scope="team", api_key__isnull=True, user__isnull=True, team__isnull=False
                    )
                ),
                name="budget_one_target",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.target_label}: {self.amount} {self.get_period_display()}"

    @property
    def target_label(self) -> str:
        if self.scope == Scope.KEY and self.api_key is not None:
            return f"key {self.api_key.name} ({self.api_key.prefix}…)"
        if self.scope == Scope.USER and self.user is not None:
            return f"user {self.user.get_username()}"
        if self.scope == Scope.TEAM and self.team is not None:
            return f"team {self.team.name}"
        return self.scope
