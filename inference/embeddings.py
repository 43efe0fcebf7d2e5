"""Embeddings, web side: check the request against the model, build its job, admit it, and
render OpenAI's answer.

The same path as a chat completion (`inference.services.completion_submit`): the gateway's
model check and admission script (rate limits, token limits: an embedding's tokens are its
prompt tokens), a job on the Celery queue, a GPU slot on a worker, the `Completion` watchdog,
and one usage record per request, written by whoever ends the job. What differs is the
work: the worker runs the real model (`inference.engine.embeddings`) and sends the vectors
back in its final message.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from typing import Any

from inference.completion import Completion
from inference.embedding_schemas import EmbeddingRequest
from inference.embedding_tokens import tokenize_texts
from inference.gateway import Caller, RequestContext, gateway_admit
from inference.hub import reply_hub
from inference.jobs import DoneMessage, JobPayload, celery_message, model_payload
from infra.errors import InvalidRequest
from keys.auth import KeyInfo
from models_registry.catalog import ModelInfo
from models_registry.embedding_models import EmbeddingModelSpec, embedding_model
from models_registry.models import ModelKind

# OpenAI's limits: tokens per input (8192 for every embedding model; a model that reads fewer
# refuses at its own length) and tokens summed over the inputs of one request.
MAX_TOKENS_PER_INPUT = 8192
MAX_TOKENS_PER_REQUEST = 300_000


def not_an_embedding_model(model: ModelInfo) -> InvalidRequest:
    return InvalidRequest(
        f"The model '{model.name}' is a chat model: it does not serve /v1/embeddings. Use an "
        "embedding model (GET /v1/models lists the models), or /v1/chat/completions.",
        param="model",
        code="model_not_supported",
    )


def embedding_only(model: ModelInfo) -> InvalidRequest | None:
    """The refusal of a generation request to `model` if it is an embedding model."""
    if model.kind != ModelKind.EMBEDDING:
        return None
    return InvalidRequest(
        f"The model '{model.name}' is an embedding model: it serves /v1/embeddings only, not "
        "text generation.",
        param="model",
        code="model_not_supported",
    )


def _token_inputs(spec: EmbeddingModelSpec, request: EmbeddingRequest) -> list[list[int]]:
    """The inputs as the model's token ids, checked against the model: ids in its vocabulary,
    each input within what it reads (refused, never silently truncated), the request within
    OpenAI's total."""
    given = request.inputs()
    # One input (a string, or one array of token ids) is `input`; one of many is `input[i]`.
    single = isinstance(request.input, str) or isinstance(request.input[0], int)
    if given and isinstance(given[0], str):
        tokens = tokenize_texts(spec, given)
        strings = True
    else:
        tokens = given  # type: ignore[assignment]
        strings = False
        for index, ids in enumerate(tokens):
            bad = next((t for t in ids if not 0 <= t < spec.vocab_size), None)
            if bad is not None:
                where = "input" if single else f"input[{index}]"
                raise InvalidRequest(
                    f"{where} holds the token id {bad}, which is not in the vocabulary of "
                    f"'{spec.name}' (ids 0 to {spec.vocab_size - 1}, its own tokenizer's).",
                    param=where,
                    code="invalid_value",
                )
    limit = min(MAX_TOKENS_PER_INPUT, spec.max_input_tokens)
    for index, ids in enumerate(tokens):
        if len(ids) > limit:
            where = "input" if single else f"input[{index}]"
            counted = "is" if strings else "has"
            raise InvalidRequest(
                f"{where} {counted} {len(ids)} tokens long; '{spec.name}' reads at most {limit} "
                f"tokens per input (its maximum sequence length is {spec.max_seq_length} "
                "tokens, its [CLS] and [SEP] included). Inputs are not truncated: shorten or "
                "split it.",
                param=where,
                code="context_length_exceeded",
            )
    total = sum(len(ids) for ids in tokens)
    if total > MAX_TOKENS_PER_REQUEST:
        raise InvalidRequest(
            f"The inputs have {total} tokens in all; at most {MAX_TOKENS_PER_REQUEST} tokens "
            "are allowed per request. Send fewer inputs per request.",
            param="input",
            code="max_tokens_per_request",
        )
    return tokens


