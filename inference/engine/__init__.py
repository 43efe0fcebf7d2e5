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
from inference.engine.tools import FINISH_FUNCTION_CALL, FINISH_TOOL_CALLS, ToolSpec

__all__ = [
    "FINISH_FUNCTION_CALL",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "FINISH_TOOL_CALLS",
    "Generation",
    "GenerationRequest",
    "HardwareSpec",
    "Step",
    "ToolSpec",
    "count_chat_tokens",
    "count_tokens",
    "generate_all",
]
