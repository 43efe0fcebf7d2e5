"""Logging helpers: no API key secret ever reaches a log line."""

from __future__ import annotations

import logging
import re

# Anything shaped like a Nebula key (see keys.tokens), even inside a longer string.
_SECRET_RE = re.compile(r"nb_[0-9A-Za-z]{16,}")


def redact(text: str) -> str:
    return _SECRET_RE.sub(lambda m: m.group(0)[:11] + "…[redacted]", text)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "nb_" in message:
            record.msg = redact(message)
            record.args = None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            if "nb_" in formatted:
                record.exc_text = redact(formatted)
        return True
