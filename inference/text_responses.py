"""OpenAI's response shapes for legacy text completions (`/v1/completions`): the whole
`text_completion` object, and its SSE chunks (same object, `text` deltas, then `[DONE]`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.http import HttpResponseBase

from inference.completion import Completion
from inference.jobs import DeltaMessage, DoneMessage
from inference.responses import (
    SYSTEM_FINGERPRINT,
    completion_response,
    relay_events,
    usage_object,
)
from inference.text_schemas import CompletionRequest


def text_completion_id(request_id: str) -> str:
    return "cmpl-" + request_id.removeprefix("req_")


def _echoes(request: CompletionRequest) -> list[str]:
    """What each choice starts with: its prompt when `echo` is set (choices are n per prompt)."""
    n = request.n or 1
    prompts = request.prompts
    return [
        prompt if request.echo and isinstance(prompt, str) else ""
        for prompt in prompts
        for _ in range(n)
    ]


def legacy_logprobs(entries: list[dict[str, Any]] | None, offset: int) -> dict[str, Any] | None:
    """Chat-style logprob entries (the engine's) in the legacy shape: parallel lists of the
    tokens, their logprobs, each one's alternatives as {token: logprob}, and where each token
    starts in the choice's text (from `offset`, what came before it)."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [entry["token"] for entry in entries],
        "token_logprobs": [entry["logprob"] for entry in entries],
        "top_logprobs": [
            {alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]} for entry in entries
        ],
        "text_offset": offsets,
    }


def text_completion(
    request_id: str, request: CompletionRequest, done: DoneMessage
) -> dict[str, Any]:
    echoes = _echoes(request)
    texts = done.get("texts") or []
    logprobs = done.get("logprobs") or [None] * len(texts)
    return {
        "id": text_completion_id(request_id),
        "object": "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "text": echoes[index] + text,
                "index": index,
                "logprobs": legacy_logprobs(logprobs[index], len(echoes[index])),
                "finish_reason": done["finish"][index] or "stop",
            }
            for index, text in enumerate(texts)
        ],
        "usage": usage_object(done["usage"]),
    }


def text_sse_events(completion: Completion, request: CompletionRequest) -> AsyncIterator[bytes]:
    """The stream as OpenAI sends it: text chunks per choice, each choice's finish in a chunk of
    its own, with `stream_options.include_usage` one last chunk with no choices and the totals,
    then [DONE]. Errors after the first byte become an error chunk + [DONE]."""
    head = (
        b'{"id":'
        + orjson.dumps(text_completion_id(completion.ctx.request_id))
        + b',"object":"text_completion","created":'
        + str(int(time.time())).encode()
        + b',"model":'
        + orjson.dumps(request.model)
        + b',"system_fingerprint":"'
        + SYSTEM_FINGERPRINT.encode()
        + b'","choices":['
    )
    # OpenAI's published schema has no null usage (the chunk shares the whole object's shape):
    # chunks carry none until the last, which carries only usage.
    tail = b"]}\n\n"

    # Where each choice's next token starts in its text (its echo chunk included).
    offsets = dict.fromkeys(range(len(_echoes(request))), 0)

    def chunk(
        index: int,
        text: str,
        finish: str | None = None,
        entries: list[dict[str, Any]] | None = None,
    ) -> bytes:
        logprobs = legacy_logprobs(entries, offsets[index]) if entries is not None else None
        offsets[index] += len(text)
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
        return b"data: " + head + orjson.dumps(choice) + tail

    def deltas(message: DeltaMessage) -> list[bytes]:
        entries = dict(message.get("lp") or [])
        parts = [
            chunk(index, text, entries=entries.get(index)) for index, text in message["d"] if text
        ]
        return parts + [chunk(index, "", reason) for index, reason in message["f"]]

    echoes = [chunk(index, echo) for index, echo in enumerate(_echoes(request)) if echo]
    usage = head if request.include_usage else None
    return relay_events(completion, first=echoes, deltas=deltas, usage_head=usage)


async def text_completion_response(
    completion: Completion, request: CompletionRequest
) -> HttpResponseBase:
    """The HTTP answer to an admitted text completion, as `chat_response` is for chat."""
    return await completion_response(
        completion,
        stream=bool(request.stream),
        events=lambda: text_sse_events(completion, request),
        body=lambda done: text_completion(completion.ctx.request_id, request, done),
    )
