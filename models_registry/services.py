"""Model deployments: deploy (or queue), scale, undeploy and delete, and the lifecycle the
Celery tasks drive. Operators' actions are checked here (`keys.access`) and audited in the
transaction that performs them; the fit maths lives with the GPU catalogue (`gpus.py`), the
representation in `serializers.py`."""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta
from typing import Any, Required, Unpack

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from inference.slots import capacity_publish, slots_in_use
from infra.epoch import epoch_bump_on_commit
from infra.errors import Conflict, InvalidRequest
from infra.events import FLEET_GROUP, ModelEventPayload, broadcast_on_commit
from infra.redis_client import REDIS_ERRORS
from infra.tasks import enqueue_on_commit, send_task
from keys.access import SYSTEM, Actor, require_operator
from models_registry.access import fleet_for
from models_registry.gpus import (
    GPU_TYPES,
    NO_GPU,
    GpuShortage,
    GpuType,
    fit_failure_message,
    gpu_shortage,
    gpu_type,
    load_time,
    model_fit,
)
from models_registry.kinds import kind_defaults
from models_registry.models import (
    ENDED_STATES,
    HOLDING_STATES,
    LIVE_STATES,
    TRANSITIONS,
    Backend,
    DeployedModel,
    ModelEvent,
    ModelKind,
    ModelState,
    gpus_in_use,
)
from models_registry.serializers import deployment_data
from models_registry.upstreams import (
    CleanUpstream,
    UpstreamSpec,
    upstream_create,
    upstream_validate,
    upstream_wait_ready,
)
from telemetry.audit import audit_by

logger = logging.getLogger(__name__)

# The lifecycle tasks (models_registry.tasks), sent by name: they call back into this module.
LOAD_MODEL_TASK = "models_registry.load_model"
STOP_MODEL_TASK = "models_registry.stop_model"
SCALE_MODEL_TASK = "models_registry.scale_model"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_GPUS_PER_REPLICA = 16
MAX_REPLICAS = 64
MAX_CONCURRENT_SEQS = 1024
MAX_CONTEXT_LENGTH = 1_048_576
# Serializes the decisions about free GPUs on PostgreSQL (an arbitrary, fixed lock id);
# SQLite's IMMEDIATE transactions already run one writer at a time.
FLEET_LOCK_ID = 0x4E_45_42_55


def load_seconds(model: DeployedModel) -> float:
    """Simulated time for the deployment's replicas to load (side by side)."""
    return load_time(
        parameters=model.parameters, gpu=model.gpu, gpus_per_replica=model.gpus_per_replica
    ).seconds


def fleet_snapshot(actor: Actor) -> list[dict[str, Any]]:
    """The dashboard's fleet as `actor` may see it (see `access.fleet_for`)."""
    return [deployment_data(m, operator=actor.is_operator) for m in fleet_for(actor)]


def fleet_gpus() -> dict[str, dict[str, int]]:
    """Each GPU type of the inventory: how many there are, and how many are free."""
    inventory: dict[str, int] = settings.NEBULA_GPU_INVENTORY
    result = {}
    for key, total in inventory.items():
        used = gpus_in_use(key)
        result[key] = {"total": total, "in_use": used, "free": max(total - used, 0)}
    return result


# --- Side effects ---------------------------------------------------------------------------------


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
    payload: ModelEventPayload = {
        "type": "fleet.model",
        "model": deployment_data(model, operator=True),
    }
    broadcast_on_commit(FLEET_GROUP, payload)


def _record(model: DeployedModel, from_state: str, to_state: str, note: str = "") -> None:
    ModelEvent.objects.create(model=model, from_state=from_state, to_state=to_state, note=note)


def deployment_snapshot(model: DeployedModel) -> dict[str, Any]:
    """What the audit log keeps of a deployment."""
    return {
        "name": model.name,
        "state": model.state,
        "params_billions": round(model.params_billions, 3),
        "gpu_type": model.gpu_type,
        "gpus_per_replica": model.gpus_per_replica,
        "replicas": model.replicas,
        "target_replicas": model.target_replicas,
        "max_concurrent_seqs": model.max_concurrent_seqs,
        "context_length": model.context_length,
    }


def _audit(actor: Actor, action: str, model: DeployedModel, **change: Any) -> None:
    audit_by(actor, action, target_type="deployment", target=model, label=model.name, **change)


