"""API key operations. Every interface (DRF, dashboard, admin, management command) calls these."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from infra.epoch import epoch_bump_on_commit
from infra.errors import InvalidRequest
from keys.models import ApiKey
from keys.tokens import display_prefix, generate_key, key_digest

_UNSET: Any = object()
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_RPM = 1_000_000
MAX_TPM = 1_000_000_000


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown once, never stored


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


@transaction.atomic
def key_create(
    *,
    owner: Any,
    name: str,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    allowed_models: Iterable[str] | None = None,
    expires_at: datetime | None = None,
    is_admin: bool = False,
) -> CreatedKey:
    name = (name or "").strip()
    if not name:
        raise InvalidRequest("A key needs a name.", param="name")
    if len(name) > 100:
        raise InvalidRequest("A key name is at most 100 characters.", param="name")
    _check_limits(rpm_limit, tpm_limit)
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest("expires_at must be in the future.", param="expires_at")
    secret = generate_key()
    key = ApiKey(
        owner=owner,
        name=name,
        prefix=display_prefix(secret),
        digest=key_digest(secret),
        tpm_limit=tpm_limit,
        allowed_models=_clean_models(allowed_models),
        expires_at=expires_at,
        is_admin=is_admin,
    )
    if rpm_limit is not None:
        key.rpm_limit = rpm_limit
    key.save()
    return CreatedKey(key=key, secret=secret)


@transaction.atomic
def key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke `key`. Idempotent. Every web process refuses it from its next request on."""
    locked = ApiKey.objects.select_for_update().get(pk=key.pk)
    if locked.revoked_at is None:
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        epoch_bump_on_commit()
    return locked


@transaction.atomic
def key_update(
    *,
    key: ApiKey,
    name: str | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    clear_tpm_limit: bool = False,
    allowed_models: Iterable[str] | None = None,
    expires_at: datetime | None = _UNSET,
) -> ApiKey:
    _check_limits(rpm_limit, tpm_limit)
    if expires_at is not _UNSET:
        key.expires_at = expires_at
    if name is not None:
        if not name.strip() or len(name) > 100:
            raise InvalidRequest("A key name is 1 to 100 characters.", param="name")
        key.name = name.strip()
    if rpm_limit is not None:
        key.rpm_limit = rpm_limit
    if tpm_limit is not None:
        key.tpm_limit = tpm_limit
    elif clear_tpm_limit:
        key.tpm_limit = None
    if allowed_models is not None:
        key.allowed_models = _clean_models(allowed_models)
    key.save()
    epoch_bump_on_commit()
    return key


def keys_touch_last_used(last_used: dict[int, datetime]) -> None:
    """Record when keys were last used (batched by the usage ledger, never per request)."""
    for key_id, when in last_used.items():
        ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gte=when).update(last_used_at=when)
