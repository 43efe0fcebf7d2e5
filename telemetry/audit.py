"""The audit log: every operator or team-admin action on keys, deployments, prices and budgets.

Services call `audit_record` inside the transaction that performs the action, so an action and
its audit entry are committed together or not at all. Entries never hold secrets: callers pass
plain, already-redacted snapshots (`before`/`after`).
"""

from __future__ import annotations

from typing import Any

from telemetry.models import AuditEvent


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