def _lock_fleet() -> None:
    """Inside a transaction: one decision about free GPUs at a time, fleet-wide."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [FLEET_LOCK_ID])


def _scaled(seconds: float) -> timedelta:
    return timedelta(seconds=seconds * settings.NEBULA_SIM_TIME_SCALE)


def _wait_for(deadline: datetime, still_wanted: Any) -> bool:
    """Sleep until `deadline` in short steps (an undeploy is noticed within a second, and each
    step tells the reconciler the loader is alive). False once `still_wanted()` is False."""
    while (left := (deadline - timezone.now()).total_seconds()) > 0:
        time.sleep(min(left, 1.0))
        if not still_wanted():
            return False
    return True


# --- Deploying ------------------------------------------------------------------------------------


class DeploymentSpec(UpstreamSpec, total=False):
    """What an operator asks for when deploying (defaults in DEPLOYMENT_DEFAULTS). The size and
    GPU type are required on simulated GPUs; an upstream deployment (backend
    `openai-compatible`) needs its upstream instead (`models_registry.upstreams`)."""

    name: Required[str]
    kind: str  # models_registry.models.ModelKind (default chat)
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
    full: dict[str, Any] = {**DEPLOYMENT_DEFAULTS, **kind_defaults(dict(spec))}
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


def _shortage(model: DeployedModel, *, needed: int) -> GpuShortage | None:
    held = gpus_in_use(model.gpu_type, exclude_pk=model.pk)
    return gpu_shortage(
        gpu=model.gpu, needed=needed, held=held, inventory=settings.NEBULA_GPU_INVENTORY
    )


def _gpus_refused(model: DeployedModel, shortage: GpuShortage, *, param: str) -> InvalidRequest:
    if shortage.needed > shortage.total:
        hint = "The fleet does not have that many: use fewer replicas or another GPU type."
    else:
        hint = (
            "Undeploy something first, or deploy with queue: true to wait for the GPUs."
            if param != "replicas"
            else "Undeploy something first, or scale to fewer replicas."
        )
    return InvalidRequest(
        f"{model.name} cannot be placed: {shortage.describe()}. {hint}",
        param=param,
        code="insufficient_gpus",
    )


def _placement(model: DeployedModel, *, queue: bool) -> tuple[ModelState, str]:
    """Pending (GPUs free now) or queued (the operator asked to wait), else 400. First come,
    first served: while deployments wait for a GPU type, a newcomer waits behind them."""
    needed = model.gpus_per_replica * model.replicas
    shortage = _shortage(model, needed=needed)
    waiting = DeployedModel.objects.filter(gpu_type=model.gpu_type, state=ModelState.QUEUED)
    if shortage is None and not waiting.exists():
        return ModelState.PENDING, "deployment requested"
    if shortage is not None and shortage.needed > shortage.total:
        raise _gpus_refused(model, shortage, param="replicas")
    if not queue:
        if shortage is None:
            raise InvalidRequest(
                f"{model.name} cannot be placed now: {waiting.count()} deployment(s) wait for "
                f"{model.gpu.name} GPUs ahead of it. Deploy with queue: true to wait in line.",
                param="gpu_type",
                code="insufficient_gpus",
            )
        raise _gpus_refused(model, shortage, param="gpu_type")
    reason = shortage.describe() if shortage else "behind deployments queued earlier"
    return ModelState.QUEUED, f"queued: {reason}"


def _create_deployment(
    *, actor: Actor, spec: DeploymentSpec, queue: bool, ready: bool = False
) -> DeployedModel:
    """Validate, check the fit and the free GPUs, and create the deployment, inside the
    caller's transaction."""
    gpu = validate_deployment(spec)
    full: dict[str, Any] = {**DEPLOYMENT_DEFAULTS, **kind_defaults(dict(spec))}
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
    model = DeployedModel(
        owner=actor.user,
        name=name,
        kind=full.get("kind", ModelKind.CHAT),
        backend=full.get("backend", Backend.SIMULATED),
        parameters=round((full.get("params_billions") or 0) * 1e9),
        gpu_type=gpu.key,
        gpus_per_replica=full["gpus_per_replica"],
        replicas=full["replicas"],
        max_concurrent_seqs=full["max_concurrent_seqs"],
        context_length=full["context_length"],
    )
    # A model too large for its GPUs is refused now, with the numbers (it used to be accepted
    # and fail while loading), queue or not: waiting would not make it fit. An engine we do not
    # run brings its own GPUs: no fit, no placement.
    fit = model_fit(parameters=model.parameters, gpu=gpu, gpus_per_replica=model.gpus_per_replica)
    if upstream is None and not fit.fits:
        raise InvalidRequest(
            fit_failure_message(
                name=name, gpu=gpu, gpus_per_replica=model.gpus_per_replica, fit=fit
            ),
            param="gpus_per_replica",
            code="model_does_not_fit",
        )
    if DeployedModel.objects.filter(name=name, state__in=LIVE_STATES).exists():
        raise InvalidRequest(
            f"A deployment named '{name}' already exists. Undeploy it first or pick another name.",
            param="name",
            code="duplicate_name",
        )
    _lock_fleet()
    if upstream is None:
        state, note = _placement(model, queue=queue)
    else:
        state, note = ModelState.PENDING, "deployment requested"
    if ready and state == ModelState.PENDING:
        state, note = ModelState.READY, "seeded ready"
    model.state = state
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
    _audit(actor, "model.deploy", model, after=deployment_snapshot(model))
    if state == ModelState.PENDING:
        enqueue_on_commit(LOAD_MODEL_TASK, model.pk)
    return model


