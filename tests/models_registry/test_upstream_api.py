"""/models for upstream deployments: operators create them and see each replica's health;
nobody ever sees the upstream key again, and users see neither the upstream nor its URLs."""

import json

import pytest

from models_registry.models import DeployedModel, UpstreamConfig
from tests.support.upstream import deploy_upstream, forget_upstream_state

pytestmark = pytest.mark.django_db

SECRET = "sk-upstream-never-again-42"


@pytest.fixture(autouse=True)
def _fresh_upstream_state(redis_client):
    forget_upstream_state(redis_client)


def _post(client, body, **headers):
    return client.post("/models", data=json.dumps(body), content_type="application/json", **headers)


def upstream_body(**extra):
    return {
        "name": "llama-8b",
        "backend": "openai-compatible",
        "upstream_urls": ["http://gpu-a.invalid:8000/v1", "http://gpu-b.invalid:8000"],
        "upstream_model": "meta-llama/Llama-3.1-8B-Instruct",
        "upstream_api_key": SECRET,
        "max_concurrent_seqs": 32,
        "read_timeout": 30,
        **extra,
    }


def test_an_operator_creates_an_upstream_deployment_and_never_sees_its_key(client, operator):
    client.force_login(operator)
    response = _post(client, upstream_body())
    assert response.status_code == 201, response.content
    assert SECRET not in response.content.decode()
    body = response.json()
    assert body["backend"] == "openai-compatible"
    assert (body["state"], body["replicas"], body["capacity"]) == ("pending", 2, 64)
    upstream = body["upstream"]
    assert upstream["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert upstream["has_api_key"] is True
    assert (upstream["connect_timeout"], upstream["read_timeout"]) == (5.0, 30.0)
    assert [r["url"] for r in upstream["replicas"]] == [
        "http://gpu-a.invalid:8000",
        "http://gpu-b.invalid:8000",
    ]
    assert {r["health"] for r in upstream["replicas"]} == {"unknown"}
    for url in ("/models", "/models/llama-8b"):
        seen = client.get(url)
        assert seen.status_code == 200 and SECRET not in seen.content.decode()
    stored = UpstreamConfig.objects.get().api_key_encrypted
    assert stored and SECRET not in stored


def test_an_upstream_deployment_with_a_bad_url_is_a_400_in_openai_shape(client, operator):
    client.force_login(operator)
    response = _post(client, upstream_body(upstream_urls=["not a url"]))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "upstream_urls" and "not a url" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert not DeployedModel.objects.exists()


def test_a_simulated_deployment_still_needs_its_size_and_gpu(client, operator):
    client.force_login(operator)
    response = _post(client, {"name": "sim"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "params_billions"


def test_users_and_admin_keys_cannot_create_one_but_an_admin_key_can(
    client, operator, alice, make_key
):
    _, user_key = make_key(alice)
    _, admin_key = make_key(operator, is_admin=True)
    client.force_login(alice)
    assert _post(client, upstream_body()).status_code == 403
    client.logout()
    assert (
        _post(client, upstream_body(), HTTP_AUTHORIZATION=f"Bearer {user_key}").status_code == 403
    )
    created = _post(client, upstream_body(), HTTP_AUTHORIZATION=f"Bearer {admin_key}")
    assert created.status_code == 201 and SECRET not in created.content.decode()


def test_users_see_a_ready_upstream_model_but_not_its_upstream(client, alice, bob, operator):
    deploy_upstream("http://gpu-z.invalid:8000", name="llama-ready", upstream_api_key=SECRET)
    for person in (alice, bob):
        client.force_login(person)
        listed = client.get("/models").json()["data"]
        (model,) = [m for m in listed if m["name"] == "llama-ready"]
        assert "upstream" not in model and "backend" not in model
        detail = client.get("/models/llama-ready")
        assert detail.status_code == 200
        text = detail.content.decode()
        assert (
            "gpu-z.invalid" not in text and SECRET not in text and "upstream" not in detail.json()
        )
    client.force_login(operator)
    detail = client.get("/models/llama-ready").json()
    assert detail["upstream"]["replicas"][0]["url"] == "http://gpu-z.invalid:8000"


def test_scaling_an_upstream_deployment_is_refused_with_the_reason(client, operator):
    deploy_upstream("http://gpu-z.invalid:8000", name="llama-fixed")
    client.force_login(operator)
    response = client.patch(
        "/models/llama-fixed", data=json.dumps({"replicas": 4}), content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "replicas"
