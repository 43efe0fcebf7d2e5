"""The model catalogue as the /v1 hot path sees it: a per-process snapshot, dropped on change."""

from __future__ import annotations

from dataclasses import dataclass

from infra.db import SingleFlight, run_db
from infra.epoch import MISS, EpochCache, current_epoch
from models_registry.models import LIVE_STATES, DeployedModel, ModelState


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    state: str
    parameters: int
    gpu_type: str
    gpus_per_replica: int
    bandwidth_tb_s: float
    bf16_tflops: float
    capacity: int
    max_concurrent_seqs: int  # per replica: no request may need more sequences than that
    context_length: int
    created: int  # Unix time
    owned_by: str
    backend: str = "simulated"
    pk: int = 0
    kind: str = "chat"  # models_registry.models.ModelKind: which /v1 endpoints it serves

    @property
    def is_ready(self) -> bool:
        return self.state == ModelState.READY

    @classmethod
    def from_model(cls, model: DeployedModel) -> ModelInfo:
        gpu = model.gpu
        return cls(
            name=model.name,
            state=model.state,
            parameters=model.parameters,
            gpu_type=model.gpu_type,
            gpus_per_replica=model.gpus_per_replica,
            bandwidth_tb_s=gpu.bandwidth_tb_s,
            bf16_tflops=gpu.bf16_tflops,
            capacity=model.capacity,
            max_concurrent_seqs=model.max_concurrent_seqs,
            context_length=model.context_length,
            created=int(model.created_at.timestamp()),
            owned_by="nebula",
            backend=model.backend,
            pk=model.pk,
            kind=model.kind,
        )


Catalog = dict[str, ModelInfo]
_catalog: EpochCache[str, Catalog] = EpochCache("model-catalog", max_entries=1)
_fetches = SingleFlight()


def load_catalog() -> Catalog:
    return {
        model.name: ModelInfo.from_model(model)
        for model in DeployedModel.objects.filter(state__in=LIVE_STATES)
    }


async def catalog_snapshot() -> tuple[Catalog, str | None]:
    """Every live deployment by name, and the epoch the snapshot is valid for."""
    cached = _catalog.get("all")
    if cached is not MISS:
        return cached, current_epoch()  # type: ignore[return-value]

    async def fetch() -> tuple[Catalog, str | None]:
        epoch = current_epoch()  # observed before the read, so the snapshot is valid for it
        catalog = await run_db(load_catalog)
        _catalog.put("all", catalog, epoch=epoch)
        return catalog, epoch

    return await _fetches.run("all", fetch)
