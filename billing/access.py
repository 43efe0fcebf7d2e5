"""Who may see and set budgets and prices (the rules; `keys.access` has the roles).

- Prices: everyone who may use the API sees them; only operators set them.
- Budgets: an operator sees and sets every budget. Anyone else sees the budgets of the keys they
  see (their own, their teams'), their own user budget and their teams' budgets; they may set
  the budget of a key they may change (its owner, or a team admin for a team key), but never
  change or remove a budget an operator set, and never set user or team budgets.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet

from billing.models import Budget, Scope
from infra.errors import NotFound, PermissionDenied
from keys.access import Actor, can_change_key, keys_visible_to, parse_id, require_key_manager
from keys.models import ApiKey, TeamMembership


def _denied(message: str, param: str | None = None) -> PermissionDenied:
    return PermissionDenied(message, param=param, code="insufficient_permissions")


def budgets_visible_to(actor: Actor) -> QuerySet[Budget]:
    budgets = Budget.objects.select_related("api_key", "user", "team")
    if actor.is_operator:
        return budgets
    if actor.key is not None:
        # A regular key sees the budgets that apply to itself.
        key = actor.key
        match = Q(api_key_id=key.pk) | Q(user_id=key.owner_id)
        if key.team_id is not None:
            match |= Q(team_id=key.team_id)
        return budgets.filter(match)
    teams = TeamMembership.objects.filter(user_id=actor.user_id).values("team_id")
    return budgets.filter(
        Q(api_key_id__in=keys_visible_to(actor).values("pk"))
        | Q(user_id=actor.user_id)
        | Q(team_id__in=teams)
    )


def budget_get_for(actor: Actor, budget_id: int | str) -> Budget:
    """The budget if `actor` may see it; 404 otherwise (never 403: no existence leak)."""
    budget = budgets_visible_to(actor).filter(pk=parse_id(budget_id)).first()
    if budget is None:
        raise NotFound(f"No budget with id '{budget_id}'.", code="budget_not_found")
    return budget


def authorize_budget_set(
    actor: Actor, *, scope: str, key: ApiKey | None, existing: Budget | None
) -> None:
    if actor.is_operator:
        return
    require_key_manager(actor)
    if scope != Scope.KEY or key is None:
        raise _denied("Only operators can set user and team budgets.", "scope")
    if not can_change_key(actor, key):
        raise _denied("You can only set budgets on keys you may change.", "api_key")
    if existing is not None and existing.operator_set:
        raise _denied(
            "An operator set this key's budget; only an operator can change or remove it.",
            "amount",
        )
