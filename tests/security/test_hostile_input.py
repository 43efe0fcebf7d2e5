"""Hostile request bodies and headers against every endpoint that reads them: each gets a 4xx
in the API's error format, never a 500, an HTML page or a traceback.

The daphne-level limits (bodies refused as they arrive, oversized headers, malformed HTTP) are
in test_http_limits_live.py; the fuzzing in test_fuzz*.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

# Committed data: /v1 views read keys and models on a pool of their own threads
# (infra.db), which cannot see a test's open transaction.
pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello"}]
DEEP = b"[" * 100_000 + b"]" * 100_000


def assert_api_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture
def client() -> Client:
    # A 500 must show up as a response (as a real server sends it), not as a raised exception.
    return Client(raise_request_exception=False)


@pytest.fixture
def endpoints(client, alice, operator, make_key, ready_model):
    """Every (method, path, auth headers) that reads a body, with a caller allowed to call it."""
    ready_model("nebula-7b")
    own_key, _ = make_key(alice, name="own")
    _, secret = make_key(alice, name="chat", rpm_limit=1000)
    _, admin_secret = make_key(operator, name="admin", is_admin=True)
    alice_session = Client(raise_request_exception=False)
    alice_session.force_login(alice)
    admin = {"HTTP_AUTHORIZATION": f"Bearer {admin_secret}"}
    return [
        (alice_session, "post", "/apikeys", {}),
        (alice_session, "patch", f"/apikeys/{own_key.pk}", {}),
        (client, "post", "/apikeys", admin),
        (client, "post", "/models", admin),
        (client, "patch", "/models/nebula-7b", admin),
        (client, "post", "/v1/chat/completions", {"HTTP_AUTHORIZATION": f"Bearer {secret}"}),
    ]


def _send(endpoint, body: bytes, content_type: str = "application/json") -> Any:
    session, method, path, headers = endpoint
    return session.generic(method.upper(), path, data=body, content_type=content_type, **headers)


def test_deeply_nested_json_is_a_400_everywhere(endpoints):
    for endpoint in endpoints:
        error = assert_api_error(_send(endpoint, DEEP), 400, "invalid_json")
        assert error["param"] is None


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00", b'{"name": "caf\xe9"}', b"\xc3\x28"])
def test_bodies_that_are_not_utf8_are_a_400_everywhere(endpoints, raw):
    for endpoint in endpoints:
        assert_api_error(_send(endpoint, raw), 400)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "image/png",
    ],
)
def test_wrong_content_types_are_a_415_everywhere(endpoints, content_type):
    for endpoint in endpoints:
        assert_api_error(_send(endpoint, b"{}", content_type), 415, "unsupported_media_type")


def test_bodies_over_the_limit_are_a_413_everywhere(endpoints, settings):
    padding = b" " * (settings.NEBULA_MAX_BODY_BYTES + 1)
    for endpoint in endpoints:
        assert_api_error(_send(endpoint, b"{}" + padding), 413, "request_too_large")


def test_a_host_not_allowed_is_a_400_in_json(client, alice, make_key):
    client.force_login(alice)
    for path in ("/apikeys", "/health", "/models"):
        assert_api_error(client.get(path, HTTP_HOST="evil.example"), 400, "bad_request")


@pytest.fixture
def chat(client, alice, make_key, ready_model):
    ready_model("nebula-7b")
    _, secret = make_key(alice, rpm_limit=1000)

    def send(**body: Any) -> Any:
        return client.post(
            "/v1/chat/completions",
            data=json.dumps({"model": "nebula-7b", **body}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )

    return send


def test_too_many_messages_is_a_400_naming_the_limit(chat, settings):
    settings.NEBULA_MAX_MESSAGES = 3
    error = assert_api_error(chat(messages=HELLO * 4), 400, "too_many_messages")
    assert error["param"] == "messages" and "at most 3" in error["message"]


def test_a_message_too_long_is_a_400_naming_the_message(chat, settings):
    settings.NEBULA_MAX_MESSAGE_CHARS = 100
    messages = [*HELLO, {"role": "user", "content": [{"type": "text", "text": "x" * 101}]}]
    error = assert_api_error(chat(messages=messages), 400, "message_too_long")
    assert error["param"] == "messages[1].content"


def test_max_tokens_beyond_the_context_is_a_400(chat):
    error = assert_api_error(chat(messages=HELLO, max_tokens=10**12), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"


@pytest.mark.parametrize(
    "body",
    [
        {"messages": HELLO, "max_tokens": 2**70},
        {"messages": HELLO, "n": 10**30},
        {"messages": HELLO, "seed": 2**200},
        {"messages": HELLO, "temperature": 1e308},
        {"messages": [{"role": "user", "content": "\ud800"}]},
        {"messages": HELLO, "stop": ["\x00"] * 5},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"messages": [{"role": ["user"], "content": "x"}]},
        {"messages": [[]]},
        {"messages": {"role": "user"}},
    ],
)
def test_odd_values_in_a_chat_request_are_a_400(chat, body):
    assert_api_error(chat(**body), 400)


def test_a_nul_in_the_model_name_is_a_404_and_recorded(chat):
    from telemetry.ledger import usage_write_batch
    from telemetry.models import UsageRecord
    from tests.support.jobs import usage_events

    response = chat(model="nebula\x007b", messages=HELLO)
    assert_api_error(response, 404, "model_not_found")
    # PostgreSQL refuses NUL in text: the record must still be writable.
    [event] = usage_events(response["x-request-id"])
    assert usage_write_batch([event]) == 1
    record = UsageRecord.objects.get(request_id=response["x-request-id"])
    assert record.model == "nebula7b" and record.status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/apikeys/99999999999999999999999",
        "/apikeys/%E2%80%AE",
        "/models/" + "x" * 5000,
        "/metrics?key=99999999999999999999999",
        "/metrics?key=abc&since=1e400",
        "/metrics?since=99999999999999999999",
        "/metrics?window=9999999999999d",
        "/metrics?until=2024-13-45",
        "/v1/models/" + "%00" * 10,
    ],
)
def test_odd_urls_are_never_a_500(client, alice, make_key, path):
    _, secret = make_key(alice)
    client.force_login(alice)
    response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code < 500, response.content[:300]
    if response.status_code >= 400:
        assert_api_error(response, response.status_code)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer \u00ff\u00fe", "Bearer " + "nb_" * 5000, "bearer  nb_x", "Basic Zm9vOmJhcg=="],
)
def test_odd_authorization_headers_are_a_401(client, authorization):
    for method, path in (
        ("get", "/apikeys"),
        ("get", "/v1/models"),
        ("post", "/v1/chat/completions"),
    ):
        response = getattr(client, method)(path, HTTP_AUTHORIZATION=authorization)
        assert_api_error(response, 401, "invalid_api_key")
