"""The models page explains the fleet: refusals in place, the queue, progress, deleting."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from models_registry.models import DeployedModel

pytestmark = pytest.mark.django_db

DEPLOY = {"gpus_per_replica": "1", "replicas": "1"}


def test_a_model_that_cannot_fit_is_refused_in_place_with_the_numbers(client, operator):
    client.force_login(operator)
    response = client.post(
        "/dashboard/models/",
        {"name": "llama-70b", "params_billions": "70", "gpu_type": "L4", **DEPLOY},
    )
    assert response.status_code == 400
    error = response.context["form"].errors["gpus_per_replica"][0]
    assert "need 140.0 GB" in error and "21.6 GB usable" in error
    assert not DeployedModel.objects.exists()


def test_queued_deployments_say_what_they_wait_for(client, operator, settings, ready_model):
    settings.NEBULA_GPU_INVENTORY = {"H100-80GB": 1}
    ready_model("first")
    client.force_login(operator)
    form = {"name": "second", "params_billions": "7", "gpu_type": "H100-80GB", **DEPLOY}
    refused = client.post("/dashboard/models/", form)
    assert refused.status_code == 400
    assert "0 of 1 free" in refused.context["form"].errors["gpu_type"][0]
    assert client.post("/dashboard/models/", {**form, "queue": "on"}).status_code == 302
    page = client.get("/dashboard/models/").content.decode()
    assert "badge-queued" in page
    assert "Waiting for GPUs: 1 × NVIDIA H100 80GB SXM (80 GB) needed, 0 of 1 free" in page
    inventory = client.get("/dashboard/models/").context["catalogue"]["inventory"]
    assert inventory == {"H100-80GB": {"total": 1, "in_use": 1, "free": 0}}


def test_a_loading_deployment_shows_progress_and_time_left(client, operator):
    now = timezone.now()
    DeployedModel.objects.create(
        name="loading-7b",
        parameters=7_000_000_000,
        gpu_type="H100-80GB",
        state="loading",
        load_started_at=now - timedelta(seconds=3),
        load_eta=now + timedelta(seconds=7),
    )
    client.force_login(operator)
    page = client.get("/dashboard/models/").content.decode()
    meter = re.search(r'data-f="progress" data-left="([\d.]+)" data-percent="([\d.]+)"', page)
    assert meter, page[page.find("loading-7b") :][:1500]
    left, percent = float(meter[1]), float(meter[2])
    # 10 s in all, 3 s gone when it was created (and a little more by the time it rendered).
    assert 0 < left <= 7 and percent >= 30
    assert percent == pytest.approx(100 * (1 - left / 10), abs=1)
    label = re.search(r"(\d+)% · (\d+) s left", page)
    assert label and abs(int(label[1]) - percent) <= 1 and abs(int(label[2]) - left) <= 1


def test_a_failed_deployment_is_listed_with_its_reason_and_deleted_after_confirming(
    client, operator
):
    DeployedModel.objects.create(
        name="broken", parameters=7_000_000_000, gpu_type="L4", state="failed",
        failure_reason="the upstream refused the connection",
    )  # fmt: skip
    client.force_login(operator)
    page = client.get("/dashboard/models/").content.decode()
    assert "the upstream refused the connection" in page
    assert 'data-f="delete" data-confirm="delete-dialog" data-name="broken"' in page
    confirm = client.get("/dashboard/models/broken/undeploy/")
    assert b"Delete broken?" in confirm.content
    response = client.post("/dashboard/models/broken/undeploy/")
    assert response.status_code == 302
    assert not DeployedModel.objects.exists()
    assert b"Deleted broken" in client.get("/dashboard/models/").content


def test_users_do_not_see_the_queue_or_ended_deployments(client, alice, ready_model):
    ready_model("serving")
    DeployedModel.objects.create(
        name="broken", parameters=7_000_000_000, gpu_type="L4", state="failed"
    )
    DeployedModel.objects.create(
        name="waiting", parameters=7_000_000_000, gpu_type="L4", state="queued"
    )
    client.force_login(alice)
    page = client.get("/dashboard/models/").content.decode()
    assert "serving" in page and "broken" not in page and "waiting" not in page
    assert client.post("/dashboard/models/broken/undeploy/").status_code == 403
