"""Chat completions, web side: admit a request, hand it to a worker, relay what comes back.

Both the HTTP endpoint and the dashboard playground's websocket consumer call
`completion_submit` and then read the `Completion` it returns, so they share the rate limit, the
usage record and every failure rule.

Who records usage: the gateway refuses (401/400/403/404/429/503) and the web process records it;
a job that ran is recorded by its worker; a job that never ran (timed out in the queue, cancelled
before it started, lost with its worker) is recorded by the web process. See `inference.jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from inference.engine import count_chat_tokens
from inference.hub import ReplyHub, reply_hub
from inference.jobs import (
    ABANDON,
    CANCEL,
    INSPECT,
    JOB_TTL_SECONDS,
    QUEUE,
    TAKE_OVER,
    DoneMessage,
    JobPayload,
    celery_message,
    job_key,
)
from inference.schemas import ChatCompletionRequest
from inference.slots import slots_key
from inference.workers import WORKERS_KEY
from keys.auth import INVALID_KEY_MESSAGE, KeyInfo, key_info_for_id, key_info_for_secret
from keys.ratelimit import Admission, admit
from models_registry.catalog import ModelInfo, catalog_snapshot
from nebula_site.epoch import EPOCH_KEY, current_epoch, observe_epoch
from nebula_site.errors import (
    AuthenticationFailed,
    InvalidRequest,
    NebulaError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)
from nebula_site.redis_client import REDIS_ERRORS, get_async_redis
from telemetry.ledger import usage_event, usage_record

logger = logging.getLogger(__name__)

# Silence after which the web process looks at the job: is its worker alive, is it overdue?
WATCHDOG_SECONDS = 1.0
# A job whose worker died before any token reached the client is resent this many times.
MAX_ATTEMPTS = 3
# While a stream is quiet this long, an SSE comment keeps proxies from closing it.
KEEPALIVE_SECONDS = 15.0
# Reserved against a token limit when the request sets no max_tokens (settled at the end).
DEFAULT_COMPLETION_RESERVE = 256
_background: set[asyncio.Task[Any]] = set()


def _in_background(coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


@dataclass
class RequestContext:
    """What we know about a request so far; enough to write its usage record at any point."""

    request_id: str
    endpoint: str
    client: str = "api"
    stream: bool = False
    started: float = field(default_factory=time.time)
    key: KeyInfo | None = None
    model: str = ""

    async def record(
        self,
        *,
        status: int,
        error_code: str = "",
        finish_reason: str = "",
        **extra: Any,
    ) -> None:
        """Write the record of a request no model served (so no tokens are billed)."""
        await usage_record(
            usage_event(
                request_id=self.request_id,
                key_id=self.key.id if self.key else None,
                key_prefix=self.key.prefix if self.key else "",
                model=self.model,
                endpoint=self.endpoint,
                client=self.client,
                status=status,
                error_code=error_code,
                finish_reason=finish_reason,
                stream=self.stream,
                latency_ms=(time.time() - self.started) * 1000,
                created_at=self.started,
                **extra,
            )
        )

    async def record_refusal(self, error: NebulaError) -> None:
        if not getattr(error, "recorded", False):
            await self.record(
                status=error.status, error_code=error.code or "", finish_reason="error"
            )


# --- Gateway ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyById:
    """A credential from the dashboard: the key's id, on behalf of its logged-in owner."""

    key_id: int
    user_id: int


Credential = str | KeyById
JobBuilder = Callable[[KeyInfo, ModelInfo], tuple[bytes, int]]


@dataclass(frozen=True)
class Admitted:
    key: KeyInfo
    model: ModelInfo | None
    admission: Admission


async def _resolve_key(credential: Credential) -> tuple[KeyInfo | None, str | None]:
    if isinstance(credential, str):
        return await key_info_for_secret(credential)
    epoch = current_epoch()
    info = await key_info_for_id(credential.key_id)
    if info is not None and info.owner_id != credential.user_id:
        info = None
    return info, epoch


async def _epoch_moved(client: Any, epoch: str | None) -> bool:
    """True if the caches that produced a refusal are out of date (then refresh and retry)."""
    current = await client.get(EPOCH_KEY)
    if current is None or current.decode() != epoch:
        observe_epoch(current.decode() if current else "")
        return True
    return False