def model_deploy(
    *, actor: Actor, queue: bool = False, **spec: Unpack[DeploymentSpec]
) -> DeployedModel:
    """Deploy a model: it loads on a worker at once if it fits and its GPUs are free; with
    `queue`, it waits for busy GPUs (state `queued`) instead of being refused."""
    require_operator(actor)
    with transaction.atomic():
        return _create_deployment(actor=actor, spec=spec, queue=queue)


def model_seed_ready(*, owner: Any, **spec: Unpack[DeploymentSpec]) -> tuple[DeployedModel, bool]:
    """A ready deployment without the loading wait (demo data, benchmarks). Idempotent by name."""
    existing = DeployedModel.objects.filter(name=spec["name"], state__in=LIVE_STATES).first()
    if existing is not None:
        return existing, False
    actor = SYSTEM if owner is None else Actor(user=owner, system=True)
    with transaction.atomic():
        model = _create_deployment(actor=actor, spec=spec, queue=False, ready=True)
    return model, True


# --- The lifecycle --------------------------------------------------------------------------------


@transaction.atomic
def model_transition(
    *,
    model_id: int,
    to_state: str,
    expect: set[str] | None = None,
    note: str = "",
    fields: dict[str, Any] | None = None,
) -> DeployedModel | None:
    """Move a deployment to `to_state` if that is a legal move from where it is now (setting
    `fields` too).

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
    if to_state == ModelState.FAILED and current in ENDED_STATES:
        return None
    model.state = to_state
    changed = {"state", "updated_at", *(fields or {})}
    for name, value in (fields or {}).items():
        setattr(model, name, value)
    if to_state == ModelState.FAILED:
        model.failure_reason = note
        changed.add("failure_reason")
    if to_state in ENDED_STATES or to_state == ModelState.STOPPING:
        model.target_replicas = model.load_started_at = model.load_eta = None
        changed |= {"target_replicas", "load_started_at", "load_eta"}
    model.save(update_fields=sorted(changed))
    _record(model, current, to_state, note)
    _announce(model)
    if to_state in ENDED_STATES and current in HOLDING_STATES:
        transaction.on_commit(fleet_dispatch)  # its GPUs are free for the queue
    return model


def fleet_dispatch() -> int:
    """Start the queued deployments whose GPUs are now free, first come, first served per GPU
    type. Returns how many started."""
    started = 0
    with transaction.atomic():
        _lock_fleet()
        blocked: set[str] = set()
        queued = DeployedModel.objects.filter(state=ModelState.QUEUED).order_by("created_at", "pk")
        for model in queued:
            if model.gpu_type in blocked:
                continue
            if _shortage(model, needed=model.gpus_per_replica * model.replicas) is not None:
                blocked.add(model.gpu_type)  # nobody overtakes the head of its line
                continue
            if model_transition(
                model_id=model.pk,
                to_state=ModelState.PENDING,
                expect={ModelState.QUEUED},
                note="GPUs free: loading",
            ):
                enqueue_on_commit(LOAD_MODEL_TASK, model.pk)
                started += 1
    return started


def model_load(*, model_id: int) -> None:
    """The deployment task's work: simulate loading the weights (with its progress and ETA on
    the row), then go ready."""
    model = DeployedModel.objects.filter(pk=model_id).first()
    if model is None:
        return
    if model.backend == Backend.OPENAI_COMPATIBLE:
        _upstream_load(model)
        return
    fit = model_fit(
        parameters=model.parameters, gpu=model.gpu, gpus_per_replica=model.gpus_per_replica
    )
    if not fit.fits:  # checked at submit time; a deployment from before that still fails here
        message = fit_failure_message(
            name=model.name, gpu=model.gpu, gpus_per_replica=model.gpus_per_replica, fit=fit
        )
        model_transition(model_id=model_id, to_state=ModelState.FAILED, note=message)
        return
    seconds = load_seconds(model)
    now = timezone.now()
    eta = now + _scaled(seconds)
    model = model_transition(
        model_id=model_id,
        to_state=ModelState.LOADING,
        expect={ModelState.PENDING},
        fields={"load_started_at": now, "load_eta": eta},
    )
    if model is None:
        return

    if not _wait_for(eta, lambda: _still_loading(model_id)):
        return
    model_transition(
        model_id=model_id,
        to_state=ModelState.READY,
        expect={ModelState.LOADING},
        note=f"loaded {model.weights_gb:.1f} GB of weights in {seconds:.1f} s (simulated)",
        fields={"load_started_at": None, "load_eta": None},
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
    model = (
        model_transition(
            model_id=model.pk, to_state=ModelState.LOADING, expect={ModelState.PENDING}
        )
        or model
    )
    ready, note = upstream_wait_ready(model=model, still_loading=lambda: _still_loading(model.pk))
    if ready is None:
        return  # undeployed meanwhile
    model_transition(
        model_id=model.pk,
        to_state=ModelState.READY if ready else ModelState.FAILED,
        expect={ModelState.LOADING},
        note=note,
    )


def _check_replicas(replicas: Any) -> None:
    if (
        isinstance(replicas, bool)
        or not isinstance(replicas, int)
        or not 1 <= replicas <= MAX_REPLICAS
    ):
        raise InvalidRequest(
            f"replicas must be a whole number from 1 to {MAX_REPLICAS}.", param="replicas"
        )


def model_scale(*, actor: Actor, model: DeployedModel, replicas: int) -> DeployedModel:
    """Scale a ready deployment. Down is at once; up loads the new replicas first (the
    deployment serves on the replicas it has meanwhile, `progress` says how far it is), and
    needs their GPUs free."""
    require_operator(actor)
    _check_replicas(replicas)
    if model.backend == Backend.OPENAI_COMPATIBLE:
        raise InvalidRequest(
            "An upstream deployment has one replica per upstream URL: deploy it again with the "
            "URLs it should use.",
            param="replicas",
        )
    with transaction.atomic():
        _lock_fleet()
        locked = DeployedModel.objects.select_for_update().get(pk=model.pk)
        if locked.state != ModelState.READY:
            raise Conflict(
                f"Only a ready deployment can be scaled; '{locked.name}' is {locked.state}.",
                param="replicas",
                code="invalid_state",
            )
        before = deployment_snapshot(locked)
        current, target = locked.replicas, locked.target_replicas
        if replicas == (target or current):
            return locked  # already there, or already on the way
        if replicas <= current:
            capacity = locked.max_concurrent_seqs * replicas
            note = f"scaled {current} → {replicas} replicas (capacity {capacity})"
            if replicas == current:
                note = f"scale-up to {target} replicas cancelled"
            locked.replicas, locked.target_replicas = replicas, None
            locked.load_started_at = locked.load_eta = None
            transaction.on_commit(fleet_dispatch)  # fewer GPUs held: the queue may move
        else:
            shortage = _shortage(locked, needed=locked.gpus_per_replica * replicas)
            if shortage is not None:
                raise _gpus_refused(locked, shortage, param="replicas")
            seconds = load_seconds(locked)
            now = timezone.now()
            locked.target_replicas = replicas
            locked.load_started_at, locked.load_eta = now, now + _scaled(seconds)
            note = (
                f"scaling {current} → {replicas} replicas: loading {replicas - current} new "
                f"replica(s), {seconds:.1f} s (simulated)"
            )
            started = locked.load_started_at.isoformat()
            enqueue_on_commit(SCALE_MODEL_TASK, locked.pk, started)
        locked.save()
        _record(locked, locked.state, locked.state, note)
        _announce(locked)
        _audit(actor, "model.scale", locked, before=before, after=deployment_snapshot(locked))
    return locked


def model_scale_load(*, model_id: int, started: str) -> None:
    """The scale task's work: load the new replicas, then let them serve. `started` names the
    scale-up (a newer one, a scale-down or an undeploy makes this one moot)."""
    started_at = datetime.fromisoformat(started)
    model = DeployedModel.objects.filter(pk=model_id, load_started_at=started_at).first()
    if model is None or model.load_eta is None or not model.target_replicas:
        return

    def still_scaling() -> bool:
        touched = DeployedModel.objects.filter(
            pk=model_id, state=ModelState.READY, load_started_at=started_at
        ).update(updated_at=timezone.now())
        return bool(touched)

    if not _wait_for(model.load_eta, still_scaling):
        return
    with transaction.atomic():
        locked = (
            DeployedModel.objects.select_for_update()
            .filter(pk=model_id, state=ModelState.READY, load_started_at=started_at)
            .first()
        )
        if locked is None or not locked.target_replicas:
            return
        before = locked.replicas
        locked.replicas, locked.target_replicas = locked.target_replicas, None
        locked.load_started_at = locked.load_eta = None
        locked.save()
        _record(
            locked,
            locked.state,
            locked.state,
            f"scaled {before} → {locked.replicas} replicas (capacity {locked.capacity})",
        )
        _announce(locked)


def model_undeploy(*, actor: Actor, model: DeployedModel) -> DeployedModel:
    """Stop serving: new requests get 404 at once; requests in flight finish, then it stops. A
    queued deployment just leaves the queue."""
    require_operator(actor)
    with transaction.atomic():
        before = deployment_snapshot(model)
        updated = model_transition(
            model_id=model.pk,
            to_state=ModelState.STOPPED,
            expect={ModelState.QUEUED},
            note="undeployed while queued",
        )
        if updated is not None:
            transaction.on_commit(fleet_dispatch)  # the line behind it may move up
        else:
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
        _audit(actor, "model.undeploy", updated, before=before, after=deployment_snapshot(updated))
    return updated


def model_delete(*, actor: Actor, model: DeployedModel) -> dict[str, Any]:
    """Remove a stopped or failed deployment from the fleet's listings (its name's history
    goes with it; the audit log keeps what it was). A live one must be undeployed first."""
    require_operator(actor)
    with transaction.atomic():
        locked = DeployedModel.objects.select_for_update().filter(pk=model.pk).first()
        if locked is None:
            return {"id": model.name, "object": "deployment", "deleted": True}
        if locked.state not in ENDED_STATES:
            raise Conflict(
                f"'{locked.name}' is {locked.state}: undeploy it before deleting it.",
                code="invalid_state",
            )
        _audit(actor, "model.delete", locked, before=deployment_snapshot(locked))
        DeployedModel.objects.filter(name=locked.name, state__in=ENDED_STATES).delete()
        broadcast_on_commit(
            FLEET_GROUP,
            {"type": "fleet.model", "model": {"name": locked.name, "deleted": True}},
        )
    return {"id": locked.name, "object": "deployment", "deleted": True}


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
    """Resend work for deployments stuck in a transitional state (a lost message, a dead worker),
    and start queued deployments whose GPUs are free.

    Loading, scaling and stopping are idempotent, so resending is safe even if the original is
    still running. Returns how many deployments were nudged.
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
                    state=ModelState.PENDING,
                    updated_at=timezone.now(),
                    load_started_at=None,
                    load_eta=None,
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
    stalled_scales = DeployedModel.objects.filter(
        state=ModelState.READY,
        target_replicas__isnull=False,
        load_started_at__isnull=False,
        updated_at__lt=cutoff,
    )
    for model in stalled_scales:
        DeployedModel.objects.filter(pk=model.pk).update(updated_at=timezone.now())
        assert model.load_started_at is not None
        send_task(SCALE_MODEL_TASK, model.pk, model.load_started_at.isoformat())
        nudged += 1
    return nudged + fleet_dispatch()
