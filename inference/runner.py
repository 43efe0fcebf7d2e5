"""Running one inference job on a worker: claim it, wait for a GPU slot, generate at simulated
GPU speed, stream tokens back to the web process, and record usage when it ends."""

from __future__ import annotations

import base64
import logging
import time
import uuid
from dataclasses import dataclass, replace

import orjson
import redis
from django.conf import settings

from billing.budgets import budget_settle
from inference.backends.openai_compatible import (
    Delta,
    UpstreamFailure,
    UpstreamResult,
    relay_chat,
)
from inference.batching import JobGone, Outbox
from inference.engine import Generation, GenerationRequest, HardwareSpec, ToolSpec
from inference.engine.embeddings import embedding_engine
from inference.jobs import (
    FINISH,
    JOB_TTL_SECONDS,
    PUBLISH,
    SETTLE_ORPHAN,
    DeltaMessage,
    DoneMessage,
    ErrorMessage,
    JobPayload,
    StartMessage,
    job_key,
)
from inference.slots import (
    ALREADY_CLAIMED,
    JOB_GONE,
    NO_LISTENER,
    ORPHANED,
    SLOT_WAIT,
    slot_acquire,
    slots_key,
    waiting_key,
)
from inference.workers import WorkerRuntime
from infra import aio
from infra.errors import DATABASE_ERRORS
from infra.redis_client import REDIS_ERRORS, get_async_redis, get_redis
from keys.ratelimit import tpm_settle
from models_registry.embedding_models import embedding_model
from models_registry.models import Backend
from models_registry.upstreams import upstream_target
from telemetry.events import STREAM, UsageEvent, encode, itl_histogram, usage_event

logger = logging.getLogger(__name__)

