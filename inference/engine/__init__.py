"""The simulated GPU inference engine (plain Python)."""

from inference.engine.engine import (
    FINISH_LENGTH,
    FINISH_STOP,
    Generation,
    GenerationRequest,
    Step,
    generate_all,
)
from inference.engine.timing import HardwareSpec
from inference.engine.tokenizer import count_chat_tokens, count_tokens

__all__ = [
    "FINISH_LENGTH",
    "FINISH_STOP",
    "Generation",
    "GenerationRequest",
    "HardwareSpec",
    "Step",
    "count_chat_tokens",
    "count_tokens",
    "generate_all",
]
