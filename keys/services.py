"""API key and team operations. Every interface (DRF, dashboard, admin, management commands)
calls these, with the `Actor` it acts for: the services ask `keys.access` whether the actor may,
validate, write, and record the action in the audit log in the same transaction."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from infra.epoch import epoch_bump_on_commit
from infra.errors import Conflict, InvalidRequest
from keys.access import (
    Actor,
    authorize_key_change,
    authorize_key_create,
    authorize_key_limits,
    authorize_owner_name,
    authorize_team_management,
    parse_id,
    require_key_manager,
    require_operator,
)
from keys.models import ApiKey, Team, TeamMembership, TeamRole
from keys.tokens import display_prefix, generate_key, key_digest
from telemetry.audit import audit_by


class _Unset:
    """A keyword argument not given (None is a value: "no token limit", "never expires")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_RPM = 1_000_000
MAX_TPM = 1_000_000_000
MAX_GRACE_SECONDS = 30 * 24 * 3600
LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "allowed_models", "expires_at")


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown once, never stored


@dataclass(frozen=True)
class KeySpec:
    """A key creation that passed every check: what `key_create` will write."""

    owner: Any
    team: Team | None
    name: str
    rpm_limit: int | None
    tpm_limit: int | None
    allowed_models: list[str]
    expires_at: datetime | None
    is_admin: bool
    operator_limits: dict[str, Any] = field(default_factory=dict)


# --- Validation ---------------------------------------------------------------------------------


def _clean_name(name: Any) -> str:
    name = (name if isinstance(name, str) else "").strip()
    if not name:
        raise InvalidRequest("A key needs a name.", param="name")
    if len(name) > 100:
        raise InvalidRequest("A key name is at most 100 characters.", param="name")
    return name


def _check_limits(rpm: int | None, tpm: int | None) -> None:
    if rpm is not None and not 1 <= rpm <= MAX_RPM:
        raise InvalidRequest(f"rpm_limit must be between 1 and {MAX_RPM}.", param="rpm_limit")
    if tpm is not None and not 1 <= tpm <= MAX_TPM:
        raise InvalidRequest(f"tpm_limit must be between 1 and {MAX_TPM}.", param="tpm_limit")


def _clean_models(models: Iterable[str] | None) -> list[str]:
    names = sorted(set(models or []))
    for name in names:
        if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
            raise InvalidRequest(f"'{name}' is not a valid model name.", param="allowed_models")
    return names


def check_key_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest("expires_at must be in the future.", param="expires_at")


def _user_named(username: str, *, param: str) -> Any:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise InvalidRequest(f"No user named '{username}'.", param=param)
    return user


def _resolve_team(actor: Actor, team: Team | int | str | None) -> Team | None:
    if team is None or isinstance(team, Team):
        return team
    # Not visible and not there read the same: nobody learns which teams exist.
    found = Team.objects.filter(pk=parse_id(team)).first()
    if found is None or not (actor.is_operator or _is_member(actor, found)):
        raise InvalidRequest(f"No team with id '{team}'.", param="team")
    return found


def _is_member(actor: Actor, team: Team) -> bool:
    return TeamMembership.objects.filter(team=team, user_id=actor.user_id).exists()


# --- Audit --------------------------------------------------------------------------------------


def _locked(key: ApiKey) -> ApiKey:
    """The key's row, locked for this transaction (its team may be none: lock the key only,
    PostgreSQL cannot lock the missing side of an outer join)."""
    keys = ApiKey.objects.select_for_update(of=("self",)).select_related("owner", "team")
    return keys.get(pk=key.pk)


def _audit_key(actor: Actor, action: str, key: ApiKey, **change: Any) -> None:
    audit_by(actor, action, target_type="api_key", target=key, label=str(key), **change)


def _audit_team(actor: Actor, action: str, team: Team, **change: Any) -> None:
    audit_by(actor, action, target_type="team", target=team, label=team.name, **change)