# How often a job waiting for a GPU slot asks again: quickly at first, then backing off.
_POLL_MIN, _POLL_MAX = 0.002, 0.05
# How long a job whose Redis failed under it keeps trying to end properly (and be recorded).
SALVAGE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job that ran ended: its final state, what its usage record says, and the final
    message its web process gets (None: nobody to tell)."""

    state: str  # done, cancelled, failed
    status: int
    finish_reason: str
    completion_tokens: int
    message: DoneMessage | ErrorMessage | None
    error_code: str = ""

    def after_cancellation(self) -> Outcome:
        """The client left while the job was ending: bill what ran, as a cancellation."""
        return Outcome(
            state="cancelled",
            status=499,
            finish_reason="cancelled",
            completion_tokens=self.completion_tokens,
            message=None,
            error_code="client_gone",
        )


class JobRun:
    def __init__(self, job: JobPayload, worker: WorkerRuntime, client: redis.Redis) -> None:
        self.job = job
        self.worker = worker
        # Who owns the job in Redis: this run, not just this worker process. Should the web
        # process give the job up for dead and resend it, a thread of the same worker may take
        # the new attempt; the old thread must then find the job no longer its own.
        self.owner = f"{worker.id}/{uuid.uuid4().hex[:8]}"
        self.client = client
        self.key = job_key(job["id"])
        self.seq = 0
        self.queue_ms: float | None = None
        self.ttft_ms: float | None = None
        self.itl_gaps: list[float] = []
        self.last_token: float | None = None
        self.scale = settings.NEBULA_SIM_TIME_SCALE
        self.generation: Generation | UpstreamResult | None = None
        # A streaming job on an engine tells its client it started once the engine accepted
        # the request (so an engine's refusal still gets its own status), not at the slot.
        self.upstream = job["model"].get("backend") == Backend.OPENAI_COMPATIBLE

    # --- messages ------------------------------------------------------------------------------
    @property
    def tokens_made(self) -> int:
        return self.generation.completion_tokens if self.generation else 0

    def publish(self, message: DeltaMessage | None) -> None:
        """Send `message` (None: only check in), noting the tokens made so far in the job."""
        delivered = PUBLISH(
            self.client,
            [self.key],
            [
                self.job["reply_to"],
                orjson.dumps(message) if message is not None else "",
                self.owner,
                self.tokens_made,
            ],
        )
        if int(delivered) <= 0:
            raise JobGone

    def still_running(self) -> None:
        self.publish(None)

    # --- the job -------------------------------------------------------------------------------
    def wait_for_slot(self) -> int:
        """Claim the job and wait first come, first served for a GPU slot; a streaming job's
        start message goes out in the same script that takes the slot (a non-streaming job's
        web process only waits for the result, so it gets none). Returns a `slot_acquire`
        outcome other than SLOT_WAIT."""
        job, model = self.job, self.job["model"]
        arrival_ms = int(job["enqueued_at"] * 1000)
        pause = _POLL_MIN
        claim = True
        while True:
            self.queue_ms = (time.time() - job["enqueued_at"]) * 1000
            start: StartMessage = {
                "r": job["id"],
                "t": "start",
                "queue_ms": self.queue_ms,
                "worker": self.worker.id,
            }
            got = slot_acquire(
                self.client,
                model=model["name"],
                request_id=job["id"],
                job_key=self.key,
                capacity=model["capacity"],
                worker_id=self.owner,
                arrival_ms=arrival_ms,
                claim=claim,
                job_ttl=JOB_TTL_SECONDS,
                reply_to=job["reply_to"],
                start_message=orjson.dumps(start) if job["stream"] and not self.upstream else b"",
                sequences=job["n"],
            )
            if got != SLOT_WAIT:
                return got
            claim = False
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    def generate(self) -> Generation:
        job, model = self.job, self.job["model"]
        spec = HardwareSpec(
            parameters=model["parameters"],
            gpus=model["gpus"],
            bandwidth_tb_s=model["bandwidth_tb_s"],
            bf16_tflops=model["bf16_tflops"],
        )
        generation = self.generation = Generation(
            GenerationRequest(
                model=model["name"],
                prompt_text=job["prompt_text"],
                user_text=job["user_text"],
                prompt_tokens=job["prompt_tokens"],
                context_length=model["context_length"],
                max_tokens=job["max_tokens"],
                stop=tuple(job["stop"]),
                n=job["n"],
                seed=job["seed"],
                temperature=job["temperature"],
                top_p=job["top_p"],
                ignore_eos=job["ignore_eos"],
                min_tokens=job["min_tokens"],
                tools=_tool_spec(job),
                choice_prompts=tuple((text, tokens) for text, tokens in job.get("prompts", [])),
                response_format=job.get("response_format", "text"),
                json_schema=job.get("json_schema"),
                logprobs="logprobs" in job,
                top_logprobs=job.get("logprobs", 0),
            )
        )
        # The worker's engine loop paces it at the simulated GPU's speed and sends its deltas.
        self.worker.engine.generate(
            self,
            generation,
            prefill=spec.prefill_seconds(job["prompt_tokens"]) * self.scale,
            step=spec.decode_seconds_per_token() * self.scale,
        )
        return generation

    def relay(self) -> UpstreamResult:
        """Serve the job from its deployment's engine (the openai-compatible backend)."""
        job = self.job
        upstream = job.get("upstream")
        try:
            target = (
                upstream_target(upstream["deployment_id"], name=job["model"]["name"])
                if upstream
                else None
            )
        except DATABASE_ERRORS:
            raise UpstreamFailure(
                503, "database_unavailable", "The worker cannot reach its database. Retry."
            ) from None
        if target is None:
            raise UpstreamFailure(
                503, "model_not_found", "The model's upstream is no longer configured."
            )
        result = UpstreamResult(n=job["n"], prompt_tokens=job["prompt_tokens"])
        self.generation = result
        try:
            return aio.run(relay_chat(job, target=target, port=_UpstreamPort(self), result=result))
        finally:
            if self.ttft_ms is None and result.first_token_at is not None:
                # A non-streaming job sent no deltas to time it by.
                self.ttft_ms = (result.first_token_at - job["enqueued_at"]) * 1000

    def embed(self) -> Outcome:
        """Serve an embedding job with the real model, in this process (loaded on the first
        one: `inference.engine.embeddings`); the vectors go back in the final message."""
        job = self.job
        spec = embedding_model(job["model"]["name"])
        if spec is None:
            raise UpstreamFailure(
                503, "model_not_found", "This worker does not have the model's files."
            )
        task = job["embedding"]
        engine = embedding_engine(spec, threads=settings.NEBULA_EMBEDDING_THREADS)
        vectors = engine.embed(task["inputs"], dimensions=task["dimensions"])
        self.ttft_ms = (time.time() - job["enqueued_at"]) * 1000
        self.still_running()  # the client may have left while the model ran (JobGone)
        tokens = job["prompt_tokens"]
        done: DoneMessage = {
            "r": job["id"],
            "t": "done",
            "seq": self.seq + 1,
            "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
            "finish": ["stop"],
            "embeddings": [base64.b64encode(vector).decode("ascii") for vector in vectors],
            "ttft_ms": self.ttft_ms,
            "queue_ms": self.queue_ms or 0.0,
        }
        return Outcome(
            state="done", status=200, finish_reason="stop", completion_tokens=0, message=done
        )

    @property
    def prompt_tokens(self) -> int:
        """The prompt as billed: an engine reports its own count, the simulated one is ours."""
        return int(getattr(self.generation, "prompt_tokens", self.job["prompt_tokens"]))

    def delta_message(self, outbox: Outbox) -> DeltaMessage:
        """The next message of the stream, with what `outbox` holds."""
        self.seq += 1
        message: DeltaMessage = {
            "r": self.job["id"],
            "t": "delta",
            "seq": self.seq,
            "d": outbox.deltas,
            "f": outbox.finished,
        }
        if outbox.tool_calls:
            message["tc"] = outbox.tool_calls
        if outbox.logprobs:
            message["lp"] = outbox.logprobs
        return message

    def salvage(self, outcome: Outcome) -> None:
        """End the job after Redis failed under it, once Redis answers again.

        Its web process, or its client, may be gone by then, and nobody else would record the
        job. If the job is no longer this run's (the web process gave it up and resent or
        failed it), whoever took it over records it. A record the web process already wrote for
        the same request (straight to the database, while Redis was away) wins: request ids are
        unique in the ledger.
        """
        deadline = time.monotonic() + SALVAGE_SECONDS
        while True:
            try:
                state, owner = self.client.hmget(self.key, ["state", "worker"])
                if owner == self.owner.encode():
                    self.finish(outcome.after_cancellation() if state == b"cancelled" else outcome)
                return
            except REDIS_ERRORS:
                if time.monotonic() > deadline:
                    logger.warning("job %s ended without a record: Redis stayed away", self.key)
                    return
                time.sleep(0.5)

    def usage(self, outcome: Outcome, *, worker: str) -> UsageEvent:
        job = self.job
        return usage_event(
            request_id=job["id"],
            key_id=job["key_id"],
            key_prefix=job["key_prefix"],
            model=job["model"]["name"],
            endpoint=job["endpoint"],
            client=job["client"],
            worker=worker,
            status=outcome.status,
            finish_reason=outcome.finish_reason,
            error_code=outcome.error_code,
            stream=job["stream"],
            prompt_tokens=self.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            queue_ms=self.queue_ms,
            ttft_ms=self.ttft_ms,
            latency_ms=(time.time() - job["enqueued_at"]) * 1000,
            itl_hist=itl_histogram(self.itl_gaps),
            itl_sum_ms=sum(self.itl_gaps),
        )

    def finish(self, outcome: Outcome) -> None:
        job = self.job
        finished = FINISH(
            self.client,
            [self.key, slots_key(job["model"]["name"]), STREAM],
            [
                self.owner,
                job["id"],
                outcome.state,
                encode(self.usage(outcome, worker=self.worker.id)),
                job["reply_to"],
                orjson.dumps(outcome.message) if outcome.message is not None else "",
                JOB_TTL_SECONDS,
                job["n"],
            ],
        )
        self.settle_tokens(outcome.completion_tokens)
        if finished >= 0:  # this run wrote the record: it settles the budgets, once
            self.settle_budgets(outcome.completion_tokens)

    def end(self, outcome: Outcome) -> None:
        """Finish the job; if Redis fails under the finish, salvage it (and let the task see
        the error)."""
        try:
            self.finish(outcome)
        except REDIS_ERRORS:
            self.salvage(outcome)
            raise

    def stopped_outcome(self) -> Outcome:
        """How a job its web process stopped ends: the client went away (499), unless the web
        process said why (its key was revoked: 401), billing the tokens made either way."""
        try:
            reason = self.client.hget(self.key, "reason")
        except REDIS_ERRORS:
            reason = None  # the finish will meet the same outage: salvage decides then
        code = reason.decode() if isinstance(reason, bytes) else ""
        revoked = code in ("key_revoked", "key_expired")
        return Outcome(
            state="cancelled",
            status=401 if revoked else 499,
            finish_reason="cancelled",
            error_code=code if revoked else "client_gone",
            completion_tokens=self.tokens_made,
            message=None,
        )

    def settle_tokens(self, completion_tokens: int) -> None:
        job = self.job
        if job["tpm_limit"]:
            tpm_settle(
                self.client,
                key_id=job["key_id"],
                tpm_limit=job["tpm_limit"],
                reserved=job["tpm_reserved"],
                used=self.prompt_tokens + completion_tokens,
            )

    def settle_budgets(self, completion_tokens: int) -> None:
        """The budgets' reservation becomes what the record bills (`billing.budgets`). The
        record is written: should Redis fail now, the reservation stays counted until its
        period ends (too much, never too little) rather than the job failing."""
        try:
            budget_settle(
                self.client,
                request_id=self.job["id"],
                prompt_tokens=self.prompt_tokens,
                completion=completion_tokens,
            )
        except REDIS_ERRORS:
            logger.warning("job %s: could not settle its budget reservation", self.job["id"])

    def settle_orphan(self) -> None:
        """A redelivered job whose previous owner died with it (and whose web process did not
        take it over: it is gone too): free its slot and record it once, with the tokens the
        dead run had made: as lost with its worker, or, if its web process had stopped it (the
        client left, its key was revoked), as stopped."""
        job = self.job
        owner_b, tokens_b, state_b = self.client.hmget(self.key, ["worker", "tokens", "state"])
        if owner_b is None:
            return
        owner = owner_b.decode() if isinstance(owner_b, bytes) else str(owner_b)
        tokens = int(tokens_b or 0)
        if state_b == b"cancelled":
            self.generation = None
            outcome = replace(self.stopped_outcome(), completion_tokens=tokens)
        else:
            outcome = Outcome(
                state="failed",
                status=503,
                finish_reason="error",
                completion_tokens=tokens,
                message=None,
                error_code="worker_lost",
            )
        model = job["model"]["name"]
        settled = SETTLE_ORPHAN(
            self.client,
            [self.key, slots_key(model), waiting_key(model), STREAM],
            [
                owner,
                job["id"],
                encode(self.usage(outcome, worker=owner.partition("/")[0])),
                JOB_TTL_SECONDS,
                job["n"],
            ],
        )
        if settled:
            logger.warning("job %s was lost with its worker; recorded it", job["id"])
            self.settle_tokens(tokens)
            self.settle_budgets(tokens)


