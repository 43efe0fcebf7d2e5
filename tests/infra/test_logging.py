"""Secret redaction (infra.logging.redact): whatever shape a key takes in a log line, only its
11-character prefix, which is stored and shown anyway, survives."""

from __future__ import annotations

import logging
import time
from urllib.parse import unquote

import pytest

from infra.logging import RedactSecretsFilter, redact

SECRET = "nb_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6" + "Zx81Qq"
REST = SECRET[11:]


def _fully(text: str) -> str:
    return "".join(f"%{ord(char):02X}" for char in text)


def _leaks(text: str) -> bool:
    for _ in range(4):
        if REST in text:
            return True
        text = unquote(text)
    return REST in text


@pytest.mark.parametrize(
    "line",
    [
        f'"GET /v1/models?api_key={SECRET}"',
        f'"GET /v1/models?api_key=nb%5F{SECRET[3:]}"',
        f'"GET /v1/models?api_key=nb%5f{SECRET[3:]}"',
        f'"GET /v1/models/{_fully(SECRET)} HTTP/1.1"',
        f'"GET /v1/models?k=nb%255F{SECRET[3:]}"',
        f'"GET /x?a=1%20b&key=%6Eb%5F{SECRET[3:10]}%41{SECRET[11:]}"',
    ],
    ids=["plain", "%5F", "%5f", "every-char", "%255F", "mixed"],
)
def test_a_key_in_any_url_encoding_is_redacted(line):
    redacted = redact(line)
    assert not _leaks(redacted), redacted
    assert "…[redacted]" in redacted


def test_the_rest_of_an_encoded_line_is_left_as_it_was():
    line = f'"GET /v1/models?q=caf%C3%A9&key=nb%5F{SECRET[3:]}&next=%0Aforged" 200'
    redacted = redact(line)
    assert (
        redacted == f'"GET /v1/models?q=caf%C3%A9&key={SECRET[:11]}…[redacted]&next=%0Aforged" 200'
    )
    assert "\n" not in redacted  # nothing decoded into the line but the kept prefix


def test_percent_signs_without_a_key_change_nothing():
    for line in ("100% done", "%zz%", "GET /a%20b?c=%41%42", "nb%5Fshort"):
        assert redact(line) == line


def test_redaction_stays_linear_on_hostile_input():
    started = time.perf_counter()
    redact("a" * 200_000 + "%")
    redact("%4" * 100_000)
    assert time.perf_counter() - started < 1


def test_the_log_filter_redacts_an_encoded_key_in_a_message():
    record = logging.LogRecord(
        "daphne", logging.INFO, __file__, 1, "GET %s", (f"/v1?k=nb%5F{SECRET[3:]}",), None
    )
    assert RedactSecretsFilter().filter(record)
    assert not _leaks(record.getMessage())