def key_snapshot(key: ApiKey) -> dict[str, Any]:
    """What the audit log keeps of a key: its settings, never its secret or digest."""
    return {
        "name": key.name,
        "prefix": key.prefix,
        "owner": key.owner.get_username() if key.owner_id else None,
        "team": key.team.name if key.team_id and key.team else None,
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "allowed_models": list(key.allowed_models or []),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "is_admin": key.is_admin,
        "state": key.state,
    }


# --- Keys ---------------------------------------------------------------------------------------


def check_key_create(
    *,
    actor: Actor,
    name: str,
    owner: Any = None,
    team: Team | int | str | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    allowed_models: Iterable[str] | None = None,
    expires_at: datetime | None = None,
    is_admin: bool = False,
) -> KeySpec:
    """Everything `key_create` checks, without writing: may `actor` create this key, and is it
    valid? `owner` is a user or a username (None: the actor); `team` a team or its id."""
    require_key_manager(actor)
    name = _clean_name(name)
    if owner is None:
        if not actor.user_id:
            raise InvalidRequest("Name the key's owner.", param="owner")
        owner = actor.user
    elif isinstance(owner, str):
        authorize_owner_name(actor, owner)  # before the lookup: no probing for usernames
        owner = _user_named(owner, param="owner")
    resolved_team = _resolve_team(actor, team)
    authorize_key_create(
        actor, owner=owner, team=resolved_team, rpm_limit=rpm_limit, is_admin=is_admin
    )
    _check_limits(rpm_limit, tpm_limit)
    models = _clean_models(allowed_models)
    check_key_expiry(expires_at)
    given = {
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "allowed_models": models,
        "expires_at": expires_at.isoformat() if expires_at else None,
    }
    return KeySpec(
        owner=owner,
        team=resolved_team,
        name=name,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        allowed_models=models,
        expires_at=expires_at,
        is_admin=is_admin,
        # What an operator sets becomes the key's ceiling; defaults are no one's grant.
        operator_limits=(
            {k: v for k, v in given.items() if v not in (None, [])} if actor.is_operator else {}
        ),
    )


@transaction.atomic
def key_create(*, actor: Actor, **request: Any) -> CreatedKey:
    """Create a key (see `check_key_create` for the arguments). The secret is returned once."""
    spec = check_key_create(actor=actor, **request)
    secret = generate_key()
    key = ApiKey(
        owner=spec.owner,
        team=spec.team,
        name=spec.name,
        prefix=display_prefix(secret),
        digest=key_digest(secret),
        tpm_limit=spec.tpm_limit,
        allowed_models=spec.allowed_models,
        expires_at=spec.expires_at,
        is_admin=spec.is_admin,
        operator_limits=spec.operator_limits,
    )
    if spec.rpm_limit is not None:
        key.rpm_limit = spec.rpm_limit
    key.save()
    _audit_key(actor, "key.create", key, after=key_snapshot(key))
    return CreatedKey(key=key, secret=secret)


@transaction.atomic
def key_update(
    *,
    actor: Actor,
    key: ApiKey,
    name: str = UNSET,
    rpm_limit: int = UNSET,
    tpm_limit: int | None = UNSET,
    allowed_models: Iterable[str] = UNSET,
    expires_at: datetime | None = UNSET,
) -> ApiKey:
    """Change what is given (None lifts the token limit or the expiry). Non-operators may only
    narrow a key's limits (`access.authorize_key_limits`)."""
    authorize_key_change(actor, key)
    locked = _locked(key)
    before = key_snapshot(locked)
    if name is not UNSET:
        locked.name = _clean_name(name)
    new_rpm = locked.rpm_limit if rpm_limit is UNSET else rpm_limit
    new_tpm = locked.tpm_limit if tpm_limit is UNSET else tpm_limit
    if not isinstance(new_rpm, int) or isinstance(new_rpm, bool):
        raise InvalidRequest("rpm_limit must be a whole number.", param="rpm_limit")
    _check_limits(new_rpm, new_tpm)
    new_models = (
        list(locked.allowed_models) if allowed_models is UNSET else _clean_models(allowed_models)
    )
    new_expiry = locked.expires_at if expires_at is UNSET else expires_at
    if expires_at is not UNSET:
        check_key_expiry(expires_at)
    authorize_key_limits(
        actor,
        locked,
        rpm_limit=new_rpm,
        tpm_limit=new_tpm,
        allowed_models=new_models,
        expires_at=new_expiry,
    )
    if actor.is_operator:
        # The limits an operator changes become the ceilings the owner cannot widen.
        changed = {
            "rpm_limit": (rpm_limit, new_rpm),
            "tpm_limit": (tpm_limit, new_tpm),
            "allowed_models": (allowed_models, new_models),
            "expires_at": (expires_at, new_expiry.isoformat() if new_expiry else None),
        }
        limits = dict(locked.operator_limits or {})
        for limit, (given, value) in changed.items():
            if given is not UNSET:
                limits[limit] = value
        locked.operator_limits = limits
    locked.rpm_limit, locked.tpm_limit = new_rpm, new_tpm
    locked.allowed_models, locked.expires_at = new_models, new_expiry
    locked.save()
    after = key_snapshot(locked)
    if after != before:
        _audit_key(actor, "key.update", locked, before=before, after=after)
    epoch_bump_on_commit()
    return locked


