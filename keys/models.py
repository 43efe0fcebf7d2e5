from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


def _default_rpm() -> int:
    return settings.NEBULA_DEFAULT_RPM


class Team(models.Model):
    """A group of users that owns keys (and budgets) together. Members see the team's keys and
    usage; team admins manage them; operators see every team."""

    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TeamRole(models.TextChoices):
    MEMBER = "member", "member"
    ADMIN = "admin", "team admin"


class TeamMembership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_memberships"
    )
    role = models.CharField(max_length=16, choices=TeamRole.choices, default=TeamRole.MEMBER)
    joined_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="team_membership_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


class ApiKey(models.Model):
    """An API key. The secret itself is never stored: only its SHA-256 digest and a prefix."""

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    # A team's key: its members see it, its team admins manage it, and it counts against the
    # team's budget. Without a team, a key is its owner's alone.
    team = models.ForeignKey(
        Team, on_delete=models.PROTECT, null=True, blank=True, related_name="api_keys"
    )
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    # After a rotation the previous secret keeps working until `previous_valid_until` (the
    # grace period whoever rotated picked), so clients can switch over without an outage.
    previous_digest = models.CharField(
        max_length=64, unique=True, null=True, blank=True, editable=False
    )
    previous_prefix = models.CharField(max_length=16, blank=True, editable=False)
    previous_valid_until = models.DateTimeField(null=True, blank=True, editable=False)
    rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    rpm_limit = models.PositiveIntegerField("requests per minute", default=_default_rpm)
    tpm_limit = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    # Model names this key may use; empty means every ready model.
    allowed_models = models.JSONField(default=list, blank=True)
    is_admin = models.BooleanField(
        default=False, help_text="Admin keys manage keys and models like an operator."
    )
    # The limits an operator set on this key (only those they set): ceilings the key's owner
    # or team admins may narrow but never widen (keys.services.key_update). A limit absent here
    # is capped by the defaults anyone gets.
    operator_limits = models.JSONField(default=dict, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(condition=models.Q(rpm_limit__gt=0), name="apikey_rpm_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    @property
    def is_active(self) -> bool:
        return self.state == "active"
