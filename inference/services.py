"""Chat completions, web side: check the request, build its job, admit and enqueue it.

Both the HTTP endpoint and the dashboard playground's websocket consumer call
`completion_submit` and then read the `Completion` it returns, so they share the rate limit, the
usage record and every failure rule.

Who records usage: the gateway refuses (401/400/403/404/429/503) and the edge records it; a job
that ran is recorded by its worker; a job that never ran (timed out in the queue, cancelled
before it started, lost with its worker) is recorded by the web process. See `inference.jobs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from inference.completion import Completion
from inference.embeddings import embedding_only
from inference.engine import count_chat_tokens, count_tokens
from inference.gateway import Caller, RequestContext, gateway_admit
from inference.hub import reply_hub
from inference.jobs import JobPayload, ToolsJob, celery_message, model_payload
from inference.schemas import ChatCompletionRequest, ResponseFormatJsonSchema
from inference.text_schemas import CompletionRequest
from inference.toolcalls import tools_check, tools_prompt_tokens
from infra.errors import InvalidRequest, NotFound
from keys.auth import KeyInfo
from models_registry.catalog import ModelInfo, catalog_snapshot
from models_registry.models import Backend

# What an engine gets of a request besides what the relay sets (model, stream, stream_options).
_NOT_FORWARDED = {"model", "stream", "stream_options", "max_completion_tokens"}


def upstream_body(request: ChatCompletionRequest) -> dict[str, Any]:
    """The request's parameters for an engine: what the client sent and Nebula accepted, as
    the client spelled it (an engine may take parameters the simulated engine does not)."""
    body = request.model_dump(mode="json", exclude_none=True, exclude=_NOT_FORWARDED, by_alias=True)
    # Every engine reads max_tokens; not all know OpenAI's newer name for it.
    if request.token_limit is not None:
        body["max_tokens"] = request.token_limit
    return body


# Reserved against a token limit when the request sets no max_tokens (settled at the end).
DEFAULT_COMPLETION_RESERVE = 256


def _check_size(request: ChatCompletionRequest) -> tuple[str, str, int]:
    """Flatten the conversation: (prompt text, last user message, prompt tokens)."""
    if len(request.messages) > settings.NEBULA_MAX_MESSAGES:
        raise InvalidRequest(
            f"Too many messages: {len(request.messages)} (at most {settings.NEBULA_MAX_MESSAGES}).",
            param="messages",
            code="too_many_messages",
        )
    parts: list[tuple[str, str, str | None]] = []
    user_text = ""
    for index, message in enumerate(request.messages):
        text = message.text()
        if len(text) > settings.NEBULA_MAX_MESSAGE_CHARS:
            raise InvalidRequest(
                f"messages[{index}] is {len(text)} characters long (at most "
                f"{settings.NEBULA_MAX_MESSAGE_CHARS}).",
                param=f"messages[{index}].content",
                code="message_too_long",
            )
        for part in getattr(message, "content", None) or []:
            if not isinstance(part, str) and part.type in {"image_url", "input_audio", "file"}:
                raise InvalidRequest(
                    f"Nebula's models read text only; messages[{index}] has a '{part.type}' part.",
                    param=f"messages[{index}].content",
                    code="unsupported_content",
                )
        parts.append((message.role, text, message.name))
        if message.role == "user":
            user_text = text
    prompt = "\n".join(f"{role}: {text}" for role, text, _ in parts)
    return prompt, user_text, count_chat_tokens(parts)


async def completion_submit(
    ctx: RequestContext, *, caller: Caller, request: ChatCompletionRequest
) -> Completion:
    """Admit a chat completion and enqueue it. Raises NebulaError for any refusal."""
    prompt, user_text, prompt_tokens = _check_size(request)
    tools = tools_check(request)
    prompt_tokens += tools_prompt_tokens(tools)
    return await _job_submit(
        ctx,
        caller=caller,
        request=request,
        job=_JobText(prompt, user_text, prompt_tokens, prompt_tokens, "messages"),
        ignore_eos=bool(request.ignore_eos),
        min_tokens=request.min_tokens or 0,
        tools=tools,
        output=_output(request),
        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        upstream=lambda: upstream_body(request),
    )


def _output(request: ChatCompletionRequest) -> tuple[str, dict[str, Any] | None] | None:
    """What the engine must produce instead of text (response_format), with its schema."""
    if request.response_format is None or request.output_format == "text":
        return None
    if isinstance(request.response_format, ResponseFormatJsonSchema):
        return request.output_format, request.response_format.json_schema.schema_
    return request.output_format, None


async def text_completion_submit(
    ctx: RequestContext, *, caller: Caller, request: CompletionRequest
) -> Completion:
    """Admit a legacy text completion (`/v1/completions`) and enqueue it: one job whose
    choices are `n` per prompt, in prompt order. Raises NebulaError for any refusal."""
    prompts: list[tuple[str, int]] = []
    for index, prompt in enumerate(request.prompts):
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        if len(text) > settings.NEBULA_MAX_MESSAGE_CHARS:
            raise InvalidRequest(
                f"The prompt is {len(text)} characters long (at most "
                f"{settings.NEBULA_MAX_MESSAGE_CHARS}).",
                param=f"prompt[{index}]" if not isinstance(request.prompt, str) else "prompt",
                code="message_too_long",
            )
        # Token ids count as themselves; there is no vocabulary to read them back with.
        prompts.append((text, count_tokens(text) if isinstance(prompt, str) else len(prompt)))
    if len(prompts) > settings.NEBULA_MAX_MESSAGES:
        raise InvalidRequest(
            f"Too many prompts: {len(prompts)} (at most {settings.NEBULA_MAX_MESSAGES}).",
            param="prompt",
            code="too_many_messages",
        )
    n = request.n or 1
    return await _job_submit(
        ctx,
        caller=caller,
        request=request,
        job=_JobText(
            prompt="\n".join(text for text, _ in prompts),
            user_text=prompts[-1][0],
            prompt_tokens=sum(tokens for _, tokens in prompts),
            context_tokens=max(tokens for _, tokens in prompts),
            param="prompt",
        ),
        n=n * len(prompts),
        prompts=[prompt for prompt in prompts for _ in range(n)],
        logprobs=request.logprobs,
    )


class _Sampling(Protocol):
    """What a job takes of a request (chat or text completion)."""

    model: str
    seed: int | None
    stream: bool | None

    @property
    def n(self) -> int | None: ...

    @property
    def temperature(self) -> float | None: ...

    @property
    def top_p(self) -> float | None: ...

    @property
    def token_limit(self) -> int | None: ...

    @property
    def stop_sequences(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class _JobText:
    prompt: str  # the whole prompt, flattened: seeds the generator
    user_text: str  # gives the reply its topic
    prompt_tokens: int  # billed
    context_tokens: int  # must fit the context with the completion (the longest prompt)
    param: str  # what a too-long prompt is called


async def _job_submit(
    ctx: RequestContext,
    *,
    caller: Caller,
    request: _Sampling,
    job: _JobText,
    n: int | None = None,
    ignore_eos: bool = False,
    min_tokens: int = 0,
    tools: ToolsJob | None = None,
    prompts: list[tuple[str, int]] | None = None,
    output: tuple[str, dict[str, Any] | None] | None = None,
    logprobs: int | None = None,
    upstream: Callable[[], dict[str, Any]] | None = None,
) -> Completion:
    ctx.model = request.model
    ctx.stream = bool(request.stream)
    prompt, user_text, prompt_tokens = job.prompt, job.user_text, job.prompt_tokens
    hub = reply_hub()
    await hub.ready()
    n = n or request.n or 1
    payload_holder: list[JobPayload] = []

    def build_job(key: KeyInfo, model: ModelInfo) -> tuple[bytes, int]:
        wrong_kind = embedding_only(model)
        if wrong_kind is not None:
            raise wrong_kind
        if n > model.max_concurrent_seqs:
            # Each choice is a sequence, and a request's sequences run on one replica.
            raise InvalidRequest(
                f"n={n} needs {n} concurrent sequences, but '{model.name}' runs at most "
                f"{model.max_concurrent_seqs} per replica.",
                param="n",
                code="invalid_value",
            )
        limit = request.token_limit
        context_tokens = job.context_tokens
        if (
            context_tokens + (limit or 0) > model.context_length
            or context_tokens >= model.context_length
        ):
            raise InvalidRequest(
                f"This model's maximum context length is {model.context_length} tokens. However, "
                f"you requested {context_tokens + (limit or 0)} tokens ({context_tokens} in the "
                f"{job.param}, {limit or 0} in the completion). Reduce the length of the "
                f"{job.param} or the completion.",
                param=job.param,
                code="context_length_exceeded",
            )
        if model.backend == Backend.OPENAI_COMPATIBLE and upstream is None:
            raise InvalidRequest(
                f"'{model.name}' is served by an external engine, which Nebula relays chat "
                "completions to only: use /v1/chat/completions.",
                param="model",
                code="unsupported_endpoint",
            )
        room = model.context_length - context_tokens
        ctx.worst_case_tokens = (prompt_tokens, n * (limit if limit is not None else room))
        reserve = prompt_tokens + n * (
            limit if limit is not None else min(room, DEFAULT_COMPLETION_RESERVE)
        )
        payload: JobPayload = {
            "id": ctx.request_id,
            "reply_to": hub.channel,
            "key_id": key.id,
            "key_prefix": key.prefix,
            "model": model_payload(model),
            "prompt_text": prompt,
            "user_text": user_text,
            "prompt_tokens": prompt_tokens,
            "max_tokens": limit,
            "stop": list(request.stop_sequences),
            "n": n,
            "seed": request.seed,
            "temperature": 1.0 if request.temperature is None else request.temperature,
            "top_p": 1.0 if request.top_p is None else request.top_p,
            "ignore_eos": ignore_eos,
            "min_tokens": min_tokens,
            "stream": ctx.stream,
            "endpoint": ctx.endpoint,
            "client": ctx.client,
            "enqueued_at": time.time(),
            "tpm_reserved": reserve if key.tpm_limit else 0,
            "tpm_limit": key.tpm_limit,
        }
        if tools is not None:
            payload["tools"] = tools
        if prompts is not None:
            payload["prompts"] = prompts
        if output is not None:
            payload["response_format"], payload["json_schema"] = output
        if logprobs is not None:
            payload["logprobs"] = logprobs
        if model.backend == Backend.OPENAI_COMPATIBLE and upstream is not None:
            payload["model"]["backend"] = model.backend
            payload["upstream"] = {"deployment_id": model.pk, "body": upstream()}
        payload_holder[:] = [payload]
        return celery_message(payload), reserve

    # Listen before enqueueing, so not even the first token can be missed.
    queue = hub.open(ctx.request_id)
    try:
        admitted = await gateway_admit(
            ctx, caller=caller, model_name=request.model, build_job=build_job
        )
    except BaseException:
        hub.close(ctx.request_id)
        raise
    return Completion(ctx, hub, queue, payload_holder[0], admitted, caller)


async def models_visible(
    ctx: RequestContext, *, caller: Caller
) -> tuple[list[ModelInfo], dict[str, str]]:
    """The ready models `caller`'s key may use, by name, and the rate-limit headers: listing
    models counts against the key's request limit, as any /v1 request does."""
    admitted = await gateway_admit(ctx, caller=caller)
    catalog, _ = await catalog_snapshot()
    models = [
        model
        for model in sorted(catalog.values(), key=lambda m: m.name)
        if model.is_ready and admitted.key.may_use(model.name)
    ]
    headers = admitted.admission.headers()
    if ctx.model:
        found = [model for model in models if model.name == ctx.model]
        if not found:
            error = NotFound(
                f"The model '{ctx.model}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
            error.headers.update(headers)
            raise error
        models = found
    await ctx.record(status=200)
    return models, headers


async def model_find(
    ctx: RequestContext, *, caller: Caller, model_id: str
) -> tuple[ModelInfo, dict[str, str]]:
    """One model `caller`'s key may use, or 404 (also for models it may not see)."""
    ctx.model = model_id
    models, headers = await models_visible(ctx, caller=caller)
    return models[0], headers