@transaction.atomic
def key_rotate(*, actor: Actor, key: ApiKey, grace_seconds: int) -> CreatedKey:
    """Give `key` a new secret. The old one keeps working for `grace_seconds` (0: stops now),
    then every web process refuses it: its cached entry carries the deadline. A key rotated
    again within the grace period keeps only the secret it had just before."""
    authorize_key_change(actor, key)
    if (
        not isinstance(grace_seconds, int)
        or isinstance(grace_seconds, bool)
        or not 0 <= grace_seconds <= MAX_GRACE_SECONDS
    ):
        raise InvalidRequest(
            f"grace_seconds must be a whole number from 0 to {MAX_GRACE_SECONDS} (30 days).",
            param="grace_seconds",
        )
    locked = _locked(key)
    if not locked.is_active:
        raise Conflict(
            f"This key is {locked.state}; only an active key can be rotated.",
            code="invalid_state",
        )
    before = {**key_snapshot(locked), "previous_prefix": locked.previous_prefix or None}
    now = timezone.now()
    secret = generate_key()
    locked.previous_digest, locked.previous_prefix = locked.digest, locked.prefix
    locked.previous_valid_until = now + timedelta(seconds=grace_seconds)
    locked.digest, locked.prefix = key_digest(secret), display_prefix(secret)
    locked.rotated_at = now
    locked.save()
    after = {
        **key_snapshot(locked),
        "previous_prefix": locked.previous_prefix,
        "previous_valid_until": locked.previous_valid_until.isoformat(),
    }
    _audit_key(actor, "key.rotate", locked, before=before, after=after)
    epoch_bump_on_commit()  # processes that cached the old secret learn its deadline
    return CreatedKey(key=locked, secret=secret)


@transaction.atomic
def key_revoke(*, actor: Actor, key: ApiKey) -> ApiKey:
    """Revoke `key` (both secrets, after a rotation). Idempotent. Every web process refuses it
    from its next request on."""
    authorize_key_change(actor, key)
    locked = _locked(key)
    if locked.revoked_at is None:
        before = key_snapshot(locked)
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        _audit_key(actor, "key.revoke", locked, before=before, after=key_snapshot(locked))
        epoch_bump_on_commit()
    return locked


def keys_touch_last_used(last_used: dict[int, datetime]) -> None:
    """Record when keys were last used (batched by the usage ledger, never per request)."""
    for key_id, when in last_used.items():
        ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gte=when).update(last_used_at=when)


# --- Teams --------------------------------------------------------------------------------------


def _team_label(team: Team) -> str:
    return team.name


def _clean_team_name(name: Any) -> str:
    name = (name if isinstance(name, str) else "").strip()
    if not name or len(name) > 100:
        raise InvalidRequest("A team name is 1 to 100 characters.", param="name")
    return name


def _clean_role(role: Any) -> str:
    if role not in TeamRole.values:
        raise InvalidRequest(f"role must be one of: {', '.join(TeamRole.values)}.", param="role")
    return str(role)


def membership_snapshot(membership: TeamMembership) -> dict[str, Any]:
    return {"user": membership.user.get_username(), "role": membership.role}


