"""Logging helpers: no API key secret ever reaches a log line."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

# Anything shaped like a Nebula key (see keys.tokens), even inside a longer string.
_SECRET_RE = re.compile(r"nb_[0-9A-Za-z]{16,}")
# A run of key characters and `%`: where a key a client percent-encoded (`nb%5F…`,
# `%6E%62%5f…`, or twice, `nb%255F…`) would be, as in daphne's access log, which writes request
# URIs as they came. A plain character class: linear on any input (a pattern that insists on a
# `%XX` inside backtracks quadratically over a long run without one).
_ENCODED_RUN_RE = re.compile(r"[0-9A-Za-z_%]+")
# Decoding rounds tried on one run: a client may encode twice, a proxy once more.
_DECODE_ROUNDS = 3


def _redact_match(match: re.Match[str]) -> str:
    return match.group(0)[:11] + "…[redacted]"


def _redact_encoded(match: re.Match[str]) -> str:
    run = decoded = match.group(0)
    if "%" not in run:
        return run
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(decoded)
        secret = _SECRET_RE.search(decoded)
        if secret is not None:
            # The whole run goes: only the secret's shown prefix is kept, decoded, and nothing
            # else of what it decoded to (a `%0A` in it would otherwise forge a log line).
            return _redact_match(secret)
    return run


def redact(text: str) -> str:
    text = _SECRET_RE.sub(_redact_match, text)
    if "%" in text:
        text = _ENCODED_RUN_RE.sub(_redact_encoded, text)
    return text


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "nb_" in message or "%" in message:
            redacted = redact(message)
            if redacted != message:
                record.msg = redacted
                record.args = None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            if "nb_" in formatted or "%" in formatted:
                record.exc_text = redact(formatted)
        return True
