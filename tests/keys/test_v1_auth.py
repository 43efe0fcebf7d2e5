"""Bearer authentication of /v1 against live web processes (which cache keys)."""

import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from infra.epoch import epoch_bump
from keys.access import SYSTEM
from keys.models import ApiKey
from keys.services import key_revoke, key_rotate

CHAT = {"model": "nebula-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _chat(url, secret=None, headers=None):
    headers = dict(headers or {})
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return httpx.post(url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=30)


def _assert_invalid_key(response):
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Token nb_abc"},
        {"Authorization": "Bearer nb_tooshort"},
        {"Authorization": "Bearer nb_" + "A" * 38},  # right shape, wrong checksum
    ],
)
def test_missing_or_malformed_keys_get_401(live, headers):
    _assert_invalid_key(_chat(live.url, headers=headers))


def test_unknown_keys_get_401(live, alice, make_key, ready_model):
    ready_model()
    key, secret = make_key(alice)
    key.delete()
    _assert_invalid_key(_chat(live.url, secret))


def test_expired_keys_get_401(live, alice, make_key, ready_model):
    ready_model()
    key, secret = make_key(alice, expires_at=timezone.now() + timedelta(hours=1))
    assert _chat(live.url, secret).status_code == 200
    # The hour passes (no service sets an expiry in the past).
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    epoch_bump()
    response = _chat(live.url, secret)
    _assert_invalid_key(response)
    assert "expired" in response.json()["error"]["message"]


def test_a_revoked_key_is_refused_on_the_next_request_by_every_web_process(
    live, alice, make_key, ready_model
):
    ready_model()
    key, secret = make_key(alice, rpm_limit=100)
    # Both web processes have now cached the key as valid.
    for url in live.urls:
        assert _chat(url, secret).status_code == 200

    key_revoke(actor=SYSTEM, key=key)

    for url in live.urls:
        response = _chat(url, secret)
        _assert_invalid_key(response)
        assert "revoked" in response.json()["error"]["message"]
    models = httpx.get(live.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})
    _assert_invalid_key(models)


def test_secrets_are_not_echoed_in_error_responses(live, alice, make_key):
    _, secret = make_key(alice)
    typo = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    response = _chat(live.url, typo)
    _assert_invalid_key(response)
    assert typo[3:] not in response.text


def test_keys_of_a_deactivated_user_stop_working_at_once(live, alice, make_key, ready_model):
    ready_model()
    _, secret = make_key(alice, rpm_limit=100)
    assert _chat(live.url, secret).status_code == 200  # now cached as valid
    alice.is_active = False
    alice.save()
    _assert_invalid_key(_chat(live.url, secret))


def test_a_rotated_keys_old_secret_works_until_the_grace_period_ends_on_every_web_process(
    live, alice, make_key, ready_model
):
    ready_model()
    key, old = make_key(alice, rpm_limit=100)
    for url in live.urls:  # both web processes cache the key under its old secret
        assert _chat(url, old).status_code == 200

    rotated = key_rotate(actor=SYSTEM, key=key, grace_seconds=5)
    for url in live.urls:
        assert _chat(url, old).status_code == 200
        assert _chat(url, rotated.secret).status_code == 200

    # Nobody tells the processes when the grace period ends: the deadline is in what they cache.
    left = (rotated.key.previous_valid_until - timezone.now()).total_seconds()
    assert left > 0, "the machine was too slow to check the grace period"
    time.sleep(left + 0.05)
    for url in live.urls:
        response = _chat(url, old)
        _assert_invalid_key(response)
        assert "rotated" in response.json()["error"]["message"]
        assert _chat(url, rotated.secret).status_code == 200
