"""Floods of requests the API refuses: what each refusal may cost is bounded.

Requests without a usable key are limited per client address and counted per minute instead of
writing a usage record each; a known key's bad requests count against its rate limit, and once
it is over the limit its requests are refused before their bodies are read or tokenized.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import Client

from inference import services
from keys.tokens import generate_key
from telemetry.ledger import ledger_flush
from telemetry.models import RefusalTally, UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/v1/chat/completions"


@pytest.fixture
def client() -> Client:
    return Client(raise_request_exception=False)


def _address() -> str:
    # Each test floods from an address of its own: the per-address limits live in Redis.
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


def _post(client: Client, body: Any, *, secret: str, address: str) -> Any:
    return client.post(
        CHAT,
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
        REMOTE_ADDR=address,
    )


@pytest.fixture
def fresh_tallies(redis_client):
    """Refusals of other tests this minute are counted in the same Redis tallies."""
    for name in redis_client.scan_iter("nebula:refusals*"):
        redis_client.delete(name)


def test_requests_without_a_usable_key_are_counted_not_recorded_and_limited_per_address(
    client, settings, alice, make_key, ready_model, fresh_tallies
):
    settings.NEBULA_UNAUTHENTICATED_RPM = 5
    ready_model()
    _, secret = make_key(alice, rpm_limit=100)
    flooder, neighbour = _address(), _address()
    body = {"model": "nebula-7b", "messages": [{"role": "user", "content": "hi"}]}
    # The key is used once from the flooder's address before the flood: this process knows it.
    assert (
        _post(client, body | {"max_tokens": 10**6}, secret=secret, address=flooder).status_code
        == 400
    )

    bad = ["x"] * 6 + [generate_key() for _ in range(4)]  # malformed, then well-formed unknown
    answers = [_post(client, body, secret=token, address=flooder) for token in bad]
    assert [a.status_code for a in answers] == [401] * 5 + [429] * 5
    assert all(int(a["Retry-After"]) >= 1 for a in answers[5:])
    assert answers[5].json()["error"]["code"] == "rate_limit_exceeded"
    # Another address is not affected; the known key still gets through from the flooder's.
    assert _post(client, body, secret="x", address=neighbour).status_code == 401
    assert (
        _post(client, body | {"max_tokens": 10**6}, secret=secret, address=flooder).status_code
        == 400
    )

    ledger_flush()
    request_ids = [a["x-request-id"] for a in answers]
    assert not UsageRecord.objects.filter(request_id__in=request_ids).exists()
    tallies = RefusalTally.objects.filter(api_key=None, endpoint=CHAT)
    assert {(t.status, t.count) for t in tallies} == {(401, 6), (429, 5)}


def test_a_keys_bad_requests_count_against_its_limit_and_stop_being_tokenized(
    client, monkeypatch, alice, make_key, ready_model, fresh_tallies
):
    ready_model()
    key, secret = make_key(alice, rpm_limit=3)
    tokenized: list[int] = []
    count_tokens = services.count_chat_tokens

    def counting(parts: Any) -> int:
        tokenized.append(1)
        return count_tokens(parts)

    monkeypatch.setattr(services, "count_chat_tokens", counting)
    # Valid JSON, a long body, and a context too long: each is refused after it is tokenized.
    body = {
        "model": "nebula-7b",
        "messages": [{"role": "user", "content": "tell me about GPUs " * 2000}],
        "max_tokens": 10**6,
    }
    address = _address()
    statuses = [_post(client, body, secret=secret, address=address).status_code for _ in range(20)]
    assert statuses == [400, 400, 400] + [429] * 17
    # The fourth was tokenized before its charge found the key over its limit; none after it.
    assert len(tokenized) == 4

    ledger_flush()
    assert sorted(UsageRecord.objects.filter(api_key=key).values_list("status", flat=True)) == [
        400,
        400,
        400,
    ]
    tallies = RefusalTally.objects.filter(api_key=key)
    assert sum(t.count for t in tallies if t.status == 429) == 17


def test_a_key_refused_for_its_limit_and_then_revoked_is_told_it_is_revoked(
    client, alice, make_key, ready_model, fresh_tallies
):
    from keys.access import SYSTEM
    from keys.services import key_revoke

    ready_model()
    key, secret = make_key(alice, rpm_limit=1)
    body = {"model": "nebula-7b", "messages": [{"role": "user", "content": "hi"}], "n": 0}
    address = _address()
    assert [_post(client, body, secret=secret, address=address).status_code for _ in range(3)] == [
        400,
        429,
        429,
    ]
    key_revoke(actor=SYSTEM, key=key)
    refused = _post(client, body, secret=secret, address=address)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "This API key has been revoked."


def test_more_choices_than_a_replica_runs_at_once_is_a_400(client, alice, make_key, ready_model):
    ready_model(max_concurrent_seqs=8)
    _, secret = make_key(alice, rpm_limit=100)
    body = {"model": "nebula-7b", "messages": [{"role": "user", "content": "hi"}], "n": 9}
    refused = _post(client, body, secret=secret, address=_address())
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "n" and "at most 8 per replica" in error["message"]
