"""Secrets Nebula must be able to read back (an upstream engine's API key), encrypted at rest.

Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`): authenticated, so a tampered or
foreign value fails loudly instead of decrypting to garbage. The keys come from
`NEBULA_ENCRYPTION_KEY` (comma-separated Fernet keys: the first encrypts, every one decrypts,
so a key can be rotated by putting the new one first); without it, one key is derived from
`SECRET_KEY`, so changing `SECRET_KEY` then makes stored secrets unreadable.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

__all__ = ["InvalidToken", "secret_decrypt", "secret_encrypt"]


def derived_key(secret_key: str) -> bytes:
    """A Fernet key from Django's SECRET_KEY (domain-separated, so it is not SECRET_KEY)."""
    digest = hashlib.sha256(b"nebula-encryption-key:" + secret_key.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def _box() -> MultiFernet:
    keys = settings.NEBULA_ENCRYPTION_KEYS or [derived_key(settings.SECRET_KEY).decode()]
    return MultiFernet([Fernet(key.encode()) for key in keys])


def secret_encrypt(plain: str) -> str:
    return _box().encrypt(plain.encode()).decode("ascii")


def secret_decrypt(token: str) -> str:
    """The plain text of `secret_encrypt`'s output; InvalidToken if no configured key opens it."""
    return _box().decrypt(token.encode("ascii")).decode()
