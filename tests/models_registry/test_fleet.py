"""The fleet explains itself: refusals at submit time with the numbers, a queue for busy GPUs,
ended deployments listed until deleted, one row per name, and an audit of every action."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from infra.errors import Conflict
from keys.access import SYSTEM
from models_registry import services
from models_registry.models import DeployedModel
from telemetry.models import AuditEvent

pytestmark = pytest.mark.django_db

H100 = {"params_billions": 70, "gpu_type": "H100-80GB", "gpus_per_replica": 2}


@pytest.fixture
def inventory(settings):
    settings.NEBULA_GPU_INVENTORY = {"H100-80GB": 4, "L4": 2}
    return settings.NEBULA_GPU_INVENTORY


def _post(client, body):
    return client.post("/models", data=json.dumps(body), content_type="application/json")


def _error(response):
    return response.json()["error"]


def test_a_model_too_large_for_its_gpus_is_a_400_with_the_numbers(client, operator):
    client.force_login(operator)
    for queue in (False, True):
        response = _post(
            client, {"name": "llama-70b", "params_billions": 70, "gpu_type": "L4", "queue": queue}
        )
        assert response.status_code == 400
        error = _error(response)
        assert (error["code"], error["param"]) == ("model_does_not_fit", "gpus_per_replica")
        assert "need 140.0 GB" in error["message"] and "leave 21.6 GB usable" in error["message"]
    assert not DeployedModel.objects.exists()
    assert client.get("/models").json()["data"] == []


def test_busy_gpus_are_a_400_unless_the_operator_queues_it(
    client, operator, inventory, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    assert _post(client, {"name": "first", "replicas": 2, **H100}).status_code == 201
    refused = _post(client, {"name": "second", **H100})
    assert refused.status_code == 400
    error = _error(refused)
    assert error["code"] == "insufficient_gpus"
    assert "2 × NVIDIA H100 80GB SXM (160 GB) needed, 0 of 4 free (0 GB)" in error["message"]
    assert "queue: true" in error["message"]

    queued = _post(client, {"name": "second", "queue": True, **H100})
    assert queued.status_code == 201
    body = queued.json()
    assert body["state"] == "queued"
    assert body["queue_reason"] == (
        "Waiting for GPUs: 2 × NVIDIA H100 80GB SXM (160 GB) needed, 0 of 4 free (0 GB)."
    )
    # When the first one stops, the queued one gets its GPUs and loads.
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete("/models/first").status_code == 200
    assert DeployedModel.objects.get(name="first").state == "stopped"
    second = DeployedModel.objects.get(name="second")
    assert second.state == "ready"
    assert [e.to_state for e in second.events.all()] == ["queued", "pending", "loading", "ready"]


def test_the_queue_is_first_come_first_served(client, operator, inventory):
    client.force_login(operator)
    _post(client, {"name": "big", **H100})  # 2 of the 4 H100s
    waiting = _post(client, {"name": "waiting", "replicas": 2, "queue": True, **H100})
    assert waiting.json()["state"] == "queued"  # needs 4
    # One H100 is free for a small model, but it would overtake the one waiting for four.
    small = {"name": "small", "params_billions": 7, "gpu_type": "H100-80GB"}
    response = _post(client, small)
    assert response.status_code == 400
    assert "wait for NVIDIA H100 80GB SXM GPUs ahead of it" in _error(response)["message"]
    assert _post(client, {**small, "queue": True}).json()["state"] == "queued"
    # Other GPU types have lines of their own.
    other = _post(client, {"name": "l4", "params_billions": 7, "gpu_type": "L4"})
    assert other.status_code == 201 and other.json()["state"] == "pending"


def test_more_gpus_than_the_fleet_has_is_a_400_even_queued(client, operator, inventory):
    client.force_login(operator)
    response = _post(client, {"name": "huge", "replicas": 3, "queue": True, **H100})
    assert response.status_code == 400
    assert "6 × NVIDIA H100 80GB SXM (480 GB) needed, 4 of 4 free" in _error(response)["message"]
    assert "does not have that many" in _error(response)["message"]
    none = _post(client, {"name": "a10", "params_billions": 7, "gpu_type": "A10"})
    assert none.status_code == 400 and "0 of 0 free" in _error(none)["message"]


def test_scaling_up_needs_free_gpus(client, operator, inventory, ready_model):
    ready_model("one", **H100)
    client.force_login(operator)
    response = client.patch("/models/one", data={"replicas": 3}, content_type="application/json")
    assert response.status_code == 400
    error = _error(response)
    assert (error["param"], error["code"]) == ("replicas", "insufficient_gpus")
    assert "6 × NVIDIA H100 80GB SXM (480 GB) needed, 4 of 4 free" in error["message"]
    ok = client.patch("/models/one", data={"replicas": 2}, content_type="application/json")
    assert ok.status_code == 200 and ok.json()["target_replicas"] == 2


def test_a_queued_deployment_can_be_undeployed_at_once(client, operator, inventory):
    client.force_login(operator)
    _post(client, {"name": "first", "replicas": 2, **H100})
    _post(client, {"name": "second", "queue": True, **H100})
    response = client.delete("/models/second")
    assert response.status_code == 200 and response.json()["state"] == "stopped"


def test_failed_and_stopped_deployments_are_listed_with_their_reason_and_can_be_deleted(
    client, operator
):
    DeployedModel.objects.create(
        name="broken", parameters=7_000_000_000, gpu_type="L4", state="failed",
        failure_reason="the upstream refused",
    )  # fmt: skip
    client.force_login(operator)
    listed = client.get("/models").json()["data"]
    assert [(m["id"], m["state"], m["failure_reason"]) for m in listed] == [
        ("broken", "failed", "the upstream refused")
    ]
    deleted = client.delete("/models/broken")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": "broken", "object": "deployment", "deleted": True}
    assert client.get("/models").json()["data"] == []
    assert client.delete("/models/broken").status_code == 404


def test_a_name_deployed_again_is_one_row_in_every_listing(
    client, operator, ready_model, make_key, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.model_undeploy(actor=SYSTEM, model=ready_model("nebula-7b"))
    client.force_login(operator)
    assert [m["state"] for m in client.get("/models").json()["data"]] == ["stopped"]
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            _post(
                client, {"name": "nebula-7b", "params_billions": 7, "gpu_type": "H100-80GB"}
            ).status_code
            == 201
        )
    listed = client.get("/models").json()["data"]
    assert [(m["id"], m["state"]) for m in listed] == [("nebula-7b", "ready")]
    assert client.get("/models/nebula-7b").json()["state"] == "ready"
    assert DeployedModel.objects.filter(name="nebula-7b").count() == 2  # history, unlisted
    # A live deployment is undeployed first, not deleted.
    with pytest.raises(Conflict):
        services.model_delete(actor=SYSTEM, model=DeployedModel.objects.get(state="ready"))


def test_all_is_refused_rather_than_ignored(client, operator):
    client.force_login(operator)
    response = client.get("/models?all=1")
    assert response.status_code == 400
    assert _error(response)["param"] == "all"


def test_loading_shows_progress_and_an_eta(client, operator, settings):
    settings.NEBULA_SIM_TIME_SCALE = 1.0
    model = services.model_deploy(
        actor=SYSTEM, name="loading-7b", params_billions=7, gpu_type="H100-80GB"
    )
    total = services.load_seconds(model)
    # What the load task does first (it would then sleep through the load), 2 s ago.
    started = timezone.now() - timedelta(seconds=2)
    eta = started + timedelta(seconds=total)
    services.model_transition(
        model_id=model.pk,
        to_state="loading",
        fields={"load_started_at": started, "load_eta": eta},
    )
    client.force_login(operator)
    progress = client.get("/models/loading-7b").json()["progress"]
    assert progress["phase"] == "loading"
    assert progress["eta"] == eta.isoformat()
    assert 0 < progress["seconds_left"] <= total - 2
    assert progress["percent"] >= 100 * 2 / total
    assert progress["percent"] == pytest.approx(100 * (1 - progress["seconds_left"] / total), abs=1)


def test_every_operator_action_on_a_deployment_is_audited(
    client, operator, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        _post(client, {"name": "audited", "params_billions": 7, "gpu_type": "H100-80GB"})
    with django_capture_on_commit_callbacks(execute=True):
        client.patch("/models/audited", data={"replicas": 2}, content_type="application/json")
    with django_capture_on_commit_callbacks(execute=True):
        client.delete("/models/audited")
    client.delete("/models/audited")
    events = list(AuditEvent.objects.filter(target_type="deployment").order_by("id"))
    assert [e.action for e in events] == [
        "model.deploy", "model.scale", "model.undeploy", "model.delete",
    ]  # fmt: skip
    assert {e.actor_label for e in events} == {"olivia-operator"}
    scale = events[1]
    assert (scale.before["replicas"], scale.after["target_replicas"]) == (1, 2)
    assert events[3].before["state"] == "stopped" and events[3].after is None
