"""OpenAI's response shapes for chat completions (the whole object, and SSE chunks), and what
every endpoint's answer shares: the stream relay and the response of an admitted job."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from django.http import HttpResponseBase, StreamingHttpResponse

from inference.completion import Completion
from inference.edge import json_response
from inference.jobs import DeltaMessage, DoneMessage, Usage
from inference.schemas import ChatCompletionRequest
from infra.errors import InternalError, NebulaError
from models_registry.catalog import ModelInfo

logger = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = "fp_nebula_sim_v1"
DONE_LINE = b"data: [DONE]\n\n"
KEEPALIVE_LINE = b": keep-alive\n\n"


def completion_id(request_id: str) -> str:
    return "chatcmpl-" + request_id.removeprefix("req_")


def model_object(model: ModelInfo) -> dict[str, object]:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
    }


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        **usage,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _logprobs(content: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return {"content": content, "refusal": None} if content else None


def _message(
    text: str, tool_calls: list[dict[str, Any]] | None, *, legacy: bool = False
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if tool_calls and not text else text,
        "refusal": None,
        "annotations": [],
    }
    if tool_calls and legacy:
        # The deprecated `functions` API answers with one `function_call`, as OpenAI does.
        message["function_call"] = tool_calls[0]["function"]
    elif tool_calls:
        message["tool_calls"] = tool_calls
    return message


def tool_call_deltas(
    fragments: list[dict[str, Any]], *, legacy: bool = False
) -> list[dict[str, Any]]:
    """`delta` bodies for a choice's tool-call fragments: a new delta whenever a call's index
    comes again, so a call's first delta (id, type, name, empty arguments) is its own, then its
    argument pieces, as OpenAI streams them; `function_call` deltas for the legacy API."""
    deltas: list[dict[str, Any]] = []
    seen: set[int] = set()
    for fragment in fragments:
        if legacy:
            deltas.append({"function_call": fragment["function"]})
            continue
        if not deltas or fragment["index"] in seen:
            deltas.append({"tool_calls": []})
            seen = set()
        deltas[-1]["tool_calls"].append(fragment)
        seen.add(fragment["index"])
    return deltas


def chat_completion(
    request_id: str, model: str, done: DoneMessage, *, legacy_functions: bool = False
) -> dict[str, Any]:
    texts = done.get("texts") or []
    calls = done.get("tool_calls") or [None] * len(texts)
    logprobs = done.get("logprobs") or [None] * len(texts)
    return {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": "default",
        "choices": [
            {
                "index": index,
                "message": _message(text, calls[index], legacy=legacy_functions),
                "logprobs": _logprobs(logprobs[index]),
                "finish_reason": done["finish"][index] or "stop",
            }
            for index, text in enumerate(texts)
        ],
        "usage": usage_object(done["usage"]),
    }


def error_chunk(error: NebulaError) -> bytes:
    return b"data: " + orjson.dumps(error.body()) + b"\n\n" + DONE_LINE


def sse_events(completion: Completion, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
    """The stream as OpenAI sends it: role chunks, content chunks, finish chunks, usage, [DONE].

    One id and `created` for the whole stream; `finish_reason` only in each choice's last chunk;
    with `stream_options.include_usage`, `usage: null` on every chunk and one final chunk with
    empty `choices` and the totals. Errors after the first byte become an error chunk + [DONE].
    """
    head = (
        b'{"id":'
        + orjson.dumps(completion_id(completion.ctx.request_id))
        + b',"object":"chat.completion.chunk","created":'
        + str(int(time.time())).encode()
        + b',"model":'
        + orjson.dumps(request.model)
        + b',"system_fingerprint":"'
        + SYSTEM_FINGERPRINT.encode()
        + b'","service_tier":"default","choices":['
    )
    tail = b'],"usage":null}\n\n' if request.include_usage else b"]}\n\n"
    legacy = request.functions is not None

    def chunk(
        index: int,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> bytes:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": _logprobs(logprobs),
            "finish_reason": finish,
        }
        return b"data: " + head + orjson.dumps(choice) + tail

    def deltas(message: DeltaMessage) -> list[bytes]:
        texts = dict(message["d"])
        calls = dict(message.get("tc") or [])
        logprobs = dict(message.get("lp") or [])
        parts = []
        for index in dict.fromkeys([*texts, *calls, *logprobs]):
            delta: dict[str, Any] = {"content": texts[index]} if texts.get(index) else {}
            more: list[dict[str, Any]] = []
            if index in calls:
                first, *more = tool_call_deltas(calls[index], legacy=legacy) or [{}]
                delta.update(first)
            if delta or index in logprobs:
                parts.append(chunk(index, delta, logprobs=logprobs.get(index)))
            parts += [chunk(index, extra) for extra in more]
        return parts + [chunk(index, {}, reason) for index, reason in message["f"]]

    roles = [
        chunk(index, {"role": "assistant", "content": "", "refusal": None})
        for index in range(request.n or 1)
    ]
    usage = head if request.include_usage else None
    return relay_events(completion, first=roles, deltas=deltas, usage_head=usage)


async def relay_events(
    completion: Completion,
    *,
    first: list[bytes],
    deltas: Callable[[DeltaMessage], list[bytes]],
    usage_head: bytes | None,
) -> AsyncIterator[bytes]:
    """A stream's SSE lines, for any endpoint: `first`, then each delta message's chunks (as
    `deltas` renders them), then the usage chunk (`usage_head`: the chunk's JSON up to its
    choices, None: no usage chunk) and [DONE]; a worker's error or one on the way becomes an
    error chunk + [DONE], and a keep-alive comment goes out while nothing happens."""
    out: list[bytes] = list(first)
    try:
        if out:
            yield b"".join(out)
            out.clear()
        async for message in completion.events(ticks=True):
            if message["t"] == "delta":
                parts = deltas(message)
                if parts:
                    completion.relayed = True
                    out += parts
                # Under a burst the worker's messages queue up faster than this process writes:
                # what is already here goes out in one write (one transport call, one TCP send)
                # instead of one per message.
                if out and not completion.pending():
                    yield b"".join(out)
                    out.clear()
            elif message["t"] == "done":
                if usage_head is not None:
                    usage = orjson.dumps(usage_object(message["usage"]))
                    out.append(b"data: " + usage_head + b'],"usage":' + usage + b"}\n\n")
                out.append(DONE_LINE)
                yield b"".join(out)
            elif message["t"] == "error":
                error = {
                    "message": message["message"],
                    "type": message.get("type", "server_error"),
                    "param": message.get("param"),
                    "code": message["code"],
                }
                out.append(b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE_LINE)
                yield b"".join(out)
            elif message["t"] == "tick":
                yield KEEPALIVE_LINE
    except NebulaError as error:
        yield b"".join(out) + error_chunk(error)
    except Exception:
        # The status line went out long ago: the client still gets a well-formed ending.
        logger.exception("stream %s failed", completion.ctx.request_id)
        failed = InternalError("The stream failed on the server. Retry the request.")
        yield b"".join(out) + error_chunk(failed)
    finally:
        completion.close()


async def completion_response(
    completion: Completion,
    *,
    stream: bool,
    events: Callable[[], AsyncIterator[bytes]],
    body: Callable[[DoneMessage], dict[str, Any]],
) -> HttpResponseBase:
    """The HTTP answer to an admitted job of any endpoint: its stream (`events`) once a worker
    has the job, or its whole body (`body` of the done message). A refusal on the way (a full
    fleet, a lost worker) closes the job and is raised for the edge to record and render."""
    response: HttpResponseBase
    try:
        if stream:
            # Hold the response until a worker has the job, so a full queue still gets a 503.
            await completion.wait_started()
            response = StreamingHttpResponse(events(), content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
        else:
            done = await completion.result()
            completion.close()
            response = json_response(body(done), headers={})
    except NebulaError:
        completion.close()
        raise
    except asyncio.CancelledError:
        completion.close()  # the client went away
        raise
    for name, value in completion.headers.items():
        response[name] = value
    return response


async def chat_response(completion: Completion, request: ChatCompletionRequest) -> HttpResponseBase:
    """The HTTP answer to an admitted chat completion: chunks, or the whole completion."""
    return await completion_response(
        completion,
        stream=bool(request.stream),
        events=lambda: sse_events(completion, request),
        body=lambda done: chat_completion(
            completion.ctx.request_id,
            request.model,
            done,
            legacy_functions=request.functions is not None,
        ),
    )