def _dimensions(spec: EmbeddingModelSpec, request: EmbeddingRequest) -> int | None:
    wanted = request.dimensions
    if wanted is None or wanted == spec.dimensions:
        return None
    if wanted > spec.dimensions:
        raise InvalidRequest(
            f"dimensions is {wanted}, but '{spec.name}' makes vectors of {spec.dimensions} "
            f"dimensions: ask for {spec.dimensions} or fewer.",
            param="dimensions",
            code="invalid_value",
        )
    return wanted


async def embeddings_submit(
    ctx: RequestContext, *, caller: Caller, request: EmbeddingRequest
) -> tuple[Completion, DoneMessage]:
    """Admit an embedding request, run it on a worker and wait for its vectors. Raises
    NebulaError for any refusal or failure (the edge records it, unless the worker did)."""
    ctx.model = request.model
    ctx.stream = False
    hub = reply_hub()
    await hub.ready()
    payload_holder: list[JobPayload] = []
    # Tokenized once (the gateway may build the job twice), off the event loop: a full 1 MiB
    # body takes the tokenizer about a second, which would stall every other request here.
    named = embedding_model(request.model)
    inputs = await asyncio.to_thread(_token_inputs, named, request) if named else []

    def build_job(key: KeyInfo, model: ModelInfo) -> tuple[bytes, int]:
        spec = embedding_model(model.name)
        if model.kind != ModelKind.EMBEDDING or spec is None:
            raise not_an_embedding_model(model)
        dimensions = _dimensions(spec, request)
        tokens = sum(len(ids) for ids in inputs)
        payload: JobPayload = {
            "id": ctx.request_id,
            "reply_to": hub.channel,
            "key_id": key.id,
            "key_prefix": key.prefix,
            "model": model_payload(model),
            # A generation's fields, unused by an embedding job.
            "prompt_text": "",
            "user_text": "",
            "prompt_tokens": tokens,
            "max_tokens": 0,
            "stop": [],
            "n": 1,
            "seed": None,
            "temperature": 1.0,
            "top_p": 1.0,
            "ignore_eos": False,
            "min_tokens": 0,
            "stream": False,
            "endpoint": ctx.endpoint,
            "client": ctx.client,
            "enqueued_at": time.time(),
            # An embedding makes no completion tokens: what is reserved is what is used.
            "tpm_reserved": tokens if key.tpm_limit else 0,
            "tpm_limit": key.tpm_limit,
            "embedding": {"inputs": inputs, "dimensions": dimensions},
        }
        payload_holder[:] = [payload]
        return celery_message(payload), tokens

    # Listen before enqueueing, so the result cannot be missed.
    queue = hub.open(ctx.request_id)
    try:
        admitted = await gateway_admit(
            ctx, caller=caller, model_name=request.model, build_job=build_job
        )
    except BaseException:
        hub.close(ctx.request_id)
        raise
    completion = Completion(ctx, hub, queue, payload_holder[0], admitted, caller)
    try:
        done = await completion.result()
    finally:
        # Closing a job that ended is free; one still going (the client left, a failure) is
        # cancelled and recorded.
        completion.close()
    return completion, done


def embeddings_body(request: EmbeddingRequest, done: DoneMessage) -> dict[str, Any]:
    """OpenAI's `CreateEmbeddingResponse`: the vectors as floats, or as the base64 of their
    little-endian float32 bytes (which is how the worker sent them)."""
    vectors = done.get("embeddings") or []
    data: list[dict[str, Any]] = []
    for index, encoded in enumerate(vectors):
        vector: str | list[float]
        if request.base64:
            vector = encoded
        else:
            raw = base64.b64decode(encoded)
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = done["usage"]["prompt_tokens"]
    return {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
