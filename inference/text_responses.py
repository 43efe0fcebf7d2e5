"""OpenAI's response shapes for legacy text completions (`/v1/completions`): the whole
`text_completion` object, and its SSE chunks (same object, `text` deltas, then `[DONE]`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.http import HttpResponseBase, StreamingHttpResponse

from inference.completion import Completion
from inference.edge import json_response
from inference.jobs import DoneMessage
from inference.responses import (
    DONE_LINE,
    KEEPALIVE_LINE,
    SYSTEM_FINGERPRINT,
    error_chunk,
    usage_object,
)
from inference.text_schemas import CompletionRequest
from infra.errors import InternalError, NebulaError

logger = logging.getLogger(__name__)


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


async def text_sse_events(
    completion: Completion, request: CompletionRequest
) -> AsyncIterator[bytes]:
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

    try:
        echoes = [chunk(index, echo) for index, echo in enumerate(_echoes(request)) if echo]
        if echoes:
            yield b"".join(echoes)
        async for message in completion.events(ticks=True):
            if message["t"] == "delta":
                entries = dict(message.get("lp") or [])
                parts = [
                    chunk(index, text, entries=entries.get(index))
                    for index, text in message["d"]
                    if text
                ]
                parts += [chunk(index, "", reason) for index, reason in message["f"]]
                if parts:
                    completion.relayed = True
                    yield b"".join(parts)
            elif message["t"] == "done":
                if request.include_usage:
                    usage = usage_object(message["usage"])
                    yield (b"data: " + head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
                yield DONE_LINE
            elif message["t"] == "error":
                error = {
                    "message": message["message"],
                    "type": message.get("type", "server_error"),
                    "param": message.get("param"),
                    "code": message["code"],
                }
                yield b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE_LINE
            elif message["t"] == "tick":
                yield KEEPALIVE_LINE
    except NebulaError as error:
        yield error_chunk(error)
    except Exception:
        # The status line went out long ago: the client still gets a well-formed ending.
        logger.exception("stream %s failed", completion.ctx.request_id)
        yield error_chunk(InternalError("The stream failed on the server. Retry the request."))
    finally:
        completion.close()


async def text_completion_response(
    completion: Completion, request: CompletionRequest
) -> HttpResponseBase:
    """The HTTP answer to an admitted text completion, as `chat_response` is for chat."""
    response: HttpResponseBase
    try:
        if request.stream:
            await completion.wait_started()
            response = StreamingHttpResponse(
                text_sse_events(completion, request), content_type="text/event-stream"
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
        else:
            done = await completion.result()
            completion.close()
            response = json_response(
                text_completion(completion.ctx.request_id, request, done), headers={}
            )
    except NebulaError:
        completion.close()
        raise
    except asyncio.CancelledError:
        completion.close()
        raise
    for name, value in completion.headers.items():
        response[name] = value
    return response
