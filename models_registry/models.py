from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from models_registry.gpus import GPU_CHOICES, GPU_TYPES, NO_GPU, GpuType, weights_gb


class ModelState(models.TextChoices):
    QUEUED = "queued"  # waiting for free GPUs (NEBULA_GPU_INVENTORY)
    PENDING = "pending"
    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


# States in which a deployment holds its name: a new deployment may reuse the name of a stopped
# or failed one, which it then replaces in listings (the old row stays as history).
LIVE_STATES = [
    ModelState.QUEUED,
    ModelState.PENDING,
    ModelState.LOADING,
    ModelState.READY,
    ModelState.STOPPING,
]
# States in which a deployment holds its GPUs (a stopping one until its requests drained).
HOLDING_STATES = [ModelState.PENDING, ModelState.LOADING, ModelState.READY, ModelState.STOPPING]
ENDED_STATES = [ModelState.STOPPED, ModelState.FAILED]

# Every allowed move; anything may also fail.
TRANSITIONS: dict[str, set[str]] = {
    ModelState.QUEUED: {ModelState.PENDING, ModelState.STOPPED},
    ModelState.PENDING: {ModelState.LOADING, ModelState.STOPPING},
    ModelState.LOADING: {ModelState.READY, ModelState.STOPPING},
    ModelState.READY: {ModelState.STOPPING},
    ModelState.STOPPING: {ModelState.STOPPED},
    ModelState.STOPPED: set(),
    ModelState.FAILED: set(),
}


class ModelKind(models.TextChoices):
    CHAT = "chat", "chat and text completions"
    EMBEDDING = "embedding", "embeddings"


class Backend(models.TextChoices):
    SIMULATED = "simulated", "simulated GPUs"
    OPENAI_COMPATIBLE = "openai-compatible", "an OpenAI-compatible upstream (vLLM, llama.cpp, …)"


class DeployedModel(models.Model):
    name = models.CharField(max_length=64)
    # What the deployment serves (which /v1 endpoints), and what serves it.
    kind = models.CharField(max_length=16, choices=ModelKind.choices, default=ModelKind.CHAT)
    backend = models.CharField(max_length=32, choices=Backend.choices, default=Backend.SIMULATED)
    parameters = models.BigIntegerField(help_text="Parameter count, e.g. 7000000000.")
    gpu_type = models.CharField(max_length=32, choices=GPU_CHOICES)
    gpus_per_replica = models.PositiveSmallIntegerField(default=1)
    replicas = models.PositiveSmallIntegerField(default=1)
    max_concurrent_seqs = models.PositiveSmallIntegerField(
        "max concurrent sequences per replica", default=8
    )
    context_length = models.PositiveIntegerField(default=8192)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deployments",
    )
    state = models.CharField(max_length=16, choices=ModelState.choices, default=ModelState.PENDING)
    failure_reason = models.TextField(blank=True)
    # A scale-up under way: the replicas being loaded are not serving yet, so `replicas` (and
    # the capacity) change only once they are.
    target_replicas = models.PositiveSmallIntegerField(null=True, blank=True)
    # The load under way (of the deployment, or of a scale-up's new replicas): when it started
    # and when it will be done, in real time (simulated time × NEBULA_SIM_TIME_SCALE).
    load_started_at = models.DateTimeField(null=True, blank=True)
    load_eta = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(state__in=LIVE_STATES),
                name="deployment_live_name_unique",
            ),
            models.CheckConstraint(condition=models.Q(replicas__gte=1), name="replicas_min_1"),
            models.CheckConstraint(
                condition=models.Q(gpus_per_replica__gte=1), name="gpus_per_replica_min_1"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} [{self.state}]"

    @property
    def gpu(self) -> GpuType:
        # An upstream deployment (the openai-compatible backend) may name no GPU at all.
        return GPU_TYPES.get(self.gpu_type, NO_GPU)

    @property
    def gpus_held(self) -> int:
        """GPUs this deployment occupies now (a scale-up's new replicas included)."""
        if self.state not in HOLDING_STATES:
            return 0
        return self.gpus_per_replica * max(self.replicas, self.target_replicas or 0)

    @property
    def capacity(self) -> int:
        """Sequences the deployment serves at once, across every worker."""
        return self.replicas * self.max_concurrent_seqs

    @property
    def params_billions(self) -> float:
        return self.parameters / 1e9

    @property
    def weights_gb(self) -> float:
        return weights_gb(self.parameters)


def gpus_in_use(gpu_type: str, *, exclude_pk: int | None = None) -> int:
    """GPUs of this type held by live deployments (all but `exclude_pk`, if given)."""
    rows = DeployedModel.objects.filter(gpu_type=gpu_type, state__in=HOLDING_STATES)
    if exclude_pk is not None:
        rows = rows.exclude(pk=exclude_pk)
    return sum(model.gpus_held for model in rows)


class ModelEvent(models.Model):
    """The deployment's history: every state transition, and scaling."""

    model = models.ForeignKey(DeployedModel, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16)
    note = models.TextField(blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.model.name}: {self.from_state or '∅'} → {self.to_state}"


class ModelPrice(models.Model):
    """What a model's tokens cost, from `effective_from` on (until the next price). By model
    name, not deployment: a model redeployed under the same name keeps its price history, and
    usage records name the model they used."""

    model_name = models.CharField(max_length=64, db_index=True)
    prompt_per_million = models.DecimalField(
        "price per million prompt tokens", max_digits=12, decimal_places=6
    )
    completion_per_million = models.DecimalField(
        "price per million completion tokens", max_digits=12, decimal_places=6
    )
    effective_from = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["model_name", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_name", "effective_from"], name="model_price_one_per_instant"
            ),
            models.CheckConstraint(
                condition=models.Q(prompt_per_million__gte=0, completion_per_million__gte=0),
                name="model_price_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} from {self.effective_from:%Y-%m-%d %H:%M}"


# The openai-compatible backend's configuration lives in its own module (see there).
from models_registry.upstream_models import UpstreamConfig, UpstreamReplica  # noqa: E402

__all__ = [
    "LIVE_STATES",
    "TRANSITIONS",
    "Backend",
    "DeployedModel",
    "ModelEvent",
    "ModelKind",
    "ModelPrice",
    "ModelState",
    "UpstreamConfig",
    "UpstreamReplica",
]