def _tool_spec(job: JobPayload) -> ToolSpec | None:
    tools = job.get("tools")
    if tools is None:
        return None
    return ToolSpec(
        functions=tuple((f["name"], f["description"], f["parameters"]) for f in tools["functions"]),
        choice=tools["choice"],
        name=tools["name"],
        parallel=tools["parallel"],
        legacy=tools["legacy"],
        answered=tools["answered"],
    )


class _UpstreamPort:
    """The relay's view of its run (`inference.backends.openai_compatible.RunPort`), on the
    event loop the relay runs on."""

    def __init__(self, run: JobRun) -> None:
        self.run = run

    async def _publish(self, message: StartMessage | DeltaMessage | None) -> int:
        run = self.run
        return int(
            await PUBLISH.acall(
                get_async_redis(),
                [run.key],
                [
                    run.job["reply_to"],
                    orjson.dumps(message) if message is not None else "",
                    run.owner,
                    run.tokens_made,
                ],
            )
        )

    async def started(self) -> None:
        run = self.run
        start: StartMessage = {
            "r": run.job["id"],
            "t": "start",
            "queue_ms": run.queue_ms or 0.0,
            "worker": run.worker.id,
        }
        if await self._publish(start) <= 0:
            raise JobGone

    async def delta(self, delta: Delta) -> None:
        run = self.run
        now = time.monotonic()
        if run.ttft_ms is None:
            run.ttft_ms = (time.time() - run.job["enqueued_at"]) * 1000
        elif run.last_token is not None:
            run.itl_gaps.append((now - run.last_token) * 1000)
        run.last_token = now
        run.seq += 1
        message: DeltaMessage = {
            "r": run.job["id"],
            "t": "delta",
            "seq": run.seq,
            "d": delta.texts,
            "f": delta.finished,
        }
        if delta.logprobs:
            message["lp"] = delta.logprobs
        if delta.tool_calls:
            message["tc"] = delta.tool_calls
        if await self._publish(message) <= 0:
            raise JobGone

    async def check(self) -> None:
        if await self._publish(None) <= 0:
            raise JobGone


