"""The GPU catalogue: the figures that decide whether a model fits and how fast it runs.

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

from dataclasses import dataclass


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
