"""Deployment lifecycle, driven through the services the Celery tasks call."""

import pytest

from infra.errors import Conflict, InvalidRequest
from keys.access import SYSTEM, actor_for_user
from models_registry import gpus, services
from models_registry.models import DeployedModel, ModelEvent

pytestmark = pytest.mark.django_db


def deploy(operator, **options):
    options.setdefault("name", "nebula-7b")
    options.setdefault("params_billions", 7)
    options.setdefault("gpu_type", "H100-80GB")
    return services.model_deploy(actor=actor_for_user(operator), **options)


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


def test_a_70b_model_on_one_l4_is_refused_at_once_and_says_why(operator):
    for queue in (False, True):  # waiting would not make it fit
        with pytest.raises(InvalidRequest) as refused:
            deploy(operator, name="big", params_billions=70, gpu_type="L4", queue=queue)
        assert refused.value.code == "model_does_not_fit"
        assert refused.value.param == "gpus_per_replica"
        message = refused.value.message
        assert "140.0 GB" in message and "21.6 GB" in message and "L4" in message
    assert not DeployedModel.objects.exists()


def test_a_deployment_that_stopped_fitting_still_fails_while_loading(operator):
    """Rows from before the submit-time check (or a catalogue change) fail with the reason."""
    model = DeployedModel.objects.create(
        name="old-big", parameters=70_000_000_000, gpu_type="L4", state="pending"
    )
    services.model_load(model_id=model.pk)
    model.refresh_from_db()
    assert model.state == "failed" and "140.0 GB" in model.failure_reason


def test_a_70b_model_fits_on_two_h100s():
    fit = gpus.model_fit(
        parameters=70_000_000_000, gpu=gpus.GPU_TYPES["H100-80GB"], gpus_per_replica=2
    )
    assert fit.fits
    assert fit.needed_gb == 140 and fit.usable_gb == pytest.approx(144)


def test_loading_streams_the_weights_then_warms_up_at_the_gpus_prefill_speed(operator):
    model = deploy(operator)
    # 14 GB at 2 GB/s, then a profiling pass of 8192 tokens: 2 FLOPs × 7e9 parameters × 8192
    # at half of an H100's 989 TFLOP/s.
    warmup = 2 * 7e9 * 8192 / (989e12 * 0.5)
    assert services.load_seconds(model) == pytest.approx(14 / 2.0 + warmup)
    bigger = gpus.load_time(
        parameters=70_000_000_000, gpu=gpus.GPU_TYPES["H100-80GB"], gpus_per_replica=2
    )
    assert bigger.stream_seconds == pytest.approx(70)
    assert bigger.warmup_seconds == pytest.approx(2 * 70e9 * 8192 / (2 * 989e12 * 0.5))


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


class FakeTimezone:
    """Stands in for `django.utils.timezone` inside the services, on the same fake clock."""

    def __init__(self, clock):
        from datetime import UTC, datetime

        self.clock, self.start = clock, datetime(2026, 1, 1, tzinfo=UTC)

    def now(self):
        from datetime import timedelta

        return self.start + timedelta(seconds=self.clock.now - 1000.0)


@pytest.fixture
def clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(services, "time", clock)
    monkeypatch.setattr(services, "timezone", FakeTimezone(clock))
    return clock


@pytest.mark.parametrize("scale", [1.0, 0.5, 0])
def test_loading_waits_simulated_time_scaled(operator, settings, clock, scale):
    settings.NEBULA_SIM_TIME_SCALE = scale
    model = deploy(operator, name="timed")
    services.model_load(model_id=model.pk)
    model.refresh_from_db()
    assert model.state == "ready"
    assert sum(clock.slept) == pytest.approx(services.load_seconds(model) * scale)
    assert model.load_started_at is None and model.load_eta is None
    if scale == 0:
        assert clock.slept == []


def test_undeploy_goes_through_stopping_to_stopped(
    operator, ready_model, django_capture_on_commit_callbacks
):
    model = ready_model()
    with django_capture_on_commit_callbacks(execute=True):
        services.model_undeploy(actor=SYSTEM, model=model)
    model.refresh_from_db()
    assert model.state == "stopped"
    assert states(model)[-2:] == [("ready", "stopping"), ("stopping", "stopped")]


def test_undeploy_during_loading_stops_the_load(operator):
    model = deploy(operator)
    services.model_transition(model_id=model.pk, to_state="loading", expect={"pending"})
    services.model_undeploy(actor=SYSTEM, model=model)
    services.model_load(model_id=model.pk)  # a late loader finds nothing to do
    model.refresh_from_db()
    assert model.state == "stopping"


def test_a_stopped_name_can_be_deployed_again(
    operator, ready_model, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.model_undeploy(actor=SYSTEM, model=ready_model())
    with django_capture_on_commit_callbacks(execute=True):
        again = deploy(operator)
    again.refresh_from_db()
    assert again.state == "ready"
    assert DeployedModel.objects.filter(name="nebula-7b").count() == 2


def test_a_live_name_cannot_be_deployed_twice(operator):
    deploy(operator)
    with pytest.raises(InvalidRequest, match="already exists"):
        deploy(operator)


def test_scaling_up_loads_the_new_replicas_before_they_serve(
    operator, ready_model, redis_client, settings, clock, django_capture_on_commit_callbacks
):
    settings.NEBULA_SIM_TIME_SCALE = 1.0
    model = ready_model(max_concurrent_seqs=4)
    with django_capture_on_commit_callbacks() as callbacks:
        scaling = services.model_scale(actor=SYSTEM, model=model, replicas=3)
    # Until the new replicas have loaded, the deployment serves on the one it has.
    assert (scaling.replicas, scaling.target_replicas, scaling.capacity) == (1, 3, 4)
    loading = (scaling.load_eta - scaling.load_started_at).total_seconds()
    assert loading == pytest.approx(services.load_seconds(model))
    assert "scaling 1 → 3 replicas: loading 2 new replica(s)" in ModelEvent.objects.last().note
    for callback in callbacks:
        callback()  # publishes the capacity (still 4), then runs the scale task (eager)
    model.refresh_from_db()
    assert (model.replicas, model.target_replicas, model.capacity) == (3, None, 12)
    assert sum(clock.slept) == pytest.approx(services.load_seconds(model))
    assert "scaled 1 → 3 replicas (capacity 12)" in ModelEvent.objects.last().note


def test_scaling_down_is_at_once(
    operator, ready_model, redis_client, django_capture_on_commit_callbacks
):
    model = ready_model(replicas=3, max_concurrent_seqs=4)
    with django_capture_on_commit_callbacks(execute=True):
        scaled = services.model_scale(actor=SYSTEM, model=model, replicas=1)
    assert (scaled.replicas, scaled.capacity) == (1, 4)
    assert redis_client.hget("nebula:capacity", "nebula-7b") == b"4"


def test_a_scale_up_is_cancelled_by_scaling_back(operator, ready_model):
    model = ready_model()
    services.model_scale(actor=SYSTEM, model=model, replicas=4)  # its task never runs here
    back = services.model_scale(actor=SYSTEM, model=model, replicas=1)
    assert (back.replicas, back.target_replicas, back.load_eta) == (1, None, None)
    assert "scale-up to 4 replicas cancelled" in ModelEvent.objects.last().note
    services.model_scale_load(model_id=model.pk, started="2001-01-01T00:00:00+00:00")
    model.refresh_from_db()
    assert model.replicas == 1


def test_only_ready_models_scale(operator):
    model = deploy(operator)
    with pytest.raises(Conflict):
        services.model_scale(actor=SYSTEM, model=model, replicas=2)


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
