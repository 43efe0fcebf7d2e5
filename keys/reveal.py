"""Show a new secret once, after a redirect, without writing it to the database.

A page that creates (or rotates) a key answers with a redirect (post/redirect/get, so reloading
the page cannot create a second key), and the page it redirects to shows the secret once. The
secret waits in between in Redis, for `REVEAL_TTL` seconds at most, and is deleted by the read
that shows it (GETDEL: two tabs racing for it get it once).

Neither half is enough on its own: Redis holds the secret XOR-ed with a random pad as long as
the secret (a one-time pad, used once), and only the redirect's URL holds the pad; the Redis key
is the pad's SHA-256. A Redis dump or an access log line alone reveals nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass

from infra.redis_client import REDIS_ERRORS, get_redis

REVEAL_TTL = 300  # seconds: long enough for a slow redirect, short enough to be forgotten


@dataclass(frozen=True)
class Revealed:
    secret: str
    key_id: int


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


def _redis_key(pad: bytes) -> str:
    return "nebula:reveal:" + hashlib.sha256(pad).hexdigest()


def secret_stash(*, secret: str, user_id: int | None, key_id: int) -> str:
    """Keep `secret` for one reveal by `user_id`; returns the token to put in the redirect."""
    payload = json.dumps({"secret": secret, "user": user_id, "key": key_id}).encode()
    pad = secrets.token_bytes(len(payload))
    get_redis().set(_redis_key(pad), _xor(payload, pad), ex=REVEAL_TTL)
    return base64.urlsafe_b64encode(pad).decode().rstrip("=")


def secret_claim(*, token: str, user_id: int | None, key_id: int | None = None) -> Revealed | None:
    """The secret stashed under `token` for this user (and key), once; None ever after, for
    anyone else, or when Redis is unreachable (the page then says the secret is gone)."""
    try:
        pad = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if not pad:
        return None
    try:
        sealed = get_redis().getdel(_redis_key(pad))
    except REDIS_ERRORS:
        return None
    if not isinstance(sealed, bytes) or len(sealed) != len(pad):
        return None
    try:
        payload = json.loads(_xor(sealed, pad))
    except ValueError:
        return None
    if payload.get("user") != user_id or (key_id is not None and payload.get("key") != key_id):
        return None
    return Revealed(secret=str(payload["secret"]), key_id=int(payload["key"]))
