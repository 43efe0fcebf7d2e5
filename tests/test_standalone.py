"""Without Redis, `make run` serves everything from one process: same code, other settings."""

import os
import re
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.support.stack import ROOT, Stack, free_port


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    home = tmp_path_factory.mktemp("standalone")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "nebula_site.settings",
        "NEBULA_STANDALONE": "1",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # nothing listens there
        "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
        "SECRET_KEY": "standalone-test-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "NEBULA_SIM_TIME_SCALE": "0",
        "NEBULA_TESTING": "1",
        "NEBULA_OPERATOR_PASSWORD": "operator-pass-123",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    seeded = subprocess.run(
        [*manage, "seed_demo"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    secret = re.search(r"nb_[0-9A-Za-z]{38}", seeded).group(0)
    stack = Stack(env=env)
    stack.start_web(free_port())
    yield stack, secret
    stack.stop()


def test_standalone_mode_answers_chat_completions_without_redis(standalone):
    stack, secret = standalone
    health = httpx.get(stack.url + "/health").json()
    assert health["mode"] == "standalone"
    assert health["status"] == "ok"
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=secret, max_retries=0)
    whole = client.chat.completions.create(
        model="nebula-7b", messages=[{"role": "user", "content": "hi"}], seed=3, max_tokens=12
    )
    stream = client.chat.completions.create(
        model="nebula-7b",
        messages=[{"role": "user", "content": "hi"}],
        seed=3,
        max_tokens=12,
        stream=True,
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == whole.choices[0].message.content
    # The demo key keeps its default limit of 10 per minute, enforced in-process too.
    statuses = []
    for _ in range(10):
        try:
            client.models.list()
            statuses.append(200)
        except openai.RateLimitError:
            statuses.append(429)
    assert statuses.count(429) == 2


def test_standalone_mode_deploys_models_and_records_usage(standalone):
    stack, secret = standalone
    httpx.get(stack.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})
    session = httpx.Client(base_url=stack.url)
    login = session.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    session.post(
        "/admin/login/?next=/admin/",
        data={
            "username": "operator",
            "password": "operator-pass-123",
            "csrfmiddlewaretoken": token,
        },
        headers={"Referer": stack.url + "/admin/login/"},
    )
    csrf = session.cookies["csrftoken"]
    created = session.post(
        "/models",
        json={"name": "solo-13b", "params_billions": 13, "gpu_type": "A100-80GB"},
        headers={"X-CSRFToken": csrf, "Referer": stack.url + "/"},
    )
    assert created.status_code == 201, created.text
    for _ in range(50):
        if session.get("/models/solo-13b").json()["state"] == "ready":
            break
        time.sleep(0.1)
    assert session.get("/models/solo-13b").json()["state"] == "ready"
    for _ in range(50):
        report = session.get("/metrics").json()
        if report["totals"]["requests"] >= 1:
            break
        time.sleep(0.1)
    assert report["totals"]["requests"] >= 1  # the in-process ledger moved the records
