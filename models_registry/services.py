"""Model deployments: deploy, scale, undeploy, and the lifecycle the Celery tasks drive."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Required, Unpack

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from inference.slots import capacity_publish, slots_in_use
from infra.epoch import epoch_bump_on_commit
from infra.errors import Conflict, InvalidRequest
from infra.events import FLEET_GROUP, ModelEventPayload, broadcast_on_commit
from infra.redis_client import REDIS_ERRORS
from infra.tasks import enqueue_on_commit, send_task
from keys.access import Actor
from models_registry.access import fleet_for
from models_registry.gpus import GPU_TYPES, NO_GPU, GpuType, gpu_type
from models_registry.models import (
    LIVE_STATES,
    TRANSITIONS,
    Backend,
    DeployedModel,
    ModelEvent,
    ModelState,
)
from models_registry.upstreams import (
    CleanUpstream,
    UpstreamSpec,
    upstream_create,
    upstream_serialize,
    upstream_validate,
    upstream_wait_ready,
)

logger = logging.getLogger(__name__)

# The lifecycle tasks (models_registry.tasks), sent by name: they call back into this module.
LOAD_MODEL_TASK = "models_registry.load_model"
STOP_MODEL_TASK = "models_registry.stop_model"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# Keep ~10% of GPU memory free for activations and the KV cache.
MEMORY_HEADROOM = 0.9
# Simulated rate at which weights stream from storage into GPU memory.
LOAD_BANDWIDTH_GB_S = 2.0
MAX_GPUS_PER_REPLICA = 16
MAX_REPLICAS = 64
MAX_CONCURRENT_SEQS = 1024
MAX_CONTEXT_LENGTH = 1_048_576


@dataclass(frozen=True)
class Fit:
    needed_gb: float
    usable_gb: float

    @property
    def fits(self) -> bool:
        return self.needed_gb <= self.usable_gb


def model_fit(*, parameters: int, gpu: GpuType, gpus_per_replica: int) -> Fit:
    """Do bf16 weights fit in one replica's GPUs, keeping the headroom free?"""
    return Fit(
        needed_gb=parameters * 2 / 1e9,
        usable_gb=gpu.memory_gb * gpus_per_replica * MEMORY_HEADROOM,
    )


def fit_failure_message(model: DeployedModel, fit: Fit) -> str:
    return (
        f"{model.name} does not fit: its bf16 weights need {fit.needed_gb:.1f} GB, but "
        f"{model.gpus_per_replica} × {model.gpu.name} ({model.gpu.memory_gb:g} GB each) leave "
        f"{fit.usable_gb:.1f} GB usable after {100 - MEMORY_HEADROOM * 100:.0f}% headroom. "
        f"Use more GPUs per replica or a larger GPU."
    )


def load_seconds(model: DeployedModel) -> float:
    """Simulated time to stream the weights into GPU memory."""
    return model.weights_gb / LOAD_BANDWIDTH_GB_S


def serialize_model(model: DeployedModel) -> dict[str, Any]:
    """The public representation, shared by the API and the dashboard's live events."""
    fit = model_fit(
        parameters=model.parameters, gpu=model.gpu, gpus_per_replica=model.gpus_per_replica
    )
    return {
        "id": model.name,
        "pk": model.pk,
        "name": model.name,
        "state": model.state,
        "params_billions": round(model.params_billions, 3),
        "parameters": model.parameters,
        "gpu_type": model.gpu_type,
        "gpus_per_replica": model.gpus_per_replica,
        "replicas": model.replicas,
        "max_concurrent_seqs": model.max_concurrent_seqs,
        "capacity": model.capacity,
        "context_length": model.context_length,
        "weights_gb": round(fit.needed_gb, 2),
        "failure_reason": model.failure_reason or None,
        "owner": model.owner.get_username() if model.owner_id and model.owner else None,
        "created_at": model.created_at.isoformat(),
        "updated_at": model.updated_at.isoformat() if model.updated_at else None,
        "backend": model.backend,
        "upstream": upstream_serialize(model),
    }


# What a user (not an operator) may not see of a deployment: who runs it and on what hardware.
PRIVATE_FIELDS = (
    "owner",
    "gpu_type",
    "gpus_per_replica",
    "replicas",
    "failure_reason",
    "backend",
    "upstream",
)


def serialize_model_for(model: DeployedModel, *, operator: bool) -> dict[str, Any]:
    """`serialize_model`, minus the fleet's inner workings unless the reader is an operator."""
    data = serialize_model(model)
    if not operator:
        for private in PRIVATE_FIELDS:
            data.pop(private, None)
    return data


