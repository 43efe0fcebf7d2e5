"""Who is asking, and what they may see or do with keys and teams: every such rule is here.

Edges (DRF views, dashboard views, the admin, management commands) find objects through the
`*_get_for` helpers (someone else's object is a 404, never a 403: whether it exists is none of
their business); the services call the `authorize_*` helpers before they change anything.

The roles:
- an operator (a staff user, an admin key, or the system itself) sees and manages everything;
- a user sees their own keys and the keys of every team they belong to, and manages their own;
- a team admin also manages the team's keys and members;
- a regular API key manages nothing.
Capacity is what operators sell: nobody else may raise a limit past what an operator set (or,
where no operator set one, past the defaults everyone gets).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_datetime

from infra.errors import NotFound, PermissionDenied
from keys.models import ApiKey, Team, TeamMembership, TeamRole

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


@dataclass(frozen=True)
class Actor:
    """A person acting through the dashboard (session), a script acting through an API key, or
    the system itself (management commands, demo data).

    Keys carry their own privilege: an admin key acts as an operator whoever owns it, and a
    regular key never manages anything, even when its owner is staff.
    """

    user: Any  # a Django user; None for the system
    key: ApiKey | None = None
    system: bool = False

    @property
    def is_operator(self) -> bool:
        if self.system:
            return True
        if self.key is not None:
            return self.key.is_admin
        return bool(self.user.is_staff)

    @property
    def can_manage_keys(self) -> bool:
        return self.system or self.key is None or self.key.is_admin

    @property
    def user_id(self) -> int:
        """The acting user's id; 0 (nobody's) for the system or an anonymous user."""
        return getattr(self.user, "pk", None) or 0


# What management commands and seeds act as: every rule lets it through, and the audit log
# names it "system".
SYSTEM = Actor(user=None, system=True)


def actor_from_request(request: Any) -> Actor:
    auth = getattr(request, "auth", None)
    return Actor(user=request.user, key=auth if isinstance(auth, ApiKey) else None)


def actor_for_user(user: AbstractBaseUser | AnonymousUser) -> Actor:
    return Actor(user=user)


MAX_ID = 2**63 - 1  # a database integer: larger ids exist nowhere (and overflow SQLite)


def parse_id(value: object) -> int:
    """An id from a URL or a query string; 0 (no row's id) when it cannot name a row."""
    text = str(value)
    if not text.isdigit() or len(text) > 19 or not 0 < int(text) <= MAX_ID:
        return 0
    return int(text)


def _denied(message: str, param: str | None = None) -> PermissionDenied:
    return PermissionDenied(message, param=param, code="insufficient_permissions")


def require_key_manager(actor: Actor) -> None:
    if not actor.can_manage_keys:
        raise _denied("This API key cannot manage API keys or teams; use an admin key or log in.")


def require_operator(actor: Actor) -> None:
    if not actor.is_operator:
        raise _denied("Only operators (staff users or admin keys) may do this.")


# --- Teams --------------------------------------------------------------------------------------


def team_role(actor: Actor, team: Team) -> str | None:
    """The actor's role in `team` ("member", "admin"), or None when they are not in it."""
    if not actor.user_id:
        return None
    membership = TeamMembership.objects.filter(team=team, user_id=actor.user_id).first()
    return membership.role if membership is not None else None


def teams_visible_to(actor: Actor) -> QuerySet[Team]:
    require_key_manager(actor)
    if actor.is_operator:
        return Team.objects.all()
    return Team.objects.filter(memberships__user_id=actor.user_id).distinct()


def team_get_for(actor: Actor, team_id: int | str) -> Team:
    """The team with this id if `actor` may see it (a member, or an operator); 404 otherwise."""
    team = teams_visible_to(actor).filter(pk=parse_id(team_id)).first()
    if team is None:
        raise NotFound(f"No team with id '{team_id}'.", code="team_not_found")
    return team


def can_manage_team(actor: Actor, team: Team) -> bool:
    return actor.can_manage_keys and (actor.is_operator or team_role(actor, team) == TeamRole.ADMIN)


def authorize_team_management(actor: Actor, team: Team) -> None:
    """Team admins manage their team's members and keys; operators manage every team."""
    require_key_manager(actor)
    if not can_manage_team(actor, team):
        raise _denied(f"Only the admins of team '{team.name}' (or an operator) may do this.")


# --- Keys ---------------------------------------------------------------------------------------


def keys_visible_to(actor: Actor) -> QuerySet[ApiKey]:
    """Operators: every key. Anyone else: their own keys, and their teams' keys."""
    keys = ApiKey.objects.select_related("owner", "team")
    if actor.is_operator:
        return keys
    teams = TeamMembership.objects.filter(user_id=actor.user_id).values("team_id")
    return keys.filter(Q(team__isnull=True, owner_id=actor.user_id) | Q(team_id__in=teams))


def key_get_for(actor: Actor, key_id: int | str) -> ApiKey:
    """The key with this id if `actor` may see it; 404 otherwise (never 403: no existence leak)."""
    key = keys_visible_to(actor).filter(pk=parse_id(key_id)).first()
    if key is None:
        raise NotFound(f"No API key with id '{key_id}'.", code="key_not_found")
    return key


def can_change_key(actor: Actor, key: ApiKey) -> bool:
    """A personal key is its owner's to change; a team key its team admins'; any key an
    operator's."""
    if not actor.can_manage_keys:
        return False
    if actor.is_operator:
        return True
    if key.team_id is not None:
        return key.team is not None and team_role(actor, key.team) == TeamRole.ADMIN
    return key.owner_id == actor.user_id


def authorize_key_change(actor: Actor, key: ApiKey) -> None:
    require_key_manager(actor)
    if not can_change_key(actor, key):
        if key.team_id is not None:
            raise _denied(
                f"Only the admins of team '{key.team}' (or an operator) can change its keys."
            )
        raise _denied("You can only change your own keys.")


def authorize_owner_name(actor: Actor, username: str) -> None:
    """Naming an owner other than yourself is an operator's call."""
    if not actor.is_operator and username != getattr(actor.user, "get_username", str)():
        raise _denied("Only operators can create keys for someone else.", "owner")


def authorize_key_create(
    actor: Actor, *, owner: Any, team: Team | None, rpm_limit: int | None, is_admin: bool
) -> None:
    """Users create keys for themselves (and team admins for their team) within the defaults;
    keys for someone else, admin keys and limits above the default are an operator's call."""
    require_key_manager(actor)
    if actor.is_operator:
        return
    if team is not None and not can_manage_team(actor, team):
        raise _denied(f"Only the admins of team '{team.name}' can create its keys.", "team")
    if owner.pk != actor.user_id:
        raise _denied("Only operators can create keys for someone else.", "owner")
    if is_admin:
        raise _denied("Only operators can create admin keys.", "is_admin")
    if rpm_limit is not None and rpm_limit > settings.NEBULA_DEFAULT_RPM:
        raise _denied(
            f"Only operators can set a limit above {settings.NEBULA_DEFAULT_RPM} requests per "
            "minute.",
            "rpm_limit",
        )


# The ceilings of a key nobody raised: the default request rate, no token limit, every model,
# no expiry.
def key_ceilings(key: ApiKey) -> dict[str, Any]:
    """The most a non-operator may set on `key`: what an operator set, else the defaults."""
    granted = key.operator_limits or {}
    expires = granted.get("expires_at")
    return {
        "rpm_limit": granted.get("rpm_limit", settings.NEBULA_DEFAULT_RPM),
        "tpm_limit": granted.get("tpm_limit"),
        "allowed_models": granted.get("allowed_models") or [],
        "expires_at": parse_datetime(expires) if isinstance(expires, str) else None,
    }


def authorize_key_limits(
    actor: Actor,
    key: ApiKey,
    *,
    rpm_limit: int,
    tpm_limit: int | None,
    allowed_models: list[str],
    expires_at: datetime | None,
) -> None:
    """Non-operators may narrow a key's limits, never widen them past its ceilings: a user
    cannot lift the model restriction, token limit or expiry an operator put on their key."""
    if actor.is_operator:
        return
    ceiling = key_ceilings(key)
    if rpm_limit > ceiling["rpm_limit"]:
        raise _denied(
            f"Only operators can raise this key above {ceiling['rpm_limit']} requests per minute.",
            "rpm_limit",
        )
    if ceiling["tpm_limit"] is not None and (tpm_limit is None or tpm_limit > ceiling["tpm_limit"]):
        raise _denied(
            f"An operator limited this key to {ceiling['tpm_limit']} tokens per minute; only an "
            "operator can raise or lift that.",
            "tpm_limit",
        )
    if ceiling["allowed_models"] and (
        not allowed_models or not set(allowed_models) <= set(ceiling["allowed_models"])
    ):
        raise _denied(
            "An operator restricted this key to "
            f"{', '.join(ceiling['allowed_models'])}; you may narrow that list, not widen it.",
            "allowed_models",
        )
    if ceiling["expires_at"] is not None and (
        expires_at is None or expires_at > ceiling["expires_at"]
    ):
        raise _denied(
            "An operator set this key to expire at "
            f"{ceiling['expires_at']:%Y-%m-%d %H:%M} UTC; only an operator can extend it.",
            "expires_at",
        )
