"""The GPU catalogue and the maths on it: whether a model fits, how long it takes to load, and
how many GPUs of each type the fleet has (`NEBULA_GPU_INVENTORY`). Plain Python, no database.

Figures are the vendors' published dense (no sparsity) bf16 throughput, memory size and memory
bandwidth for the SXM/PCIe part named:
- H100 80GB SXM, H200 141GB SXM: NVIDIA H100 / H200 Tensor Core GPU datasheets
  (https://www.nvidia.com/en-us/data-center/h100/, https://www.nvidia.com/en-us/data-center/h200/)
- A100 80GB SXM, A100 40GB SXM: NVIDIA A100 datasheet
  (https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf)
- L40S, L4, A10: NVIDIA L40S, L4 and A10 product pages / datasheets
  (https://www.nvidia.com/en-us/data-center/l40s/, https://www.nvidia.com/en-us/data-center/l4/,
  https://www.nvidia.com/en-us/data-center/products/a10-gpu/)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from inference.engine.timing import HardwareSpec


@dataclass(frozen=True, slots=True)
class GpuType:
    key: str
    name: str
    memory_gb: float
    bandwidth_tb_s: float
    bf16_tflops: float


GPU_TYPES: dict[str, GpuType] = {
    gpu.key: gpu
    for gpu in [
        GpuType("H200-141GB", "NVIDIA H200 141GB SXM", 141, 4.8, 989),
        GpuType("H100-80GB", "NVIDIA H100 80GB SXM", 80, 3.35, 989),
        GpuType("A100-80GB", "NVIDIA A100 80GB SXM", 80, 2.039, 312),
        GpuType("A100-40GB", "NVIDIA A100 40GB SXM", 40, 1.555, 312),
        GpuType("L40S", "NVIDIA L40S 48GB", 48, 0.864, 362),
        GpuType("A10", "NVIDIA A10 24GB", 24, 0.6, 125),
        GpuType("L4", "NVIDIA L4 24GB", 24, 0.3, 121),
    ]
}

# Aliases operators commonly type.
_ALIASES = {"H100": "H100-80GB", "H200": "H200-141GB", "A100": "A100-80GB"}


def gpu_type(key: str) -> GpuType | None:
    key = key.strip()
    for candidate in (key, key.upper(), _ALIASES.get(key.upper(), "")):
        if candidate in GPU_TYPES:
            return GPU_TYPES[candidate]
    return None


# What a deployment served by an external engine runs on, as far as Nebula knows.
NO_GPU = GpuType("", "an external engine", 0, 0, 0)

GPU_CHOICES = [(gpu.key, gpu.name) for gpu in GPU_TYPES.values()]


# --- Fit ---------------------------------------------------------------------------------------

# Keep ~10% of GPU memory free for activations and the KV cache.
MEMORY_HEADROOM = 0.9
BYTES_PER_PARAMETER = 2  # bf16


def weights_gb(parameters: int) -> float:
    return parameters * BYTES_PER_PARAMETER / 1e9


@dataclass(frozen=True)
class Fit:
    """Do a model's weights fit in one replica's GPUs, keeping the headroom free?"""

    needed_gb: float
    usable_gb: float

    @property
    def fits(self) -> bool:
        return self.needed_gb <= self.usable_gb


def model_fit(*, parameters: int, gpu: GpuType, gpus_per_replica: int) -> Fit:
    return Fit(
        needed_gb=weights_gb(parameters),
        usable_gb=gpu.memory_gb * gpus_per_replica * MEMORY_HEADROOM,
    )


def fit_failure_message(*, name: str, gpu: GpuType, gpus_per_replica: int, fit: Fit) -> str:
    return (
        f"{name} does not fit: its bf16 weights need {fit.needed_gb:.1f} GB, but "
        f"{gpus_per_replica} × {gpu.name} ({gpu.memory_gb:g} GB each) leave "
        f"{fit.usable_gb:.1f} GB usable after {100 - MEMORY_HEADROOM * 100:.0f}% headroom. "
        "Use more GPUs per replica or a larger GPU."
    )


# --- Loading -----------------------------------------------------------------------------------

# Simulated rate at which a replica streams weights from storage into GPU memory (a node's
# NVMe or network storage; GPU memory itself takes TB/s, so storage is the bound).
LOAD_BANDWIDTH_GB_S = 2.0
# Once loaded, a serving engine runs one profiling forward pass of a full batch before it
# serves (vLLM's memory profiling with max_num_batched_tokens, 8192 by default): a prefill,
# compute-bound, timed like any prefill (inference.engine.timing).
WARMUP_TOKENS = 8192


@dataclass(frozen=True)
class LoadTime:
    stream_seconds: float  # weights from storage into GPU memory
    warmup_seconds: float  # the profiling pass

    @property
    def seconds(self) -> float:
        return self.stream_seconds + self.warmup_seconds


def load_time(*, parameters: int, gpu: GpuType, gpus_per_replica: int) -> LoadTime:
    """Simulated time for one replica to become ready (replicas load side by side)."""
    hardware = HardwareSpec(
        parameters=parameters,
        gpus=gpus_per_replica,
        bandwidth_tb_s=gpu.bandwidth_tb_s,
        bf16_tflops=gpu.bf16_tflops,
    )
    return LoadTime(
        stream_seconds=weights_gb(parameters) / LOAD_BANDWIDTH_GB_S,
        warmup_seconds=hardware.prefill_seconds(WARMUP_TOKENS),
    )


# --- The fleet's GPUs ----------------------------------------------------------------------------


def inventory_errors(inventory: Mapping[str, int]) -> list[str]:
    """What is wrong with a NEBULA_GPU_INVENTORY (unknown GPU types, negative counts)."""
    errors = []
    for key, count in inventory.items():
        if key not in GPU_TYPES:
            errors.append(f"unknown GPU type '{key}' (known: {', '.join(GPU_TYPES)})")
        elif count < 0:
            errors.append(f"{key}: a count of GPUs cannot be negative")
    return errors


@dataclass(frozen=True)
class GpuShortage:
    """Not enough free GPUs of one type: what a deployment needs against what is there."""

    gpu: GpuType
    needed: int
    free: int
    total: int

    def describe(self) -> str:
        gb = self.gpu.memory_gb
        return (
            f"{self.needed} × {self.gpu.name} ({self.needed * gb:g} GB) needed, "
            f"{self.free} of {self.total} free ({self.free * gb:g} GB)"
        )


def gpu_shortage(
    *, gpu: GpuType, needed: int, held: int, inventory: Mapping[str, int]
) -> GpuShortage | None:
    """None when `needed` more GPUs of this type are free. Without an inventory the simulated
    cloud has as many GPUs as anyone asks for; with one, a type it does not list has none."""
    if not inventory:
        return None
    total = inventory.get(gpu.key, 0)
    free = max(total - held, 0)
    return None if needed <= free else GpuShortage(gpu=gpu, needed=needed, free=free, total=total)
