"""The models page for upstream deployments: operators connect an engine and see each
replica's health; the engine's key never comes back; users see none of it."""

import pytest

from infra import aio
from models_registry import upstreams
from models_registry.models import DeployedModel, UpstreamConfig
from tests.support.upstream import deploy_upstream, forget_upstream_state

pytestmark = pytest.mark.django_db

SECRET = "sk-dashboard-upstream-key-77"


@pytest.fixture(autouse=True)
def _fresh_upstream_state(redis_client):
    forget_upstream_state(redis_client)


def connect(client, **fields):
    return client.post(
        "/dashboard/models/connect/",
        {
            "name": "llama-dash",
            "upstream_urls": "http://gpu-a.invalid:8000/v1\nhttp://gpu-b.invalid:8000",
            "upstream_model": "llama-3.1-8b",
            "upstream_api_key": SECRET,
            "max_concurrent_seqs": "16",
            **fields,
        },
    )


def test_an_operator_connects_an_engine_from_the_form(client, operator):
    client.force_login(operator)
    response = connect(client)
    assert response.status_code == 302
    model = DeployedModel.objects.get(name="llama-dash")
    assert (model.backend, model.state, model.replicas, model.capacity) == (
        "openai-compatible",
        "pending",
        2,
        32,
    )
    assert model.upstream.model_name == "llama-3.1-8b"
    assert SECRET not in UpstreamConfig.objects.get().api_key_encrypted
    page = client.get("/dashboard/models/").content.decode()
    assert "http://gpu-a.invalid:8000" in page and "http://gpu-b.invalid:8000" in page
    assert "llama-3.1-8b" in page and SECRET not in page


def test_a_connect_error_is_shown_in_place_without_echoing_the_key(client, operator):
    client.force_login(operator)
    response = connect(client, upstream_urls="http://user:pw@gpu-a.invalid:8000")
    assert response.status_code == 400
    assert "credentials" in response.context["upstream_form"].errors["upstream_urls"][0]
    page = response.content.decode()
    assert SECRET not in page
    assert '<details class="card deploy" id="connect" open>' in page
    assert not DeployedModel.objects.exists()


def test_operators_see_each_replicas_health_latency_and_load(client, operator, engine):
    engine.control(running=2, waiting=1, kv_cache=0.41)
    down = "http://127.0.0.1:9"  # discard port: nothing answers
    model = deploy_upstream(engine.url, down, name="llama-seen")
    aio.run(upstreams.probe_target(upstreams.upstream_target(model.pk, name=model.name)))
    client.force_login(operator)
    page = client.get("/dashboard/models/").content.decode()
    assert f'data-health="healthy"><span class="dot"></span><span class="mono">{engine.url}' in page
    assert "2 running, 1 waiting · KV 41% · 0 in flight" in page
    assert f'data-health="down"><span class="dot"></span><span class="mono">{down}' in page
    assert "could not connect" in page


def test_users_cannot_connect_engines_nor_see_them(client, alice, engine):
    deploy_upstream(engine.url, name="llama-users")
    client.force_login(alice)
    assert connect(client).status_code == 403
    page = client.get("/dashboard/models/").content.decode()
    assert "llama-users" in page
    assert engine.url not in page and "Connect an engine" not in page
