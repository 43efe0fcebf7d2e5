"""The `/v1/completions` request (OpenAI's legacy text completions), validated by pydantic.

Strict from the start, as OpenAI is: an unknown field is a 400 naming it, and values are not
coerced (`"max_tokens": "5"` is a 400). What the platform cannot do is refused by name, never
ignored: `suffix` (no model here fills in the middle), `echo` of a prompt given as token ids
(there is no vocabulary to turn them back into text), `echo` with `logprobs` (the simulated
sampler scores what it generates, not the prompt), `best_of` other than `n`, and penalties or
a logit bias other than their no-op values.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from inference.schemas import stop_sequences, validation_refusal
from infra.errors import InvalidRequest

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)

# OpenAI's default when `max_tokens` is not given (the legacy endpoint's, not chat's).
DEFAULT_MAX_TOKENS = 16
ENDOFTEXT = "<|endoftext|>"
Number = StrictInt | StrictFloat
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]


class TextStreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: StrictBool | None = None


class CompletionRequest(BaseModel):
    model_config = _STRICT

    model: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    prompt: (
        StrictStr
        | Annotated[list[StrictStr], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
        | None  # OpenAI's default: the document separator, as if a new document began
    )
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=20)] | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    stream: StrictBool | None = None
    stream_options: TextStreamOptions | None = None
    echo: StrictBool | None = None
    suffix: StrictStr | None = None
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    user: Annotated[StrictStr, Field(max_length=512)] | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Number] | None = None

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids."""
        prompt = self.prompt
        if prompt is None:
            return [ENDOFTEXT]
        if isinstance(prompt, str):
            return [prompt]
        prompts: list[str | list[int]] = []
        ids: list[int] = []
        for item in prompt:
            if isinstance(item, int):
                ids.append(item)  # one prompt given as token ids
            else:
                prompts.append(item)
        return [ids] if ids else prompts

    @property
    def token_limit(self) -> int:
        return DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return stop_sequences(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(why, param=param, code="unsupported_parameter")


def _refuse_what_is_not_supported(request: CompletionRequest) -> None:
    if request.suffix:
        raise _unsupported(
            "suffix", "Nebula's models do not support 'suffix' (inserting text): omit it."
        )
    if request.logprobs is not None and request.echo:
        raise _unsupported(
            "logprobs",
            "'logprobs' with 'echo' would score the prompt, which Nebula's simulated sampler "
            "does not: omit one of them.",
        )
    n = request.n or 1
    if request.best_of is not None and request.best_of != n:
        raise _unsupported(
            "best_of",
            f"'best_of' other than n ({n}) is not supported by Nebula: it would need "
            "per-token log probabilities to rank the candidates. Omit it.",
        )
    for param in ("frequency_penalty", "presence_penalty"):
        if getattr(request, param):
            raise _unsupported(
                param, f"Nebula's simulated models do not apply '{param}': omit it or send 0."
            )
    if request.logit_bias:
        raise _unsupported(
            "logit_bias", "Nebula's models do not apply 'logit_bias': omit it or send {}."
        )
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "Invalid request: stream_options is only allowed when stream is true.",
            param="stream_options",
            code="invalid_value",
        )
    if request.echo and any(not isinstance(prompt, str) for prompt in request.prompts):
        raise _unsupported(
            "echo", "'echo' needs a text prompt: Nebula cannot turn token ids back into text."
        )


def parse_completion_request(body: bytes) -> CompletionRequest:
    """Validate a raw `/v1/completions` body, or raise an OpenAI-style 400 for its first
    problem."""
    try:
        request = CompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_refusal(exc) from None
    _refuse_what_is_not_supported(request)
    return request