def completion_execute(job: JobPayload, worker: WorkerRuntime) -> None:
    """Run one job to its end. Safe to call twice for the same job: the second call does nothing,
    unless the first call's worker died with the job (then it settles the job)."""
    client = get_redis()
    run = JobRun(job, worker, client)
    got = run.wait_for_slot()
    if got == ORPHANED:
        run.settle_orphan()
        return
    if got == ALREADY_CLAIMED:
        logger.info("job %s was already claimed; dropping duplicate delivery", job["id"])
        return
    if got == JOB_GONE:
        return  # abandoned or cancelled while waiting: the web process records it
    model = job["model"]["name"]
    embedded: Outcome | None = None
    with worker.holding_slot(model, job["id"], run.owner, sequences=job["n"]):
        try:
            if got == NO_LISTENER:
                raise JobGone
            # The job's kind: an embedding, or a generation (simulated or an upstream's).
            if "embedding" in job:
                embedded = run.embed()
            else:
                generation = run.relay() if run.upstream else run.generate()
        except UpstreamFailure as failure:
            run.end(
                Outcome(
                    state="failed",
                    status=failure.status,
                    finish_reason="error",
                    error_code=failure.code,
                    completion_tokens=run.tokens_made,
                    message={
                        "r": job["id"],
                        "t": "error",
                        "code": failure.code,
                        "message": failure.message,
                        "status": failure.status,
                        "type": failure.type,
                        "param": failure.param,
                    },
                )
            )
            return
        except JobGone:
            run.end(run.stopped_outcome())
            return
        except REDIS_ERRORS:
            run.salvage(
                Outcome(
                    state="failed",
                    status=503,
                    finish_reason="error",
                    error_code="redis_unavailable",
                    completion_tokens=run.tokens_made,
                    message={
                        "r": job["id"],
                        "t": "error",
                        "code": "redis_unavailable",
                        "message": "The worker lost its Redis connection. Retry the request.",
                    },
                )
            )
            raise
        except Exception:
            logger.exception("job %s failed on worker %s", job["id"], worker.id)
            run.end(
                Outcome(
                    state="failed",
                    status=500,
                    finish_reason="error",
                    error_code="engine_error",
                    completion_tokens=0,
                    message={
                        "r": job["id"],
                        "t": "error",
                        "code": "engine_error",
                        "message": "The model failed while generating. Retry the request.",
                    },
                )
            )
            return
        if embedded is not None:
            run.end(embedded)
            return
        reasons = generation.finish_reasons()
        prompt_tokens = run.prompt_tokens
        done: DoneMessage = {
            "r": job["id"],
            "t": "done",
            "seq": run.seq + 1,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": generation.completion_tokens,
                "total_tokens": prompt_tokens + generation.completion_tokens,
            },
            "finish": reasons,
            "ttft_ms": run.ttft_ms or 0.0,
            "queue_ms": run.queue_ms or 0.0,
        }
        if not job["stream"]:
            done["texts"] = generation.texts()
            if any(generation.tool_calls()):
                done["tool_calls"] = generation.tool_calls()
            if isinstance(generation, UpstreamResult):
                if any(generation.logprobs()):
                    done["logprobs"] = generation.logprobs()
            elif "logprobs" in job:
                done["logprobs"] = generation.logprobs()
        outcome = Outcome(
            state="done",
            status=200,
            finish_reason=reasons[0] or "stop",
            completion_tokens=generation.completion_tokens,
            message=done,
        )
        run.end(outcome)
