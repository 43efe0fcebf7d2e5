"""An upstream engine's API key is given once, when the deployment is created, and never
again: not in responses (even an engine's error that quotes it), pages, the admin, or any
process's log; at rest it is encrypted. Yet the workers use it."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from django.test import Client

from models_registry.models import UpstreamConfig
from telemetry.ledger import ledger_flush
from tests.support.upstream import forget_upstream_state

pytestmark = pytest.mark.integration

SECRET = "sk-upstream-live-0123456789abcdef"


def test_the_upstream_key_is_used_but_never_shown_or_logged(
    live, operator, make_key, engine, caplog, django_user_model, redis_client
):
    caplog.set_level(logging.DEBUG)
    forget_upstream_state(redis_client)
    engine.control(require_key=SECRET)
    _, admin_secret = make_key(operator, name="ops", is_admin=True)
    admin = {"Authorization": f"Bearer {admin_secret}"}
    url = live.url
    seen = []

    created = httpx.post(
        url + "/models",
        json={
            "name": "llama-secret",
            "backend": "openai-compatible",
            "upstream_urls": [engine.url],
            "upstream_model": "test-upstream-model",
            "upstream_api_key": SECRET,
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    seen.append(("create", created.text))
    # The deployment loads on a worker: ready once the engine answers (with the key).
    for _ in range(100):
        state = httpx.get(url + "/models/llama-secret", headers=admin).json()["state"]
        if state != "pending" and state != "loading":
            break
        time.sleep(0.1)
    assert state == "ready"

    def chat(content):
        body = {"model": "llama-secret", "messages": [{"role": "user", "content": content}]}
        return httpx.post(url + "/v1/chat/completions", json=body, headers=admin)

    ok = chat("hi [[tokens=2]]")
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "w0 w1 "
    quoted = chat("[[status=400]] [[echo_auth]]")
    assert quoted.status_code == 400
    assert "[redacted]" in quoted.json()["error"]["message"]
    seen += [("chat", ok.text), ("quoted", quoted.text)]
    for path in ("/models", "/models/llama-secret"):
        seen.append((path, httpx.get(url + path, headers=admin).text))

    ledger_flush()
    stored = UpstreamConfig.objects.get().api_key_encrypted
    assert SECRET not in stored
    root = django_user_model.objects.create_superuser("root-u", password="root-pass-123")
    site = Client()
    site.force_login(root)
    pk = UpstreamConfig.objects.get().deployment_id
    for path in (
        "/admin/models_registry/deployedmodel/",
        f"/admin/models_registry/deployedmodel/{pk}/change/",
        "/dashboard/models/",
    ):
        page = site.get(path)
        assert page.status_code == 200, path
        seen.append((path, page.content.decode()))
    for where, text in seen:
        assert SECRET not in text, where
        assert stored not in text, where  # nor the ciphertext

    logs = {proc.name: proc.log.read_text(errors="replace") for proc in live.webs + live.workers}
    logs["pytest"] = caplog.text
    for name, text in logs.items():
        assert SECRET not in text, name
    assert all(entry["authorization"] == f"Bearer {SECRET}" for entry in engine.log)
