"""The web side of a completion: the twin of `inference.runner` on the worker.

A `Completion` reads an admitted job's messages from the reply hub and, while they do not
come, watches the job (the watchdog): a dead worker's job is resent or failed, a job nobody
started in time is abandoned, a lost stream is ended. Whoever ends a job records it, so every
admitted request gets exactly one usage record (see `inference.jobs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

from django.conf import settings

from billing.budgets import budget_settle_async
from inference.gateway import Admitted, Caller, RequestContext, gateway_authenticate
from inference.heartbeats import WORKERS_KEY
from inference.hub import ReplyHub
from inference.jobs import (
    ABANDON,
    CANCEL,
    INSPECT,
    JOB_TTL_SECONDS,
    QUEUE,
    TAKE_OVER,
    DeltaMessage,
    DoneMessage,
    ErrorMessage,
    HubMessage,
    JobPayload,
    TickMessage,
    WorkerMessage,
    celery_message,
    job_key,
)
from inference.slots import slots_key
from infra.epoch import epoch_refresh
from infra.errors import AuthenticationFailed, NebulaError, ServiceUnavailable
from infra.redis_client import REDIS_ERRORS, get_async_redis

logger = logging.getLogger(__name__)

# Silence after which the web process looks at the job: is its worker alive, is it overdue?
WATCHDOG_SECONDS = 1.0
# A job whose worker died before any token reached the client is resent this many times.
MAX_ATTEMPTS = 3
# While a stream is quiet this long, an SSE comment keeps proxies from closing it.
KEEPALIVE_SECONDS = 15.0
# How often a request under way checks that its key is still usable (revoked, expired or its
# owner deactivated: the request stops within about this long, with an error).
KEY_CHECK_SECONDS = 0.5
_background: set[asyncio.Task[Any]] = set()


def _in_background(coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


class WorkerFailed(NebulaError):
    """The job failed on or with its worker; the worker may already have recorded it."""

    status = 503
    type = "server_error"
    code = "worker_error"

    def __init__(self, message: str, *, code: str, recorded: bool) -> None:
        super().__init__(message, code=code)
        self.recorded = recorded

    @classmethod
    def from_message(cls, message: ErrorMessage) -> WorkerFailed:
        """The worker's error message, with the status it names (an engine's 400 stays one)."""
        error = cls(message["message"], code=message["code"], recorded=True)
        if "status" in message:
            error.status = message["status"]
            error.type = message.get("type") or error.type
            error.param = message.get("param")
        return error


class Completion:
    """An admitted job's replies, with the watchdog that turns silence into a decision."""

    def __init__(
        self,
        ctx: RequestContext,
        hub: ReplyHub,
        queue: asyncio.Queue[HubMessage],
        payload: JobPayload,
        admitted: Admitted,
        caller: Caller,
    ) -> None:
        self.ctx = ctx
        self.caller = caller
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
        self._next_key_check = time.monotonic() + KEY_CHECK_SECONDS

    # --- reading replies ------------------------------------------------------------------
    async def _next(self, *, ticks: bool = False) -> WorkerMessage | TickMessage:
        while True:
            if time.monotonic() >= self._next_key_check:
                await self._check_key()
            try:
                # A message already queued needs no timer: under a burst most are (a timer per
                # message is a heap push and a cancel on the web process's one core).
                message = self.queue.get_nowait()
            except asyncio.QueueEmpty:
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
            if message["t"] == "lost":
                await self._fail_lost()
            if message["t"] == "delta":
                if message["seq"] != self._seq + 1:
                    await self._fail("The token stream lost messages.", code="stream_broken")
                self._seq = message["seq"]
            return message

    def pending(self) -> bool:
        """Whether the worker's next message is already here (so a relay may write both at once)."""
        return not self.queue.empty()

    async def wait_started(self) -> None:
        """Wait until a worker holds a GPU slot for this job (or fail with a proper status)."""
        while not self.started:
            message = await self._next()
            if message["t"] == "start":
                self.started = True
                self.queue_ms = message["queue_ms"]
            elif message["t"] == "error":
                self.finished = True
                raise WorkerFailed.from_message(message)

    async def events(
        self, *, ticks: bool = False
    ) -> AsyncIterator[DeltaMessage | DoneMessage | ErrorMessage | TickMessage]:
        """Delta, done and error messages until the job ends (after `wait_started`); with
        `ticks`, also a `tick` now and then while nothing happens (for keep-alives)."""
        while not self.finished:
            message = await self._next(ticks=ticks)
            if message["t"] == "start":
                self.started = True
                self.queue_ms = message["queue_ms"]
                continue
            if message["t"] == "done" or message["t"] == "error":
                self.finished = True
            yield message

    async def result(self) -> DoneMessage:
        """The answer of a non-streaming job. Its worker sends no start message: nothing reaches
        the client before the end, and it halves what the reply hub parses per request (see
        docs/BENCHMARKS.md). The first message is the result or an error."""
        async for message in self.events():
            if message["t"] == "done":
                return message
            if message["t"] == "error":
                raise WorkerFailed.from_message(message)
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
                await self._settle_budgets(0, 0)
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

    async def _check_key(self) -> None:
        """Stop the job if its key was revoked or expired since it was admitted."""
        self._next_key_check = time.monotonic() + KEY_CHECK_SECONDS
        try:
            epoch = await epoch_refresh(max_age=KEY_CHECK_SECONDS)
            if epoch != self.caller.epoch:
                # Something changed: look at the key again (from the database, once per process).
                self.caller = await gateway_authenticate(
                    self.ctx, credential=self.caller.credential
                )
            else:
                self.caller.key.check_usable()  # it may have expired meanwhile
        except AuthenticationFailed as refusal:
            code = "key_expired" if "expired" in refusal.message else "key_revoked"
            await self._fail(f"{refusal.message} The request was stopped.", code=code, status=401)
        except REDIS_ERRORS:
            pass  # cannot tell now; the watchdog handles a lasting Redis outage
        except NebulaError:
            pass  # Redis or the database is away (503): tell next time

    async def _worker_lost(self, worker: str) -> None:
        client = get_async_redis()
        key = job_key(self.ctx.request_id)
        if not self.relayed and self.attempts < MAX_ATTEMPTS:
            # Nothing reached the client: the tokens the dead attempt made are not billed.
            if await TAKE_OVER.acall(client, [key], [worker, "retry", JOB_TTL_SECONDS]) >= 0:
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
        made = await TAKE_OVER.acall(client, [key], [worker, "fail", JOB_TTL_SECONDS])
        if made >= 0:
            self.finished = True
            # What the client received is billed: the prompt, and the tokens made until the
            # worker died (it notes them in the job as it goes).
            await self.ctx.record(
                status=503,
                error_code="worker_lost",
                finish_reason="error",
                prompt_tokens=self.payload["prompt_tokens"],
                completion_tokens=int(made),
            )
            await self._settle_budgets(self.payload["prompt_tokens"], int(made))
            raise WorkerFailed(
                "The worker running this request stopped. Retry the request.",
                code="worker_lost",
                recorded=True,
            )

    async def _fail_lost(self) -> NoReturn:
        await self._fail(
            "Lost the connection that carries this request's tokens.", code="stream_broken"
        )

    async def _fail(self, message: str, *, code: str, status: int = 503) -> NoReturn:
        """End the job from this side; record it unless a worker will (it was running: the
        reason goes with the cancellation, for its record)."""
        self.finished = True
        previous, redis_answered = "", False
        with contextlib.suppress(*REDIS_ERRORS):
            raw = await CANCEL.acall(
                get_async_redis(), [job_key(self.ctx.request_id)], [JOB_TTL_SECONDS, code]
            )
            previous = raw.decode() if isinstance(raw, bytes) else str(raw)
            redis_answered = True
        recorded = previous not in ("", "waiting")
        if not recorded:
            await self.ctx.record(status=status, error_code=code, finish_reason="error")
            if redis_answered:  # else asking again would hold the client's error a timeout more
                await self._settle_budgets(0, 0)
        failure = WorkerFailed(message, code=code, recorded=True)
        if status != WorkerFailed.status:
            failure.status, failure.type = status, "invalid_request_error"
        raise failure

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
            await self._settle_budgets(0, 0)

    async def _settle_budgets(self, prompt_tokens: int, completion_tokens: int) -> None:
        """This side recorded the job: it settles the budgets' reservation to what the record
        bills (nothing, for a job that never ran). Without Redis the reservation stays counted
        until its period ends: too much, never too little."""
        with contextlib.suppress(*REDIS_ERRORS):
            await budget_settle_async(
                get_async_redis(),
                request_id=self.ctx.request_id,
                prompt_tokens=prompt_tokens,
                completion=completion_tokens,
            )

    def close(self) -> None:
        """Stop listening; if the job is still going, cancel it in the background."""
        self.hub.close(self.ctx.request_id)
        if not self.finished:
            _in_background(self.cancel())
