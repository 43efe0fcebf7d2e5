"""Deployment lifecycle, driven through the services the Celery tasks call."""

import pytest

from infra.errors import Conflict, InvalidRequest
from models_registry import services
from models_registry.models import DeployedModel, ModelEvent

pytestmark = pytest.mark.django_db


def deploy(operator, **options):
    options.setdefault("name", "nebula-7b")
    options.setdefault("params_billions", 7)
    options.setdefault("gpu_type", "H100-80GB")
    return services.model_deploy(owner=operator, **options)


def states(model):
    return [(e.from_state, e.to_state) for e in ModelEvent.objects.filter(model=model)]


def test_a_7b_model_on_an_h100_reaches_ready_through_loading(
    operator, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        model = deploy(operator)
    model.refresh_from_db()
    assert model.state == "ready"
    assert states(model) == [("", "pending"), ("pending", "loading"), ("loading", "ready")]
    assert "14.0 GB" in ModelEvent.objects.filter(model=model).last().note


def test_a_70b_model_on_one_l4_fails_and_says_why(operator, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        model = deploy(operator, name="big", params_billions=70, gpu_type="L4")
    model.refresh_from_db()
    assert model.state == "failed"
    assert "140.0 GB" in model.failure_reason
    assert "21.6 GB" in model.failure_reason
    assert "L4" in model.failure_reason
    assert states(model)[-1] == ("loading", "failed")


def test_a_70b_model_fits_on_two_h100s():
    fit = services.model_fit(
        parameters=70_000_000_000, gpu=services.GPU_TYPES["H100-80GB"], gpus_per_replica=2
    )
    assert fit.fits
    assert fit.needed_gb == 140 and fit.usable_gb == pytest.approx(144)


def test_loading_takes_weight_size_over_load_bandwidth(operator):
    model = deploy(operator)
    assert services.load_seconds(model) == pytest.approx(14 / 2.0)


class FakeClock:
    """Stands in for the `time` module inside the services: sleeping advances the clock."""

    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(("scale", "expected"), [(1.0, 7.0), (0.5, 3.5), (0, 0)])
def test_loading_waits_simulated_time_scaled(operator, settings, monkeypatch, scale, expected):
    clock = FakeClock()
    monkeypatch.setattr(services, "time", clock)
    settings.NEBULA_SIM_TIME_SCALE = scale
    model = deploy(operator, name="timed")
    services.model_load(model_id=model.pk)
    model.refresh_from_db()
    assert model.state == "ready"
    assert sum(clock.slept) == pytest.approx(expected)
    if scale == 0:
        assert clock.slept == []


def test_undeploy_goes_through_stopping_to_stopped(
    operator, ready_model, django_capture_on_commit_callbacks
):
    model = ready_model()
    with django_capture_on_commit_callbacks(execute=True):
        services.model_undeploy(model=model)
    model.refresh_from_db()
    assert model.state == "stopped"
    assert states(model)[-2:] == [("ready", "stopping"), ("stopping", "stopped")]


def test_undeploy_during_loading_stops_the_load(operator):
    model = deploy(operator)
    services.model_transition(model_id=model.pk, to_state="loading", expect={"pending"})
    services.model_undeploy(model=model)
    services.model_load(model_id=model.pk)  # a late loader finds nothing to do
    model.refresh_from_db()
    assert model.state == "stopping"


def test_a_stopped_name_can_be_deployed_again(
    operator, ready_model, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.model_undeploy(model=ready_model())
    with django_capture_on_commit_callbacks(execute=True):
        again = deploy(operator)
    again.refresh_from_db()
    assert again.state == "ready"
    assert DeployedModel.objects.filter(name="nebula-7b").count() == 2


def test_a_live_name_cannot_be_deployed_twice(operator):
    deploy(operator)
    with pytest.raises(InvalidRequest, match="already exists"):
        deploy(operator)


def test_scaling_changes_capacity(
    operator, ready_model, redis_client, django_capture_on_commit_callbacks
):
    model = ready_model(max_concurrent_seqs=4)
    assert model.capacity == 4
    with django_capture_on_commit_callbacks(execute=True):
        scaled = services.model_scale(model=model, replicas=3)
    assert scaled.capacity == 12
    assert redis_client.hget("nebula:capacity", "nebula-7b") == b"12"
    assert "scaled 1 → 3 replicas" in ModelEvent.objects.filter(model=model).last().note


def test_only_ready_models_scale(operator):
    model = deploy(operator)
    with pytest.raises(Conflict):
        services.model_scale(model=model, replicas=2)


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"gpu_type": "TPU-v5"}, "gpu_type"),
        ({"replicas": -1}, "replicas"),
        ({"replicas": 0}, "replicas"),
        ({"gpus_per_replica": 0}, "gpus_per_replica"),
        ({"params_billions": 0}, "params_billions"),
        ({"name": "bad name"}, "name"),
        ({"context_length": 0}, "context_length"),
    ],
)
def test_invalid_deployments_are_refused(operator, options, param):
    with pytest.raises(InvalidRequest) as refused:
        deploy(operator, **options)
    assert refused.value.param == param
    assert not DeployedModel.objects.exists()


def test_illegal_transitions_are_ignored(operator, ready_model):
    model = ready_model()
    assert services.model_transition(model_id=model.pk, to_state="loading") is None
    model.refresh_from_db()
    assert model.state == "ready"


def test_the_reconciler_restarts_a_load_whose_worker_died(
    operator, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    model = deploy(operator)
    services.model_transition(model_id=model.pk, to_state="loading", expect={"pending"})
    DeployedModel.objects.filter(pk=model.pk).update(
        updated_at=timezone.now() - timedelta(minutes=5)
    )
    assert services.model_reconcile() == 1
    model.refresh_from_db()
    assert model.state == "ready"