@transaction.atomic
def team_create(*, actor: Actor, name: str, admin: Any = None) -> Team:
    """A new team (operators only), with `admin` (a user or username) as its first admin."""
    require_key_manager(actor)
    require_operator(actor)
    team = Team(name=_clean_team_name(name))
    try:
        with transaction.atomic():
            team.save()
    except IntegrityError:
        raise InvalidRequest(
            f"A team named '{team.name}' already exists.", param="name", code="duplicate_name"
        ) from None
    _audit_team(actor, "team.create", team, after={"name": team.name})
    if admin is not None:
        team_member_add(actor=actor, team=team, user=admin, role=TeamRole.ADMIN)
    return team


@transaction.atomic
def team_rename(*, actor: Actor, team: Team, name: str) -> Team:
    require_key_manager(actor)
    require_operator(actor)
    before = {"name": team.name}
    team.name = _clean_team_name(name)
    try:
        with transaction.atomic():
            team.save(update_fields=["name"])
    except IntegrityError:
        raise InvalidRequest(
            f"A team named '{team.name}' already exists.", param="name", code="duplicate_name"
        ) from None
    _audit_team(actor, "team.rename", team, before=before, after={"name": team.name})
    return team


def _member_user(user: Any) -> Any:
    return _user_named(user, param="username") if isinstance(user, str) else user


@transaction.atomic
def team_member_add(
    *, actor: Actor, team: Team, user: Any, role: str = TeamRole.MEMBER
) -> TeamMembership:
    """Add `user` (a user or username) to `team`: team admins and operators."""
    authorize_team_management(actor, team)
    role = _clean_role(role)
    member = _member_user(user)
    if TeamMembership.objects.filter(team=team, user=member).exists():
        raise Conflict(
            f"{member.get_username()} is already in team '{team.name}'.",
            param="username",
            code="already_a_member",
        )
    membership = TeamMembership.objects.create(team=team, user=member, role=role)
    _audit_team(actor, "team.member_add", team, after=membership_snapshot(membership))
    return membership


def _membership_for_change(team: Team, user: Any) -> TeamMembership:
    member = _member_user(user)
    membership = (
        TeamMembership.objects.select_for_update()
        .select_related("user")
        .filter(team=team, user=member)
        .first()
    )
    if membership is None:
        raise InvalidRequest(
            f"{member.get_username()} is not in team '{team.name}'.", param="username"
        )
    return membership


def _check_an_admin_remains(actor: Actor, team: Team, leaving: TeamMembership) -> None:
    # A team left without an admin can only be run by operators: a team admin may not do that
    # to their team (an operator may).
    if actor.is_operator or leaving.role != TeamRole.ADMIN:
        return
    others = TeamMembership.objects.filter(team=team, role=TeamRole.ADMIN).exclude(pk=leaving.pk)
    if not others.exists():
        raise Conflict(
            f"'{team.name}' needs at least one admin: make someone else admin first.",
            param="role",
            code="last_team_admin",
        )


@transaction.atomic
def team_member_set_role(*, actor: Actor, team: Team, user: Any, role: str) -> TeamMembership:
    authorize_team_management(actor, team)
    role = _clean_role(role)
    membership = _membership_for_change(team, user)
    if membership.role == role:
        return membership
    if role != TeamRole.ADMIN:
        _check_an_admin_remains(actor, team, membership)
    before = membership_snapshot(membership)
    membership.role = role
    membership.save(update_fields=["role"])
    _audit_team(
        actor, "team.member_role", team, before=before, after=membership_snapshot(membership)
    )
    return membership


@transaction.atomic
def team_member_remove(*, actor: Actor, team: Team, user: Any) -> None:
    """Remove `user` from `team`: team admins and operators, or the member themselves. The
    team's keys stay the team's."""
    membership = _membership_for_change(team, user)
    if membership.user_id != actor.user_id or not actor.can_manage_keys:
        authorize_team_management(actor, team)
    _check_an_admin_remains(actor, team, membership)
    before = membership_snapshot(membership)
    membership.delete()
    _audit_team(actor, "team.member_remove", team, before=before)
