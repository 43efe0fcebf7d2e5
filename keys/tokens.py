"""The API key format: `nb_` + 32 random base62 characters + a 6-character CRC32 checksum.

The checksum lets us reject a typo or a random string that merely looks like a key without a
database or Redis lookup (the same idea as GitHub's token format). 32 base62 characters carry
190 bits from `secrets`. Only a SHA-256 digest is stored: the key has full entropy, so a fast hash
is enough (a password hasher would cost ~0.2 s per request for no gain), and the prefix shown in
listings is the first 8 random characters, which says nothing useful about the rest.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import zlib

KEY_PREFIX = "nb_"
BODY_LENGTH = 32
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 8
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ALPHABET_SET = frozenset(ALPHABET)


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        chars.append(ALPHABET[remainder])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_key() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def is_well_formed(key: str) -> bool:
    """True when `key` has the right shape and checksum. No I/O."""
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    body = key[len(KEY_PREFIX) : len(KEY_PREFIX) + BODY_LENGTH]
    if not _ALPHABET_SET.issuperset(key[len(KEY_PREFIX) :]):
        return False
    return secrets.compare_digest(_checksum(body), key[-CHECKSUM_LENGTH:])


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]