def fleet_snapshot(actor: Actor) -> list[dict[str, Any]]:
    """The dashboard's fleet as `actor` may see it (see `access.fleet_for`)."""
    return [serialize_model_for(m, operator=actor.is_operator) for m in fleet_for(actor)]


def _publish_capacities() -> None:
    ready = DeployedModel.objects.filter(state=ModelState.READY)
    try:
        capacity_publish({model.name: model.capacity for model in ready})
    except REDIS_ERRORS:
        logger.warning("could not publish model capacities to Redis")


def _announce(model: DeployedModel) -> None:
    """Every change: web processes drop their model catalogue, waiting jobs see the new
    capacity, dashboards redraw the badge."""
    epoch_bump_on_commit()
    transaction.on_commit(_publish_capacities)
    payload: ModelEventPayload = {"type": "fleet.model", "model": serialize_model(model)}
    broadcast_on_commit(FLEET_GROUP, payload)


def _record(model: DeployedModel, from_state: str, to_state: str, note: str = "") -> None:
    ModelEvent.objects.create(model=model, from_state=from_state, to_state=to_state, note=note)


class DeploymentSpec(UpstreamSpec, total=False):
    """What an operator asks for when deploying (defaults in DEPLOYMENT_DEFAULTS). The size and
    GPU type are required on simulated GPUs; an upstream deployment (backend
    `openai-compatible`) needs its upstream instead (`models_registry.upstreams`)."""

    name: Required[str]
    backend: str
    params_billions: float
    gpu_type: str
    gpus_per_replica: int
    replicas: int
    max_concurrent_seqs: int
    context_length: int


DEPLOYMENT_DEFAULTS = {
    "gpus_per_replica": 1,
    "replicas": 1,
    "max_concurrent_seqs": 8,
    "context_length": 8192,
}


def validate_deployment(spec: DeploymentSpec) -> GpuType:
    """The GPU type the spec names, or 400 naming the first field that is wrong."""
    full: dict[str, Any] = {**DEPLOYMENT_DEFAULTS, **spec}
    name, params_billions, gpu = full["name"], full.get("params_billions"), full.get("gpu_type")
    gpus_per_replica, replicas = full["gpus_per_replica"], full["replicas"]
    backend = full.get("backend", Backend.SIMULATED)
    if backend not in Backend.values:
        raise InvalidRequest(
            f"backend must be one of: {', '.join(Backend.values)}.", param="backend"
        )
    upstream = backend == Backend.OPENAI_COMPATIBLE
    max_concurrent_seqs, context_length = full["max_concurrent_seqs"], full["context_length"]
    if not NAME_RE.match(name or ""):
        raise InvalidRequest(
            "A model name is 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter "
            "or digit.",
            param="name",
        )
    if not (upstream and params_billions is None) and not (
        isinstance(params_billions, int | float) and 0 < params_billions <= 10_000
    ):
        raise InvalidRequest(
            "params_billions must be a number above 0 (e.g. 7 for a 7B model).",
            param="params_billions",
        )
    found = NO_GPU if upstream and not gpu else gpu_type(gpu or "")
    if found is None:
        raise InvalidRequest(
            f"Unknown GPU type '{gpu}'. Known types: {', '.join(GPU_TYPES)}.", param="gpu_type"
        )
    for field, value, upper in [
        ("gpus_per_replica", gpus_per_replica, MAX_GPUS_PER_REPLICA),
        ("replicas", replicas, MAX_REPLICAS),
        ("max_concurrent_seqs", max_concurrent_seqs, MAX_CONCURRENT_SEQS),
        ("context_length", context_length, MAX_CONTEXT_LENGTH),
    ]:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= upper:
            raise InvalidRequest(f"{field} must be a whole number from 1 to {upper}.", param=field)
    return found


