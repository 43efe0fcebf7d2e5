"""Authenticating API keys: for DRF views (database) and for the /v1 hot path (process cache)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from django.db.models import Q
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from infra.db import SingleFlight, run_db
from infra.epoch import MISS, EpochCache, current_epoch
from infra.errors import AuthenticationFailed
from keys.models import ApiKey
from keys.tokens import is_well_formed, key_digest

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY)."
)
INVALID_KEY_MESSAGE = "Incorrect API key provided. Create or look up your keys on the dashboard."
REVOKED_KEY_MESSAGE = "This API key has been revoked."
EXPIRED_KEY_MESSAGE = "This API key has expired."
ROTATED_KEY_MESSAGE = (
    "This API key was rotated and its previous secret no longer works. Use the new secret."
)


def parse_bearer(header: str | None) -> str:
    """The key in an `Authorization: Bearer …` header, or 401. No I/O."""
    if not header:
        raise AuthenticationFailed(MISSING_KEY_MESSAGE)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(MISSING_KEY_MESSAGE)
    if not is_well_formed(token):
        raise AuthenticationFailed(INVALID_KEY_MESSAGE)
    return token


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the hot path needs to know about a key, cached per process."""

    id: int
    prefix: str
    owner_id: int
    rpm_limit: int
    tpm_limit: int | None
    allowed_models: frozenset[str]
    is_admin: bool
    expires_at: float | None  # Unix time
    revoked: bool
    # Unix time the secret this entry was found by stops working, when it is the previous
    # secret of a rotated key. Checked on every request, so the grace period ends on time in
    # every process without anyone telling it.
    superseded_at: float | None = None

    def check_usable(self) -> None:
        if self.revoked:
            raise AuthenticationFailed(REVOKED_KEY_MESSAGE)
        now = time.time()
        if self.superseded_at is not None and self.superseded_at <= now:
            raise AuthenticationFailed(ROTATED_KEY_MESSAGE)
        if self.expires_at is not None and self.expires_at <= now:
            raise AuthenticationFailed(EXPIRED_KEY_MESSAGE)

    def may_use(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models

    @classmethod
    def from_key(cls, key: ApiKey, *, digest: str | None = None) -> KeyInfo:
        """The entry for `key` as found by `digest` (its current secret's, by default)."""
        previous = digest is not None and digest == key.previous_digest
        grace_end = key.previous_valid_until if previous else None
        return cls(
            id=key.pk,
            prefix=key.prefix,
            owner_id=key.owner_id,
            rpm_limit=key.rpm_limit,
            tpm_limit=key.tpm_limit,
            allowed_models=frozenset(key.allowed_models or ()),
            is_admin=key.is_admin,
            expires_at=key.expires_at.timestamp() if key.expires_at else None,
            # A deactivated owner's keys stop working like revoked ones.
            revoked=key.revoked_at is not None or not key.owner.is_active,
            superseded_at=(grace_end.timestamp() if grace_end else 0.0) if previous else None,
        )


def key_for_digest(digest: str) -> ApiKey | None:
    """The key whose current or previous secret has this digest (the one query for both)."""
    return (
        ApiKey.objects.select_related("owner")
        .filter(Q(digest=digest) | Q(previous_digest=digest))
        .first()
    )


def key_usable_error(key: ApiKey, digest: str) -> str | None:
    """Why `key`, found by `digest`, cannot be used right now (None: it can)."""
    try:
        KeyInfo.from_key(key, digest=digest).check_usable()
    except AuthenticationFailed as error:
        return error.message
    return None


_keys_by_digest: EpochCache[str, KeyInfo | None] = EpochCache("api-keys")
_fetches = SingleFlight()


def _load_by_digest(digest: str) -> KeyInfo | None:
    key = key_for_digest(digest)
    return KeyInfo.from_key(key, digest=digest) if key is not None else None


def _load_by_id(key_id: int) -> KeyInfo | None:
    key = ApiKey.objects.select_related("owner").filter(pk=key_id).first()
    return KeyInfo.from_key(key) if key is not None else None


async def key_info_for_secret(secret: str) -> tuple[KeyInfo | None, str | None]:
    """The key for `secret` (None if unknown) and the epoch the answer is valid for.

    Served from the process cache when possible. The caller must confirm the epoch with Redis
    (the admission script does) before trusting the answer.
    """
    digest = key_digest(secret)
    cached = _keys_by_digest.get(digest)
    if cached is not MISS:
        return cached, current_epoch()  # type: ignore[return-value]

    async def fetch() -> tuple[KeyInfo | None, str | None]:
        epoch = current_epoch()  # observed before the read, so the answer is valid for it
        info = await run_db(functools.partial(_load_by_digest, digest))
        _keys_by_digest.put(digest, info, epoch=epoch)
        return info, epoch

    return await _fetches.run(digest, fetch)


def key_known(secret: str) -> bool:
    """True if this process knows `secret` as some key without asking the database."""
    cached = _keys_by_digest.get(key_digest(secret))
    return cached is not MISS and cached is not None


async def key_info_for_id(key_id: int) -> KeyInfo | None:
    """For callers that hold a key id rather than its secret (the dashboard playground)."""
    return await run_db(functools.partial(_load_by_id, key_id))


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """DRF authentication for the management API: `Authorization: Bearer nb_…`."""

    def authenticate(self, request: Any) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        try:
            secret = parse_bearer(header)
        except AuthenticationFailed as error:
            raise exceptions.AuthenticationFailed(error.message) from None
        digest = key_digest(secret)
        key = key_for_digest(digest)
        if key is None or not key.owner.is_active:
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE)
        if (refusal := key_usable_error(key, digest)) is not None:
            raise exceptions.AuthenticationFailed(refusal)
        return key.owner, key

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="nebula"'


API_KEY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key: `Authorization: Bearer nb_…`.",
}


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes `ApiKeyAuthentication` in the OpenAPI schema (drf-spectacular)."""

    target_class = ApiKeyAuthentication
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return API_KEY_SCHEME