async def gateway_admit(
    ctx: RequestContext,
    *,
    credential: Credential,
    model_name: str | None = None,
    build_job: JobBuilder | None = None,
) -> Admitted:
    """Authenticate, check the model, rate-limit and (with `build_job`) enqueue: one Redis trip.

    Answers come from this process's caches; the admission script confirms they are current
    (the epoch), and on a mismatch the caches are dropped and the whole check runs again.
    """
    client = get_async_redis()
    try:
        for _ in range(4):
            key, key_epoch = await _resolve_key(credential)
            if key is None:
                raise AuthenticationFailed(INVALID_KEY_MESSAGE)
            ctx.key = key
            try:
                key.check_usable()
            except AuthenticationFailed:
                if await _epoch_moved(client, key_epoch):
                    continue
                raise
            refusal: NebulaError | None = None
            model: ModelInfo | None = None
            epoch = key_epoch
            if model_name is not None:
                catalog, catalog_epoch = await catalog_snapshot()
                epoch = key_epoch if key_epoch == catalog_epoch else None
                model = catalog.get(model_name)
                if model is None or not model.is_ready:
                    state = f" (it is {model.state})" if model is not None else ""
                    refusal = NotFound(
                        f"The model '{model_name}' does not exist or is not ready{state}.",
                        param="model",
                        code="model_not_found",
                    )
                elif not key.may_use(model_name):
                    refusal = PermissionDenied(
                        f"This API key is not allowed to use the model '{model_name}'.",
                        param="model",
                        code="model_not_allowed",
                    )
            message, cost = b"", 0
            if refusal is None and build_job is not None and model is not None:
                message, cost = build_job(key, model)
                if key.tpm_limit and cost > key.tpm_limit:
                    raise RateLimited(
                        f"Request too large: it may use up to {cost} tokens, but this key allows "
                        f"{key.tpm_limit} tokens per minute. Lower max_tokens or shorten the "
                        "messages.",
                        code="tokens_exceeded",
                    )
            admission = await admit(
                client,
                key_id=key.id,
                expected_epoch=epoch,
                rpm_limit=key.rpm_limit,
                tpm_limit=key.tpm_limit if message else None,
                token_cost=cost,
                worker_ttl_ms=int(settings.NEBULA_WORKER_TTL * 1000) if message else 0,
                workers_key=WORKERS_KEY,
                queue=QUEUE,
                message=message,
            )
            if admission.status == "stale":
                observe_epoch(admission.epoch)
                continue
            if admission.status == "no_workers":
                raise ServiceUnavailable(
                    "No inference worker is running. Retry shortly.", code="no_workers_available"
                )
            if admission.status == "limited":
                raise RateLimited(
                    "Rate limit reached for this API key "
                    f"({key.rpm_limit} requests per minute"
                    + (f", {key.tpm_limit} tokens per minute" if key.tpm_limit else "")
                    + "). Retry after the time in the Retry-After header.",
                    headers=admission.headers(),
                )
            if refusal is not None:
                refusal.headers.update(admission.headers())
                raise refusal
            return Admitted(key=key, model=model, admission=admission)
    except REDIS_ERRORS:
        raise ServiceUnavailable(
            "The service cannot reach its Redis server right now. Retry shortly.",
            code="redis_unavailable",
        ) from None
    raise ServiceUnavailable(
        "Keys or models are changing right now. Retry the request.", code="config_changing"
    )


# --- Completions --------------------------------------------------------------------------------


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
    ctx: RequestContext, *, credential: Credential, request: ChatCompletionRequest
) -> Completion:
    """Admit a chat completion and enqueue it. Raises NebulaError for any refusal."""
    ctx.model = request.model
    ctx.stream = bool(request.stream)
    prompt, user_text, prompt_tokens = _check_size(request)
    hub = reply_hub()
    await hub.ready()
    n = request.n or 1
    payload_holder: list[JobPayload] = []

    def build_job(key: KeyInfo, model: ModelInfo) -> tuple[bytes, int]:
        limit = request.token_limit
        if (
            prompt_tokens + (limit or 0) > model.context_length
            or prompt_tokens >= model.context_length
        ):
            raise InvalidRequest(
                f"This model's maximum context length is {model.context_length} tokens. However, "
                f"you requested {prompt_tokens + (limit or 0)} tokens ({prompt_tokens} in the "
                f"messages, {limit or 0} in the completion). Reduce the length of the messages "
                "or the completion.",
                param="messages",
                code="context_length_exceeded",
            )
        room = model.context_length - prompt_tokens
        reserve = prompt_tokens + n * (
            limit if limit is not None else min(room, DEFAULT_COMPLETION_RESERVE)
        )
        payload: JobPayload = {
            "id": ctx.request_id,
            "reply_to": hub.channel,
            "key_id": key.id,
            "key_prefix": key.prefix,
            "model": {
                "name": model.name,
                "parameters": model.parameters,
                "gpus": model.gpus_per_replica,
                "bandwidth_tb_s": model.bandwidth_tb_s,
                "bf16_tflops": model.bf16_tflops,
                "capacity": model.capacity,
                "context_length": model.context_length,
            },
            "prompt_text": prompt,
            "user_text": user_text,
            "prompt_tokens": prompt_tokens,
            "max_tokens": limit,
            "stop": list(request.stop_sequences),
            "n": n,
            "seed": request.seed,
            "temperature": 1.0 if request.temperature is None else request.temperature,
            "top_p": 1.0 if request.top_p is None else request.top_p,
            "ignore_eos": bool(request.ignore_eos),
            "min_tokens": request.min_tokens or 0,
            "stream": ctx.stream,
            "endpoint": ctx.endpoint,
            "client": ctx.client,
            "enqueued_at": time.time(),
            "tpm_reserved": reserve if key.tpm_limit else 0,
            "tpm_limit": key.tpm_limit,
        }
        payload_holder[:] = [payload]
        return celery_message(payload), reserve

    # Listen before enqueueing, so not even the first token can be missed.
    queue = hub.open(ctx.request_id)
    try:
        admitted = await gateway_admit(
            ctx, credential=credential, model_name=request.model, build_job=build_job
        )
    except BaseException:
        hub.close(ctx.request_id)
        raise
    return Completion(ctx, hub, queue, payload_holder[0], admitted)