def _create_deployment(
    *, owner: Any, state: ModelState, note: str, spec: DeploymentSpec
) -> DeployedModel:
    """Validate and create a deployment in `state`, inside the caller's transaction."""
    gpu = validate_deployment(spec)
    full: dict[str, Any] = {**DEPLOYMENT_DEFAULTS, **spec}
    name = full["name"]
    upstream: CleanUpstream | None = None
    if full.get("backend") == Backend.OPENAI_COMPATIBLE:
        upstream = upstream_validate(spec, deployment_name=name)
        if "replicas" in spec and spec["replicas"] != len(upstream.urls):
            raise InvalidRequest(
                "An upstream deployment has one replica per upstream URL; leave replicas out.",
                param="replicas",
            )
        full["replicas"] = len(upstream.urls)
    if DeployedModel.objects.filter(name=name, state__in=LIVE_STATES).exists():
        raise InvalidRequest(
            f"A deployment named '{name}' already exists. Undeploy it first or pick another name.",
            param="name",
            code="duplicate_name",
        )
    model = DeployedModel(
        owner=owner,
        name=name,
        backend=full.get("backend", Backend.SIMULATED),
        parameters=round((full.get("params_billions") or 0) * 1e9),
        gpu_type=gpu.key,
        gpus_per_replica=full["gpus_per_replica"],
        replicas=full["replicas"],
        max_concurrent_seqs=full["max_concurrent_seqs"],
        context_length=full["context_length"],
        state=state,
    )
    if state == ModelState.READY and upstream is None:  # skipping the load skips its fit check
        fit = model_fit(
            parameters=model.parameters, gpu=gpu, gpus_per_replica=model.gpus_per_replica
        )
        if not fit.fits:
            raise InvalidRequest(fit_failure_message(model, fit), param="gpus_per_replica")
    try:
        with transaction.atomic():
            model.save()
            if upstream is not None:
                upstream_create(model=model, upstream=upstream)
    except IntegrityError:  # a concurrent deploy of the same name won the race
        raise InvalidRequest(
            f"A deployment named '{name}' already exists.", param="name", code="duplicate_name"
        ) from None
    _record(model, "", state, note)
    _announce(model)
    return model


def model_deploy(*, owner: Any, **spec: Unpack[DeploymentSpec]) -> DeployedModel:
    """Create a pending deployment and start loading it on a worker."""
    with transaction.atomic():
        model = _create_deployment(
            owner=owner, state=ModelState.PENDING, note="deployment requested", spec=spec
        )
        enqueue_on_commit(LOAD_MODEL_TASK, model.pk)
    return model


def model_seed_ready(*, owner: Any, **spec: Unpack[DeploymentSpec]) -> tuple[DeployedModel, bool]:
    """A ready deployment without the loading wait (demo data, benchmarks). Idempotent by name."""
    existing = DeployedModel.objects.filter(name=spec["name"], state__in=LIVE_STATES).first()
    if existing is not None:
        return existing, False
    with transaction.atomic():
        model = _create_deployment(
            owner=owner, state=ModelState.READY, note="seeded ready", spec=spec
        )
    return model, True


@transaction.atomic
def model_transition(
    *, model_id: int, to_state: str, expect: set[str] | None = None, note: str = ""
) -> DeployedModel | None:
    """Move a deployment to `to_state` if that is a legal move from where it is now.

    Returns the updated deployment, or None when the move no longer applies (the deployment is
    gone, or someone else moved it first, e.g. an undeploy while it was loading).
    """
    model = DeployedModel.objects.select_for_update().filter(pk=model_id).first()
    if model is None:
        return None
    current = model.state
    if expect is not None and current not in expect:
        return None
    if to_state != ModelState.FAILED and to_state not in TRANSITIONS[current]:
        return None
    if to_state == ModelState.FAILED and current in (ModelState.STOPPED, ModelState.FAILED):
        return None
    model.state = to_state
    if to_state == ModelState.FAILED:
        model.failure_reason = note
    model.save(update_fields=["state", "failure_reason", "updated_at"])
    _record(model, current, to_state, note)
    _announce(model)
    return model


def model_load(*, model_id: int) -> None:
    """The deployment task's work: check the fit, simulate streaming the weights, go ready."""
    model = model_transition(
        model_id=model_id, to_state=ModelState.LOADING, expect={ModelState.PENDING}
    )
    if model is None:
        return
    if model.backend == Backend.OPENAI_COMPATIBLE:
        _upstream_load(model)
        return
    fit = model_fit(
        parameters=model.parameters, gpu=model.gpu, gpus_per_replica=model.gpus_per_replica
    )
    if not fit.fits:
        model_transition(
            model_id=model_id, to_state=ModelState.FAILED, note=fit_failure_message(model, fit)
        )
        return
    seconds = load_seconds(model)
    deadline = time.monotonic() + seconds * settings.NEBULA_SIM_TIME_SCALE
    # Sleep in short steps: an undeploy during loading is noticed within a second, and touching
    # updated_at tells the reconciler this loader is alive.
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        if not _still_loading(model_id):
            return
    model_transition(
        model_id=model_id,
        to_state=ModelState.READY,
        expect={ModelState.LOADING},
        note=f"loaded {model.weights_gb:.1f} GB of weights in {seconds:.1f} s (simulated)",
    )


