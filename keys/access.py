"""Who is asking, and what they may touch: every key lookup on behalf of a person goes here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet

from infra.errors import NotFound, PermissionDenied
from keys.models import ApiKey

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


@dataclass(frozen=True)
class Actor:
    """A person acting through the dashboard (session) or a script acting through an API key.

    Keys carry their own privilege: an admin key acts as an operator whoever owns it, and a
    regular key never manages anything, even when its owner is staff.
    """

    user: Any  # a Django user
    key: ApiKey | None = None

    @property
    def is_operator(self) -> bool:
        if self.key is not None:
            return self.key.is_admin
        return bool(self.user.is_staff)

    @property
    def can_manage_keys(self) -> bool:
        return self.key is None or self.key.is_admin


def actor_from_request(request: Any) -> Actor:
    auth = getattr(request, "auth", None)
    return Actor(user=request.user, key=auth if isinstance(auth, ApiKey) else None)


def actor_for_user(user: AbstractBaseUser | AnonymousUser) -> Actor:
    return Actor(user=user)


def require_key_manager(actor: Actor) -> None:
    if not actor.can_manage_keys:
        raise PermissionDenied(
            "This API key cannot manage API keys; use an admin key or log in.",
            code="insufficient_permissions",
        )


def require_operator(actor: Actor) -> None:
    if not actor.is_operator:
        raise PermissionDenied(
            "Only operators (staff users or admin keys) may do this.",
            code="insufficient_permissions",
        )


def keys_visible_to(actor: Actor) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.select_related("owner")
    if actor.is_operator:
        return keys
    return keys.filter(owner_id=actor.user.pk)


def key_get_for(actor: Actor, key_id: int | str) -> ApiKey:
    """The key with this id if `actor` may see it; 404 otherwise (never 403: no existence leak)."""
    try:
        return keys_visible_to(actor).get(pk=int(key_id))
    except (ApiKey.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"No API key with id '{key_id}'.", code="key_not_found") from None


def authorize_key_settings(
    actor: Actor,
    *,
    owner: Any,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    is_admin: bool = False,
) -> None:
    """Users shape their own keys; only operators hand out capacity or privilege.

    A user may create keys for themselves and set limits at or below the default, but raising a
    limit, lifting a token limit, creating an admin key or creating a key for someone else is an
    operator's call: that is what operators sell.
    """
    if actor.is_operator:
        return
    from django.conf import settings

    if owner.pk != actor.user.pk:
        raise PermissionDenied(
            "You can only manage your own keys.", code="insufficient_permissions"
        )
    if is_admin:
        raise PermissionDenied(
            "Only operators can create admin keys.", code="insufficient_permissions"
        )
    if rpm_limit is not None and rpm_limit > settings.NEBULA_DEFAULT_RPM:
        raise PermissionDenied(
            f"Only operators can set a limit above {settings.NEBULA_DEFAULT_RPM} requests per "
            "minute.",
            code="insufficient_permissions",
        )
    del tpm_limit  # lowering your own token budget is always allowed
