"""/models over HTTP: operators run the fleet; users see what they can call."""

import json
import time

import httpx
import pytest

from models_registry.models import DeployedModel

pytestmark = pytest.mark.django_db


def _post(client, body, **headers):
    return client.post("/models", data=json.dumps(body), content_type="application/json", **headers)


DEPLOY = {"name": "nebula-13b", "params_billions": 13, "gpu_type": "H100-80GB"}


def test_operators_deploy_and_get_a_pending_deployment(client, operator):
    client.force_login(operator)
    response = _post(client, DEPLOY)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "pending" and body["name"] == "nebula-13b"
    assert body["capacity"] == 8 and body["weights_gb"] == 26.0
    assert body["history"][0]["to"] == "pending"


def test_admin_keys_deploy_but_users_and_regular_keys_cannot(client, operator, alice, make_key):
    _, user_key = make_key(alice)
    _, admin_key = make_key(operator, is_admin=True)
    assert _post(client, DEPLOY, HTTP_AUTHORIZATION=f"Bearer {user_key}").status_code == 403
    client.force_login(alice)
    assert _post(client, DEPLOY).status_code == 403
    client.logout()
    assert _post(client, DEPLOY, HTTP_AUTHORIZATION=f"Bearer {admin_key}").status_code == 201
    assert _post(client, DEPLOY).status_code == 401


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**DEPLOY, "gpu_type": "TPU"}, "gpu_type"),
        ({**DEPLOY, "replicas": -2}, "replicas"),
        ({**DEPLOY, "gpus_per_replica": 0}, "gpus_per_replica"),
        ({"params_billions": 7, "gpu_type": "L4"}, "name"),
        ({"name": "x", "gpu_type": "L4"}, "params_billions"),
        ({"name": "x", "params_billions": 7}, "gpu_type"),
        ({**DEPLOY, "params_billions": "seven"}, "params_billions"),
        ({**DEPLOY, "name": "has spaces"}, "name"),
    ],
)
def test_invalid_deployments_get_400_naming_the_field(client, operator, body, param):
    client.force_login(operator)
    response = _post(client, body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    assert not DeployedModel.objects.exists()


def test_a_duplicate_name_gets_400(client, operator, ready_model):
    ready_model("nebula-13b")
    client.force_login(operator)
    response = _post(client, DEPLOY)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "duplicate_name"
    assert "already exists" in response.json()["error"]["message"]


def test_users_see_ready_models_without_fleet_details(client, alice, ready_model, operator):
    ready_model("visible-7b")
    client.force_login(operator)
    _post(client, {"name": "still-pending", "params_billions": 7, "gpu_type": "L4"})
    client.force_login(alice)
    data = client.get("/models").json()["data"]
    assert [m["name"] for m in data] == ["visible-7b"]
    assert "gpu_type" not in data[0] and "replicas" not in data[0]
    assert client.get("/models/still-pending").status_code == 404


def test_operators_see_the_whole_fleet_with_history(client, operator, ready_model):
    ready_model("visible-7b")
    client.force_login(operator)
    _post(client, {"name": "still-pending", "params_billions": 7, "gpu_type": "L4"})
    names = {m["name"] for m in client.get("/models").json()["data"]}
    assert names == {"visible-7b", "still-pending"}
    detail = client.get("/models/visible-7b").json()
    assert detail["gpu_type"] == "H100-80GB" and detail["history"]


def test_operators_scale_and_undeploy(
    client, operator, ready_model, django_capture_on_commit_callbacks
):
    ready_model("nebula-7b", max_concurrent_seqs=4)
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        scaled = client.patch(
            "/models/nebula-7b", data={"replicas": 3}, content_type="application/json"
        )
    assert scaled.status_code == 200
    # The new replicas load first (no time at all here: NEBULA_SIM_TIME_SCALE is 0).
    assert (scaled.json()["capacity"], scaled.json()["target_replicas"]) == (4, 3)
    assert client.get("/models/nebula-7b").json()["capacity"] == 12
    bad = client.patch("/models/nebula-7b", data={"replicas": -1}, content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "replicas"
    with django_capture_on_commit_callbacks(execute=True):
        stopping = client.delete("/models/nebula-7b")
    assert stopping.status_code == 200
    assert stopping.json()["state"] == "stopping"
    assert DeployedModel.objects.get(name="nebula-7b").state == "stopped"


def test_users_cannot_scale_or_undeploy(client, alice, ready_model):
    ready_model()
    client.force_login(alice)
    assert (
        client.patch(
            "/models/nebula-7b", data={"replicas": 3}, content_type="application/json"
        ).status_code
        == 403
    )
    assert client.delete("/models/nebula-7b").status_code == 403
    assert DeployedModel.objects.get().state == "ready"


def test_a_deployment_reaches_ready_on_real_workers(live, operator, make_key):
    _, admin_key = make_key(operator, is_admin=True)
    auth = {"Authorization": f"Bearer {admin_key}"}
    created = httpx.post(live.url + "/models", json={**DEPLOY, "name": "live-13b"}, headers=auth)
    assert created.status_code == 201
    seen = set()
    for _ in range(100):
        state = httpx.get(live.url + "/models/live-13b", headers=auth).json()["state"]
        seen.add(state)
        if state == "ready":
            break
        time.sleep(0.1)
    assert state == "ready"
    assert "loading" in seen or "pending" in seen
    listed = httpx.get(live.url + "/v1/models", headers=auth).json()
    assert "live-13b" in [m["id"] for m in listed["data"]]


def test_scaling_up_on_real_workers_serves_on_the_old_replicas_until_the_new_ones_load(
    live, operator, make_key, ready_model
):
    # 20B on an H100: 40 GB at 2 GB/s and a warm-up, ~2 s at the live stack's time scale.
    ready_model("live-20b", params_billions=20, gpu_type="H100-80GB", max_concurrent_seqs=4)
    _, admin_key = make_key(operator, is_admin=True)
    auth = {"Authorization": f"Bearer {admin_key}"}
    started = time.monotonic()
    scaling = httpx.patch(live.url + "/models/live-20b", json={"replicas": 3}, headers=auth)
    assert scaling.status_code == 200, scaling.text
    body = scaling.json()
    assert (body["replicas"], body["target_replicas"], body["capacity"]) == (1, 3, 4)
    assert body["progress"]["phase"] == "scaling"
    expected = body["progress"]["seconds_left"]
    assert 1.5 < expected < 3
    while (state := httpx.get(live.url + "/models/live-20b", headers=auth).json())["capacity"] == 4:
        assert time.monotonic() - started < expected + 10, state
        time.sleep(0.1)
    took = time.monotonic() - started
    assert (state["replicas"], state["target_replicas"], state["capacity"]) == (3, None, 12)
    assert state["progress"] is None
    assert took >= expected - 0.2  # the new replicas took their load time
