"""Bearer authentication of /v1 against live web processes (which cache keys)."""

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from keys.services import key_revoke, key_update

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
    key_update(key=key, expires_at=timezone.now() - timedelta(seconds=1))
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

    key_revoke(key=key)

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