class WorkerFailed(NebulaError):
    """The job failed on or with its worker; the worker may already have recorded it."""

    status = 503
    type = "server_error"
    code = "worker_error"

    def __init__(self, message: str, *, code: str, recorded: bool) -> None:
        super().__init__(message, code=code)
        self.recorded = recorded


class Completion:
    """An admitted job's replies, with the watchdog that turns silence into a decision."""

    def __init__(
        self,
        ctx: RequestContext,
        hub: ReplyHub,
        queue: asyncio.Queue[dict[str, Any]],
        payload: JobPayload,
        admitted: Admitted,
    ) -> None:
        self.ctx = ctx
        self.hub = hub
        self.queue = queue
        self.payload = payload
        self.admitted = admitted
        self.headers = admitted.admission.headers()
        self.attempts = 1
        self.relayed = False  # has anything reached the client?
        self.finished = False
        self.started = False
        self.deadline = payload["enqueued_at"] + settings.NEBULA_QUEUE_TIMEOUT
        self.queue_ms: float | None = None
        self._seq = 0
        self._last_activity = time.monotonic()
        self._redis_lost_at: float | None = None
        self._ended_unheard = False

    # --- reading replies ------------------------------------------------------------------
    async def _next(self, *, ticks: bool = False) -> dict[str, Any]:
        while True:
            try:
                async with asyncio.timeout(WATCHDOG_SECONDS):
                    message = await self.queue.get()
            except TimeoutError:
                await self._watchdog()
                if ticks and time.monotonic() - self._last_activity >= KEEPALIVE_SECONDS:
                    self._last_activity = time.monotonic()
                    return {"t": "tick"}
                continue
            self._last_activity = time.monotonic()
            kind = message["t"]
            if kind == "lost":
                await self._fail_lost()
            if kind == "delta":
                if message["seq"] != self._seq + 1:
                    await self._fail("The token stream lost messages.", code="stream_broken")
                self._seq = message["seq"]
            return message

    async def wait_started(self) -> None:
        """Wait until a worker holds a GPU slot for this job (or fail with a proper status)."""
        while not self.started:
            message = await self._next()
            if message["t"] == "start":
                self.started = True
                self.queue_ms = message["queue_ms"]
            elif message["t"] == "error":
                self.finished = True
                raise WorkerFailed(message["message"], code=message["code"], recorded=True)

    async def events(self, *, ticks: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Delta, done and error messages until the job ends (after `wait_started`); with
        `ticks`, also a `tick` now and then while nothing happens (for keep-alives)."""
        while not self.finished:
            message = await self._next(ticks=ticks)
            kind = message["t"]
            if kind == "start":
                self.started = True
                self.queue_ms = message["queue_ms"]
                continue
            if kind in ("done", "error"):
                self.finished = True
            yield message

    async def result(self) -> DoneMessage:
        """The answer of a non-streaming job. Its worker sends no start message: nothing reaches
        the client before the end, and it halves what the reply hub parses per request (see
        docs/BENCHMARKS.md). The first message is the result or an error."""
        async for message in self.events():
            if message["t"] == "done":
                return message  # type: ignore[return-value]
            if message["t"] == "error":
                raise WorkerFailed(message["message"], code=message["code"], recorded=True)
        raise WorkerFailed("The job ended without a result.", code="worker_error", recorded=False)

    # --- failure handling -----------------------------------------------------------------
    async def _watchdog(self) -> None:
        client = get_async_redis()
        asked = time.monotonic()
        try:
            state_b, worker_b, alive, live = await INSPECT.acall(
                client,
                [
                    job_key(self.ctx.request_id),
                    WORKERS_KEY,
                    slots_key(self.payload["model"]["name"]),
                ],
                [int(settings.NEBULA_WORKER_TTL * 1000), self.ctx.request_id],
            )
        except REDIS_ERRORS:
            # Without Redis no token can come, started or not: after as long as a silent worker
            # is given, give up rather than keep the client waiting for as long as Redis is out.
            self._redis_lost_at = self._redis_lost_at or asked
            if time.monotonic() - self._redis_lost_at >= settings.NEBULA_WORKER_TTL or (
                time.time() > self.deadline and not self.started
            ):
                await self._fail("Lost contact with Redis.", code="redis_unavailable")
            return
        self._redis_lost_at = None
        state, worker = state_b.decode(), worker_b.decode()
        overdue = time.time() > self.deadline
        if state in ("waiting", "running") and not alive:
            await self._worker_lost(worker)
        elif state in ("", "waiting") and overdue:
            # Nobody started it in time: give up, unless a worker claims it at this very moment
            # (then the abandon loses and we keep waiting). Name the cause: no workers at all,
            # or all of them busy.
            if await ABANDON.acall(client, [job_key(self.ctx.request_id)], [JOB_TTL_SECONDS]):
                self.finished = True
                if not live:
                    raise ServiceUnavailable(
                        f"No inference worker was running for {settings.NEBULA_QUEUE_TIMEOUT:g} "
                        "seconds. Retry shortly.",
                        code="no_workers_available",
                    )
                raise ServiceUnavailable(
                    f"No worker could start this request within {settings.NEBULA_QUEUE_TIMEOUT:g} "
                    "seconds: the fleet is busy. Retry later.",
                    code="queue_timeout",
                )
        elif state in ("done", "failed", "cancelled", "abandoned"):
            # It ended, and its last message has not arrived here. It may be on its way still
            # (the worker publishes it in the same step that ends the job, and this answer can
            # overtake it): only a second look, a watchdog period later, calls it lost.
            if self._ended_unheard:
                await self._fail("The job ended but its result was lost.", code="stream_broken")
            self._ended_unheard = True

    async def _worker_lost(self, worker: str) -> None:
        client = get_async_redis()
        key = job_key(self.ctx.request_id)
        if not self.relayed and self.attempts < MAX_ATTEMPTS:
            if await TAKE_OVER.acall(client, [key], [worker, "retry", JOB_TTL_SECONDS]):
                logger.warning(
                    "worker %s died with job %s; resending it", worker, self.ctx.request_id
                )
                self.attempts += 1
                self.started = False
                self._seq = 0
                # The resent job gets the full queue timeout again: counted from the first
                # enqueue, a job that ran for longer than that would be abandoned as soon as it
                # had to wait for a slot. (Its place in line still dates from the first enqueue.)
                self.deadline = time.time() + settings.NEBULA_QUEUE_TIMEOUT
                await client.lpush(QUEUE, celery_message(self.payload))
            return
        if await TAKE_OVER.acall(client, [key], [worker, "fail", JOB_TTL_SECONDS]):
            self.finished = True
            await self.ctx.record(status=503, error_code="worker_lost", finish_reason="error")
            raise WorkerFailed(
                "The worker running this request stopped. Retry the request.",
                code="worker_lost",
                recorded=True,
            )

    async def _fail_lost(self) -> None:
        await self._fail(
            "Lost the connection that carries this request's tokens.", code="stream_broken"
        )

    async def _fail(self, message: str, *, code: str) -> None:
        """End the job from this side; record it unless a worker will (it was running)."""
        self.finished = True
        previous = ""
        with contextlib.suppress(*REDIS_ERRORS):
            raw = await CANCEL.acall(
                get_async_redis(), [job_key(self.ctx.request_id)], [JOB_TTL_SECONDS]
            )
            previous = raw.decode() if isinstance(raw, bytes) else str(raw)
        recorded = previous not in ("", "waiting")
        if not recorded:
            await self.ctx.record(status=503, error_code=code, finish_reason="error")
        raise WorkerFailed(message, code=code, recorded=True)

    async def cancel(self) -> None:
        """The client went away: stop the job, and record it if it never started running."""
        self.hub.close(self.ctx.request_id)
        if self.finished:
            return
        self.finished = True
        try:
            raw = await CANCEL.acall(
                get_async_redis(), [job_key(self.ctx.request_id)], [JOB_TTL_SECONDS]
            )
        except REDIS_ERRORS:
            # The worker may never learn of it; record it here (straight to the database). A
            # record the worker writes later for the same request loses to this one.
            raw = b""
        previous = raw.decode() if isinstance(raw, bytes) else str(raw)
        if previous in ("", "waiting"):
            await self.ctx.record(status=499, error_code="client_gone", finish_reason="cancelled")

    def close(self) -> None:
        """Stop listening; if the job is still going, cancel it in the background."""
        self.hub.close(self.ctx.request_id)
        if not self.finished:
            _in_background(self.cancel())
