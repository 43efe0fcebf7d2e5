"""The audit log: every operator or team-admin action on keys, deployments, prices and budgets.

Services call `audit_record` inside the transaction that performs the action, so an action and
its audit entry are committed together or not at all. Entries never hold secrets: callers pass
plain, already-redacted snapshots (`before`/`after`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet

from keys.access import Actor
from telemetry.models import AuditEvent

# What the API and the admin show of an entry.
AUDIT_FIELDS = [
    "created_at",
    "actor",
    "action",
    "target_type",
    "target_id",
    "target_label",
    "before",
    "after",
]


def actor_label(*, user: Any, key_prefix: str | None = None) -> str:
    """How an actor is shown: the username, and the admin key it acted through, if any."""
    name = getattr(user, "get_username", lambda: "")() if user is not None else ""
    if key_prefix:
        return f"{name or 'unknown'} via key {key_prefix}…"
    return name or "system"


def audit_record(
    *,
    user: Any,
    action: str,
    target_type: str,
    target_id: object = "",
    target_label: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    key_prefix: str | None = None,
) -> AuditEvent:
    """Append one entry. `user` is the acting Django user (None for the system itself)."""
    return AuditEvent.objects.create(
        actor=user if getattr(user, "pk", None) else None,
        actor_label=actor_label(user=user, key_prefix=key_prefix)[:150],
        action=action,
        target_type=target_type,
        target_id=str(target_id)[:64],
        target_label=target_label[:256],
        before=before,
        after=after,
    )


def audit_by(
    actor: Actor,
    action: str,
    *,
    target_type: str,
    target: Any,
    label: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """`audit_record` for an `Actor` (a user, the admin key they acted through, or the system)
    and the object it acted on (anything with a primary key)."""
    return audit_record(
        user=actor.user,
        key_prefix=actor.key.prefix if actor.key is not None else None,
        action=action,
        target_type=target_type,
        target_id=target.pk,
        target_label=label,
        before=before,
        after=after,
    )


def audit_events(
    *,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """The audit log, newest first, narrowed by what is given. `action` ending in "." is a
    prefix ("key." is every key action); `actor` is a username."""
    events = AuditEvent.objects.select_related("actor")
    if action:
        events = (
            events.filter(action__startswith=action)
            if action.endswith(".")
            else events.filter(action=action)
        )
    if target_type:
        events = events.filter(target_type=target_type)
    if target_id:
        events = events.filter(target_id=target_id)
    if actor:
        events = events.filter(actor__username=actor)
    if since:
        events = events.filter(created_at__gte=since)
    if until:
        events = events.filter(created_at__lt=until)
    return events.order_by("-id")
