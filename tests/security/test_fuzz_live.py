"""Fuzzing the HTTP API from its own OpenAPI description (/api/schema/) with schemathesis,
against the live servers: valid and invalid requests for every operation. No answer may be a
5xx, and every answer must match what the description documents, errors included (one format,
OpenAI's). The chat request validator has its own fuzzing in tests/inference.

NEBULA_FUZZ_EXAMPLES (default 15) sets the examples per operation and mode; more for a longer
search, e.g. NEBULA_FUZZ_EXAMPLES=200.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("NEBULA_FUZZ_EXAMPLES", "15"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/apikeys"),
    ("POST", "/apikeys"),
    ("GET", "/apikeys/{key_id}"),
    ("PATCH", "/apikeys/{key_id}"),
    ("DELETE", "/apikeys/{key_id}"),
    ("GET", "/models"),
    ("POST", "/models"),
    ("GET", "/models/{name}"),
    ("PATCH", "/models/{name}"),
    ("DELETE", "/models/{name}"),
    ("GET", "/metrics"),
    ("GET", "/metrics/prometheus"),
    ("GET", "/health"),
]


@pytest.fixture
def api(live, alice, operator, make_key, ready_model) -> dict[str, Any]:
    # A short context keeps what the fuzzer may ask of the simulated GPU small.
    ready_model("nebula-7b", context_length=512)
    ready_model("all-minilm-l6-v2", kind="embedding", params_billions=None)
    _, user_secret = make_key(alice, name="fuzz", rpm_limit=100_000)
    _, admin_secret = make_key(operator, name="fuzz-admin", is_admin=True, rpm_limit=100_000)
    raw = httpx.get(live.url + "/api/schema/?format=json").json()
    return {
        "schema": schemathesis.openapi.from_dict(raw),
        "url": live.url,
        "user": {"Authorization": f"Bearer {user_secret}"},
        "admin": {"Authorization": f"Bearer {admin_secret}"},
    }


# GET /health takes no input at all, so there is nothing to make invalid about it.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if not (path == "/health" and mode == GenerationMode.NEGATIVE)
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_request_gets_a_5xx_or_an_undocumented_answer(api, method, path, mode):
    operation = api["schema"][path][method]
    headers = api["user"] if path.startswith("/v1/") else api["admin"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        # Random model names are all 404s: aim half of the chat requests at a real model, and
        # half of those at its event stream.
        chat = path == "/v1/chat/completions" and isinstance(case.body, dict) and case.body
        pick = zlib.crc32(repr(case.body).encode()) % 4
        if chat and pick:
            case.body["model"] = "nebula-7b"
            if pick > 1:
                case.body["stream"] = True
        embed = path == "/v1/embeddings" and isinstance(case.body, dict) and case.body
        if embed and pick:
            case.body["model"] = "all-minilm-l6-v2"
        response = case.call(base_url=api["url"], headers=headers, timeout=60)
        case.validate_response(response, checks=CHECKS)

    fuzz()
