"""The `/v1/embeddings` request, validated by pydantic against OpenAI's published schema
(`CreateEmbeddingRequest`, which has `additionalProperties: false`).

Strict: an unknown field is a 400 naming it, as OpenAI answers, and no value is coerced
(`"dimensions": "8"` and `"input": [true]` are 400s). The limits that need the model (its
tokenizer, its sequence length, its dimensions) are checked by the service.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.schemas import validation_refusal
from infra.errors import InvalidRequest

# OpenAI's limit on the inputs of one request (`maxItems` in its schema).
MAX_INPUTS = 2048

TokenIds = list[int]
Input = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: Input
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    # OpenAI's abuse-monitoring identifier: accepted; Nebula keeps no per-end-user record.
    user: Annotated[str, Field(max_length=512)] | None = None

    @property
    def base64(self) -> bool:
        return self.encoding_format == "base64"

    def inputs(self) -> list[str] | list[TokenIds]:
        """The inputs as a list: strings, or token-id arrays (one array of ids is one input)."""
        given = self.input
        if isinstance(given, str):
            return [given]
        if given and all(isinstance(item, int) for item in given):
            return [cast(TokenIds, given)]
        return cast("list[str] | list[TokenIds]", given)


_INPUT_SHAPES = (
    "input must be a non-empty string, an array of strings, an array of token ids (integers) "
    "or an array of token-id arrays"
)


def _check_inputs(request: EmbeddingRequest) -> None:
    """The shape rules of OpenAI's schema that a type cannot say: nothing empty, at most
    MAX_INPUTS inputs."""
    given = request.input
    if isinstance(given, str):
        if not given:
            raise InvalidRequest(
                "input must not be an empty string.", param="input", code="invalid_value"
            )
        return
    if not given:
        raise InvalidRequest(
            "input must not be an empty array.", param="input", code="invalid_value"
        )
    if len(given) > MAX_INPUTS:
        raise InvalidRequest(
            f"input has {len(given)} items; at most {MAX_INPUTS} inputs are allowed per request.",
            param="input",
            code="too_many_inputs",
        )
    for index, item in enumerate(given):
        if isinstance(item, str | list) and not item:
            kind = "string" if isinstance(item, str) else "token array"
            raise InvalidRequest(
                f"input[{index}] is an empty {kind}; every input must have content.",
                param=f"input[{index}]",
                code="invalid_value",
            )


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    """Validate a raw request body, or raise an OpenAI-style 400 for its first problem."""
    try:
        request = EmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        refusal = validation_refusal(exc)
        if (refusal.param or "").split("[")[0] == "input" and refusal.code == "invalid_type":
            # pydantic lists every branch of the union it tried; say what `input` may be.
            raise InvalidRequest(
                f"Invalid 'input': {_INPUT_SHAPES}.", param="input", code="invalid_type"
            ) from None
        raise refusal from None
    _check_inputs(request)
    return request
