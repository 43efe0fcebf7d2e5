"""API key secrets are shown once, at creation, and never again: not in any log line of any
process, not in error responses, not in admin list views, not in later responses."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

import httpx
import pytest
from django.test import Client

from telemetry.ledger import ledger_flush

pytestmark = pytest.mark.integration

SECRET_RE = re.compile(r"nb_[0-9A-Za-z]{38}")
CHAT = {"model": "nebula-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def _leaks(text: str, secrets: list[str]) -> list[str]:
    # Redaction keeps the 11-character prefix (stored and shown anyway); the rest is the secret.
    return [secret for secret in secrets if secret[11:] in text]


def test_a_run_that_creates_and_uses_keys_logs_no_secret(
    live, operator, make_key, ready_model, caplog, django_user_model
):
    caplog.set_level(logging.DEBUG)
    ready_model("nebula-7b")
    _, admin_secret = make_key(operator, name="ops", is_admin=True)
    admin = {"Authorization": f"Bearer {admin_secret}"}
    url = live.url
    django_user_model.objects.create_user("alice-s")

    created = httpx.post(
        url + "/apikeys", json={"name": "laptop", "owner": "alice-s", "rpm_limit": 2}, headers=admin
    )
    assert created.status_code == 201
    secret, key_id = created.json()["key"], created.json()["id"]
    secrets = [secret, admin_secret]
    auth = {"Authorization": f"Bearer {secret}"}

    # Use it every which way, including the wrong ones.
    chat = url + "/v1/chat/completions"
    later = [
        httpx.post(chat, json=CHAT, headers=auth),
        httpx.post(chat, json={**CHAT, "stream": True}, headers=auth),
        httpx.post(chat, json=CHAT, headers=auth),  # over its limit
        httpx.post(chat, content=b"{", headers=auth),  # bad, and still over its limit
    ]
    assert [r.status_code for r in later] == [200, 200, 429, 429]
    later.append(httpx.get(url + f"/v1/models?api_key={secret}", headers=auth))
    later.append(httpx.get(url + f"/v1/models/{secret}", headers=auth))
    later.append(httpx.get(url + f"/apikeys/{secret}", headers=admin))
    later.append(httpx.get(url + "/apikeys", headers={"X-Api-Key": secret}))
    later.append(httpx.get(url + "/apikeys", headers={"Authorization": f"Token {secret}"}))
    pasted = httpx.post(chat, json={**CHAT, "model": secret}, headers=admin)  # wrong field
    assert pasted.status_code == 404
    later.append(pasted)
    assert httpx.delete(url + f"/apikeys/{key_id}", headers=admin).status_code == 200
    later.append(httpx.post(chat, json=CHAT, headers=auth))
    assert later[-1].status_code == 401
    for path in ("/apikeys", f"/apikeys/{key_id}", "/metrics", "/models"):
        later.append(httpx.get(url + path, headers=admin))

    ledger_flush()
    root = django_user_model.objects.create_superuser("root-s", password="root-pass-123")
    admin_site = Client()
    admin_site.force_login(root)
    for path in ("/admin/keys/apikey/", f"/admin/keys/apikey/{key_id}/change/",
                 "/admin/telemetry/usagerecord/", "/admin/auth/user/"):  # fmt: skip
        page = admin_site.get(path)
        assert page.status_code == 200, path
        later.append(page)

    for response in later:
        body = response.text if isinstance(response, httpx.Response) else response.content.decode()
        assert not _leaks(body, secrets), (response, body[:300])
    # Every process's log: the two web processes and the two workers, and this one.
    logs = {proc.name: proc.log.read_text(errors="replace") for proc in live.webs + live.workers}
    logs["pytest"] = caplog.text
    for name, text in logs.items():
        assert not _leaks(text, secrets), name
    assert f"/v1/models?api_key={secret[:11]}" in "".join(logs.values())  # it was logged, redacted


def _decoded(text: str) -> str:
    for _ in range(3):
        text = unquote(text)
    return text


def test_a_key_percent_encoded_in_a_url_is_redacted_in_the_access_log(live, alice, make_key):
    """Daphne's access log writes request URIs as they came; a key a client (or its library)
    percent-encoded must be redacted all the same."""
    _, secret = make_key(alice)
    rest = secret[3:]
    every = "".join(f"%{ord(char):02X}" for char in secret)
    urls = [
        f"/v1/models?api_key=nb%5F{rest}",
        f"/v1/models?api_key=nb%5f{rest}",
        f"/v1/models?api_key=nb%255F{rest}",
        f"/v1/models/{every}",
        f"/dashboard/?key=nb%5F{rest}",
    ]
    with httpx.Client() as client:
        for path in urls:
            # httpx would re-encode the path; the raw target goes out as written.
            response = client.get(live.url + "/", extensions={"target": path.encode()})
            assert response.status_code in (200, 302, 401, 404), (path, response.status_code)
    logs = "".join(proc.log.read_text(errors="replace") for proc in live.webs)
    assert secret[11:] not in _decoded(logs)
    assert f"/v1/models?api_key={secret[:11]}…[redacted]" in logs  # logged, redacted
