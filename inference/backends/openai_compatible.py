"""The openai-compatible backend: a job's chat completion relayed to a real engine (vLLM,
SGLang, llama.cpp, Ollama, TGI) and its stream turned into Nebula's worker messages.

An async coroutine with a narrow interface to the run it serves (`RunPort`: tell the web process
the stream started, send a delta, check the job is still wanted), so it can run on any event
loop: today the worker process's background loop (`infra.aio`), one HTTP client and its pooled
connections shared by every job.

Always streams from the engine (with `stream_options.include_usage`, so usage is the engine's
own count) whether or not the client streams: that is how the relay notices a client leaving,
bounds every silence by the read timeout, and measures time to first token. The request goes
to the least-loaded healthy replica (`models_registry.upstreams.replica_pick`); a replica that
fails before the first token reaches the client (refused connection, 5xx, 429, a broken or
garbled stream) is left for the next one; after that, the stream ends with an error chunk.
Errors keep OpenAI's shape and a status that says whose fault it is: the engine's 400 stays a
400 with its message; an engine that cannot be reached is 503 `upstream_unavailable`; never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from inference.jobs import JobPayload
from infra import aio
from models_registry.upstreams import (
    Replica,
    UpstreamTarget,
    describe_http_error,
    replica_mark_down,
    replica_pick,
    replica_release,
    replica_renew,
    replica_switch,
)

# How often the relay checks the job is still wanted while the engine is quiet (a non-streaming
# client, a long prefill, a hung engine) and renews its lease on the replica.
WATCH_INTERVAL = 0.25
# Most of an engine's error body read (it becomes the error message).
MAX_ERROR_BYTES = 65_536
MAX_JSON_BYTES = 16 * 1024 * 1024
RETRYABLE_STATUSES = {429, 500, 502, 503, 504}


@dataclass
class Delta:
    """What one read from the engine adds, per choice index (`DeltaMessage`'s d, f, lp, tc)."""

    texts: list[tuple[int, str]]
    finished: list[tuple[int, str]]
    logprobs: list[tuple[int, list[dict[str, Any]]]]
    tool_calls: list[tuple[int, list[dict[str, Any]]]]


class RunPort(Protocol):
    """What the relay may do to the run it serves (`inference.runner` implements it). Each
    method raises if the job is no longer wanted (cancelled, its web process gone)."""

    async def started(self) -> None: ...

    async def delta(self, delta: Delta) -> None: ...

    async def check(self) -> None: ...


class UpstreamFailure(Exception):
    """The request failed upstream; what the client is told, and its usage record."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type: str = "server_error",
        param: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type
        self.param = param
        self.retryable = retryable


@dataclass
class _Choice:
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0  # token-bearing chunks: the count when the engine reports no usage
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] | None = None


class UpstreamResult:
    """What the engine produced so far. Reads like the simulated `Generation` to the runner."""

    def __init__(self, *, n: int, prompt_tokens: int) -> None:
        self.choices = [_Choice() for _ in range(n)]
        self.estimated_prompt_tokens = prompt_tokens
        self.usage: dict[str, int] | None = None
        self.relayed = False  # has any token reached the client (or been kept for it)?
        self.first_token_at: float | None = None  # Unix time

    def reset(self) -> None:
        self.choices = [_Choice() for _ in self.choices]
        self.usage = None

    def choice(self, index: int) -> _Choice:
        while index >= len(self.choices):
            self.choices.append(_Choice())
        return self.choices[index]

    @property
    def prompt_tokens(self) -> int:
        if self.usage and isinstance(self.usage.get("prompt_tokens"), int):
            return self.usage["prompt_tokens"]
        return self.estimated_prompt_tokens

    @property
    def completion_tokens(self) -> int:
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return sum(choice.tokens for choice in self.choices)

    def texts(self) -> list[str]:
        return [choice.text for choice in self.choices]

    def finish_reasons(self) -> list[str | None]:
        return [choice.finish_reason or "stop" for choice in self.choices]

    def tool_calls(self) -> list[list[dict[str, Any]] | None]:
        return [
            [call for _, call in sorted(choice.tool_calls.items())] or None
            for choice in self.choices
        ]

    def logprobs(self) -> list[list[dict[str, Any]] | None]:
        return [choice.logprobs for choice in self.choices]


# --- the engine's answers ------------------------------------------------------------------------


def _scrub(text: str, target: UpstreamTarget) -> str:
    # An engine's error may quote the credential it refused; it is not passed on.
    return text.replace(target.api_key, "[redacted]") if target.api_key else text


def _error_text(raw: bytes) -> tuple[str, str | None, Any]:
    """(message, param, code) from an engine's error body: OpenAI's shape, vLLM's older
    `{"object": "error", "message"}`, TGI's `{"error": "..."}`, or plain text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:2000], None, None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str):
            return error[:2000], None, None
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or json.dumps(error)
            param = error.get("param") if isinstance(error.get("param"), str) else None
            return str(message)[:2000], param, error.get("code")
    return json.dumps(body)[:2000], None, None


def failure_from_status(status: int, raw: bytes, target: UpstreamTarget) -> UpstreamFailure:
    """An engine's HTTP error as Nebula's: the client's mistakes keep their status and message;
    the engine's own trouble is a 502/503/504 (the client did nothing wrong; never 500)."""
    message, param, code = _error_text(raw)
    message = _scrub(message, target) or f"HTTP {status}"
    upstream_code = code if isinstance(code, str) else None
    if status in (400, 422):
        return UpstreamFailure(
            400,
            upstream_code or "invalid_request",
            message,
            type="invalid_request_error",
            param=param,
        )
    if status == 413:
        return UpstreamFailure(413, "request_too_large", message, type="invalid_request_error")
    if status in (401, 403):
        return UpstreamFailure(
            502,
            "upstream_auth_failed",
            f"The model's engine refused Nebula's credentials (HTTP {status}); an operator "
            "must fix the deployment's upstream API key.",
        )
    if status == 404:
        return UpstreamFailure(
            502,
            "upstream_model_not_found",
            f"The model's engine does not serve '{target.model_name}' (HTTP 404: {message}); "
            "an operator must fix the deployment's upstream model.",
        )
    if status == 429:
        return UpstreamFailure(
            429,
            "upstream_rate_limited",
            f"The model's engine is overloaded: {message}",
            type="requests",
            retryable=True,
        )
    if status == 503:
        return UpstreamFailure(
            503,
            "upstream_unavailable",
            f"The model's engine is unavailable: {message}",
            retryable=True,
        )
    if status == 504:
        return UpstreamFailure(
            504, "upstream_timeout", f"The model's engine timed out: {message}", retryable=True
        )
    if status >= 500:
        return UpstreamFailure(
            502,
            "upstream_error",
            f"The model's engine failed (HTTP {status}): {message}",
            retryable=True,
        )
    return UpstreamFailure(
        400, upstream_code or "invalid_request", message, type="invalid_request_error", param=param
    )


def _bad_response(detail: str) -> UpstreamFailure:
    return UpstreamFailure(
        502,
        "upstream_bad_response",
        f"The model's engine answered something that is not an OpenAI stream ({detail}).",
        retryable=True,
    )


async def _sse_batches(response: httpx.Response) -> Any:
    """The `data:` payloads of an SSE stream, one list per network read: each read's tokens go
    out as one message, so a fast engine costs a publish per read, not per token."""
    pending = b""
    async for chunk in response.aiter_bytes():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        batch = []
        for line in lines:
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                batch.append(line[5:].strip())
        if batch:
            yield batch
    if pending.startswith(b"data:"):
        yield [pending[5:].strip()]


class _Relay:
    def __init__(
        self, job: JobPayload, target: UpstreamTarget, port: RunPort, result: UpstreamResult
    ) -> None:
        self.job = job
        self.target = target
        self.port = port
        self.result = result
        self.replica: Replica | None = None
        self.started = False

    def body(self) -> dict[str, Any]:
        upstream = self.job.get("upstream")
        return {
            **(upstream["body"] if upstream else {}),
            "model": self.target.model_name,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def run(self) -> UpstreamResult:
        route = await replica_pick(self.target, request_id=self.job["id"])
        self.replica = route.candidates[0]
        failure: UpstreamFailure | None = None
        try:
            for replica in route.candidates:
                if replica is not self.replica:
                    await replica_switch(old=self.replica, new=replica, request_id=self.job["id"])
                    self.replica = replica
                try:
                    await self.attempt(replica)
                    return self.result
                except UpstreamFailure as error:
                    if not error.retryable or self.result.relayed:
                        raise
                    failure = error
            assert failure is not None
            raise failure
        finally:
            with contextlib.suppress(Exception):
                await replica_release(self.replica, request_id=self.job["id"])

    async def attempt(self, replica: Replica) -> None:
        if not self.result.relayed:  # what a failed attempt left (a role chunk, usage) goes
            self.result.reset()
        timeout = httpx.Timeout(
            connect=self.target.connect_timeout,
            read=self.target.read_timeout,
            write=self.target.read_timeout,
            pool=self.target.connect_timeout,
        )
        try:
            async with aio.http_client().stream(
                "POST",
                replica.url + "/v1/chat/completions",
                json=self.body(),
                headers=self.target.headers,
                timeout=timeout,
            ) as response:
                if response.status_code != 200:
                    raw = await _read_bounded(response, MAX_ERROR_BYTES)
                    error = failure_from_status(response.status_code, raw, self.target)
                    if response.status_code >= 500:
                        await replica_mark_down(
                            self.target, replica, error=f"answered {response.status_code}"
                        )
                    raise error
                if self.job["stream"] and not self.started:
                    await self.port.started()
                    self.started = True
                if response.headers.get("content-type", "").startswith("application/json"):
                    await self.whole(await _read_bounded(response, MAX_JSON_BYTES))
                    return
                await self.stream(response)
        except httpx.TimeoutException as error:
            if isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout):
                await replica_mark_down(self.target, replica, error=describe_http_error(error))
                raise _unavailable(self.target, error) from None
            # A silent engine: not retried elsewhere (it may just be slow, and the client has
            # waited the whole timeout already).
            raise UpstreamFailure(
                504,
                "upstream_timeout",
                f"The model's engine sent nothing for {self.target.read_timeout:g} seconds.",
            ) from None
        except httpx.ConnectError as error:
            await replica_mark_down(self.target, replica, error=describe_http_error(error))
            raise _unavailable(self.target, error) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
            await replica_mark_down(self.target, replica, error=describe_http_error(error))
            raise UpstreamFailure(
                502,
                "upstream_disconnected",
                "The model's engine broke off the response.",
                retryable=True,
            ) from None
        except httpx.HTTPError as error:  # anything else httpx can meet (a bad URL, TLS)
            await replica_mark_down(self.target, replica, error=describe_http_error(error))
            raise UpstreamFailure(
                502,
                "upstream_error",
                f"The request to the model's engine failed ({describe_http_error(error)}).",
                retryable=True,
            ) from None

    async def stream(self, response: httpx.Response) -> None:
        finished = False
        batches = _sse_batches(response)
        async for batch in batches:
            deltas: dict[int, str] = {}
            ends: list[tuple[int, str]] = []
            logprobs: dict[int, list[dict[str, Any]]] = {}
            calls: dict[int, list[dict[str, Any]]] = {}
            for data in batch:
                if data == b"[DONE]":
                    finished = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise _bad_response("a chunk that is not JSON") from None
                self.apply(chunk, deltas, ends, logprobs, calls)
            if self.job["stream"] and (deltas or ends or logprobs or calls):
                await self.port.delta(
                    Delta(list(deltas.items()), ends, list(logprobs.items()), list(calls.items()))
                )
            if finished:
                # Read the body to its end, so the connection goes back to the pool instead of
                # being reset (an engine that keeps talking after [DONE] gets a second).
                with contextlib.suppress(TimeoutError, httpx.HTTPError):
                    async with asyncio.timeout(1.0):
                        async for _ in batches:
                            pass
                return
        if not finished:
            if self.result.relayed:
                raise UpstreamFailure(
                    502, "upstream_disconnected", "The model's engine broke off the response."
                )
            raise _bad_response("the stream ended without [DONE]")

    def apply(
        self,
        chunk: Any,
        deltas: dict[int, str],
        ends: list[tuple[int, str]],
        logprobs: dict[int, list[dict[str, Any]]],
        calls: dict[int, list[dict[str, Any]]],
    ) -> None:
        """One chunk of the engine's stream into the result and this batch's message."""
        if not isinstance(chunk, dict):
            raise _bad_response("a chunk that is not a JSON object")
        if "error" in chunk:  # an engine that fails mid-stream says so in a chunk
            raw = json.dumps(chunk).encode()
            error = failure_from_status(502, raw, self.target)
            error.retryable = not self.result.relayed
            raise error
        if isinstance(chunk.get("usage"), dict):
            self.result.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise _bad_response("a chunk without choices")
        for item in choices:
            if not isinstance(item, dict) or not isinstance(item.get("index", 0), int):
                raise _bad_response("a malformed choice")
            index = item.get("index", 0)
            if not 0 <= index < 128:
                raise _bad_response("a choice index out of range")
            choice = self.result.choice(index)
            delta = item.get("delta") or {}
            if not isinstance(delta, dict):
                raise _bad_response("a malformed delta")
            text = delta.get("content")
            bearing = False
            if isinstance(text, str) and text:
                choice.text += text
                deltas[index] = deltas.get(index, "") + text
                bearing = True
            tool_calls = delta.get("tool_calls")
            function_call = delta.get("function_call")
            if isinstance(function_call, dict) and function_call and not tool_calls:
                # The legacy functions API: its one call travels as call 0 (the web side
                # renders it back as `function_call`).
                tool_calls = [{"index": 0, "function": function_call}]
            if isinstance(tool_calls, list) and tool_calls:
                calls.setdefault(index, []).extend(tool_calls)
                _merge_tool_calls(choice, tool_calls)
                bearing = True
            content = (item.get("logprobs") or {}).get("content")
            if isinstance(content, list) and content:
                logprobs.setdefault(index, []).extend(content)
                choice.logprobs = (choice.logprobs or []) + content
            if bearing:
                choice.tokens += 1
                if not self.result.relayed:
                    self.result.first_token_at = time.time()
                self.result.relayed = True
            reason = item.get("finish_reason")
            if isinstance(reason, str) and reason:
                choice.finish_reason = reason
                ends.append((index, reason))

    async def whole(self, raw: bytes) -> None:
        """An engine that answered a streaming request with one JSON completion anyway."""
        try:
            body = json.loads(raw)
            choices = [
                {
                    "index": choice.get("index", 0),
                    "delta": choice.get("message") or {},
                    "logprobs": choice.get("logprobs"),
                    "finish_reason": choice.get("finish_reason"),
                }
                for choice in body["choices"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _bad_response("a body that is not a chat completion") from None
        deltas: dict[int, str] = {}
        ends: list[tuple[int, str]] = []
        logprobs: dict[int, list[dict[str, Any]]] = {}
        calls: dict[int, list[dict[str, Any]]] = {}
        self.apply({"choices": choices, "usage": body.get("usage")}, deltas, ends, logprobs, calls)
        if self.job["stream"]:
            await self.port.delta(
                Delta(list(deltas.items()), ends, list(logprobs.items()), list(calls.items()))
            )


def _merge_tool_calls(choice: _Choice, parts: list[Any]) -> None:
    """Streamed tool-call fragments into whole calls, as OpenAI's clients assemble them."""
    for part in parts:
        if not isinstance(part, dict):
            raise _bad_response("a malformed tool call")
        index = part.get("index", len(choice.tool_calls))
        call = choice.tool_calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if part.get("id"):
            call["id"] = part["id"]
        if part.get("type"):
            call["type"] = part["type"]
        function = part.get("function") or {}
        if function.get("name"):
            call["function"]["name"] += function["name"]
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]


def _unavailable(target: UpstreamTarget, error: BaseException) -> UpstreamFailure:
    return UpstreamFailure(
        503,
        "upstream_unavailable",
        f"The engine serving '{target.name}' cannot be reached "
        f"({describe_http_error(error)}). Retry shortly.",
        retryable=True,
    )


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]


async def relay_chat(
    job: JobPayload, *, target: UpstreamTarget, port: RunPort, result: UpstreamResult
) -> UpstreamResult:
    """Serve `job` from `target`'s engine into `result`, telling `port` as it goes.

    Raises `UpstreamFailure` for an answer the client gets as an error; whatever `port` raises
    (the job is no longer wanted) stops the relay and closes the engine's request, which is how
    the engine learns to stop generating.
    """
    relay = _Relay(job, target, port, result)
    main = asyncio.ensure_future(relay.run())
    try:
        while True:
            done, _ = await asyncio.wait({main}, timeout=WATCH_INTERVAL)
            if done:
                return main.result()
            await port.check()
            if relay.replica is not None:
                await replica_renew(relay.replica, request_id=job["id"])
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(BaseException):
                await main
