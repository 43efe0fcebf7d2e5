"""How long simulated GPU work takes, from the hardware's published figures.

- Prefill (the prompt) is compute-bound: every prompt token costs about 2 FLOPs per parameter,
  so time ≈ 2·P·prompt_tokens / (peak bf16 FLOP/s × GPUs × PREFILL_MFU).
- Decode is memory-bound at serving batch sizes: each step streams all bf16 weights (2·P bytes)
  from GPU memory, so time per token ≈ 2·P / (bandwidth × GPUs × DECODE_MBU). The n choices of a
  request decode in the same steps (one batch), so n does not multiply the time.

Efficiency factors (documented assumptions, in line with what serving engines report on these
GPUs): prefill reaches ~50% of peak FLOP/s (model FLOPs utilisation), decode ~70% of peak memory
bandwidth (bandwidth utilisation). Tensor parallelism over several GPUs is assumed to scale
linearly, which is optimistic beyond 8 GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFILL_MFU = 0.5
DECODE_MBU = 0.7


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    parameters: int
    gpus: int
    bandwidth_tb_s: float
    bf16_tflops: float

    def prefill_seconds(self, prompt_tokens: int) -> float:
        flops = 2.0 * self.parameters * prompt_tokens
        return flops / (self.bf16_tflops * 1e12 * self.gpus * PREFILL_MFU)

    def decode_seconds_per_token(self) -> float:
        weight_bytes = 2.0 * self.parameters
        return weight_bytes / (self.bandwidth_tb_s * 1e12 * self.gpus * DECODE_MBU)