def _still_loading(model_id: int) -> bool:
    """Is the deployment still loading? Touching updated_at tells the reconciler its loader
    is alive."""
    return bool(
        DeployedModel.objects.filter(pk=model_id, state=ModelState.LOADING).update(
            updated_at=timezone.now()
        )
    )


def _upstream_load(model: DeployedModel) -> None:
    """An upstream deployment needs no GPUs of ours: it is ready once a replica answers."""
    ready, note = upstream_wait_ready(model=model, still_loading=lambda: _still_loading(model.pk))
    if ready is None:
        return  # undeployed meanwhile
    model_transition(
        model_id=model.pk,
        to_state=ModelState.READY if ready else ModelState.FAILED,
        expect={ModelState.LOADING},
        note=note,
    )


def model_scale(*, model: DeployedModel, replicas: int) -> DeployedModel:
    if (
        isinstance(replicas, bool)
        or not isinstance(replicas, int)
        or not 1 <= replicas <= MAX_REPLICAS
    ):
        raise InvalidRequest(
            f"replicas must be a whole number from 1 to {MAX_REPLICAS}.", param="replicas"
        )
    if model.backend == Backend.OPENAI_COMPATIBLE:
        raise InvalidRequest(
            "An upstream deployment has one replica per upstream URL: deploy it again with the "
            "URLs it should use.",
            param="replicas",
        )
    with transaction.atomic():
        locked = DeployedModel.objects.select_for_update().get(pk=model.pk)
        if locked.state != ModelState.READY:
            raise Conflict(
                f"Only a ready deployment can be scaled; '{locked.name}' is {locked.state}.",
                param="replicas",
                code="invalid_state",
            )
        before = locked.replicas
        if before != replicas:
            locked.replicas = replicas
            locked.save(update_fields=["replicas", "updated_at"])
            _record(
                locked,
                locked.state,
                locked.state,
                f"scaled {before} → {replicas} replicas (capacity {locked.capacity})",
            )
            _announce(locked)
    return locked


def model_undeploy(*, model: DeployedModel) -> DeployedModel:
    """Stop serving: new requests get 404 at once; requests in flight finish, then it stops."""
    with transaction.atomic():
        updated = model_transition(
            model_id=model.pk,
            to_state=ModelState.STOPPING,
            expect={ModelState.PENDING, ModelState.LOADING, ModelState.READY},
            note="undeploy requested",
        )
        if updated is None:
            current = DeployedModel.objects.get(pk=model.pk)
            if current.state in (ModelState.STOPPING, ModelState.STOPPED):
                return current
            raise Conflict(
                f"'{current.name}' is {current.state} and cannot be undeployed.",
                code="invalid_state",
            )
        enqueue_on_commit(STOP_MODEL_TASK, model.pk)
    return updated


def model_stop(*, model_id: int, drain_seconds: float = 30.0) -> None:
    """The undeploy task's work: let requests in flight finish (bounded), then release the GPUs."""
    model = DeployedModel.objects.filter(pk=model_id, state=ModelState.STOPPING).first()
    if model is None:
        return
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline and slots_in_use(model.name) > 0:
        time.sleep(0.2)
    model_transition(
        model_id=model_id,
        to_state=ModelState.STOPPED,
        expect={ModelState.STOPPING},
        note="stopped",
    )


def model_reconcile(*, stale_after: float = 30.0) -> int:
    """Resend work for deployments stuck in a transitional state (a lost message, a dead worker).

    Loading and stopping are idempotent, so resending is safe even if the original is still
    running. Returns how many deployments were nudged.
    """
    cutoff = timezone.now() - timedelta(seconds=stale_after)
    nudged = 0
    for model in DeployedModel.objects.filter(
        state__in=[ModelState.PENDING, ModelState.LOADING, ModelState.STOPPING],
        updated_at__lt=cutoff,
    ):
        if model.state == ModelState.LOADING:
            # Its loader died mid-way: start over from pending.
            with transaction.atomic():
                DeployedModel.objects.filter(pk=model.pk, state=ModelState.LOADING).update(
                    state=ModelState.PENDING, updated_at=timezone.now()
                )
                _record(model, ModelState.LOADING, ModelState.PENDING, "loader lost; retrying")
            send_task(LOAD_MODEL_TASK, model.pk)
        elif model.state == ModelState.PENDING:
            DeployedModel.objects.filter(pk=model.pk).update(updated_at=timezone.now())
            send_task(LOAD_MODEL_TASK, model.pk)
        else:
            DeployedModel.objects.filter(pk=model.pk).update(updated_at=timezone.now())
            send_task(STOP_MODEL_TASK, model.pk)
        nudged += 1
    return nudged
