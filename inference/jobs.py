"""Inference jobs between web processes and workers: the payload, the Celery message, and the
job's state in Redis, which decides who does what when things go wrong.

A job's state lives in the hash `nebula:job:{request id}` and only moves through Lua scripts:

    (absent) ──claim──▶ waiting ──slot──▶ running ──finish──▶ done
       │                   │                 │
       └──abandon/cancel───┴──cancel──▶ cancelled / abandoned        (web side)

Whoever moves the job into a final state writes its usage record, so every request is recorded
exactly once: the worker for jobs that ran, the web process for jobs that never did. A duplicate
delivery finds the hash already claimed and is dropped.
"""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

import orjson

from inference.slots import SLOT_MEMBERS_LUA
from infra.lua import NOW_MS, LuaScript
from infra.redis_client import get_redis
from infra.tasks import local_executor

if TYPE_CHECKING:
    from models_registry.catalog import ModelInfo

logger = logging.getLogger(__name__)

JOB_TTL_SECONDS = 3600
TASK_NAME = "inference.run_completion"
QUEUE = "celery"


def job_key(request_id: str) -> str:
    return f"nebula:job:{request_id}"


class ModelPayload(TypedDict):
    name: str
    parameters: int
    gpus: int
    bandwidth_tb_s: float
    bf16_tflops: float
    capacity: int
    context_length: int
    backend: NotRequired[str]  # models_registry.models.Backend; absent: simulated


def model_payload(model: ModelInfo) -> ModelPayload:
    """What a job carries of its model (the worker sizes the simulated GPU from it)."""
    return {
        "name": model.name,
        "parameters": model.parameters,
        "gpus": model.gpus_per_replica,
        "bandwidth_tb_s": model.bandwidth_tb_s,
        "bf16_tflops": model.bf16_tflops,
        "capacity": model.capacity,
        "context_length": model.context_length,
    }


class UpstreamJob(TypedDict):
    """For the openai-compatible backend: which deployment's engine, and the request's own
    parameters to send it (never the engine's key: the worker reads that itself)."""

    deployment_id: int
    body: dict[str, Any]


class ToolFunction(TypedDict):
    name: str
    description: str
    parameters: dict[str, Any]


class ToolsJob(TypedDict):
    """The functions a request offers the simulated model (`inference.engine.ToolSpec`)."""

    functions: list[ToolFunction]
    choice: str  # auto, required, none
    name: str | None  # a function the model must call
    parallel: bool
    legacy: bool  # `functions` / `function_call`: one call, answered as `function_call`
    answered: bool  # the conversation ends with a tool's result


class EmbeddingJob(TypedDict):
    """For an embedding model (a deployment of kind `embedding`): the inputs as the model's
    token ids (without its special tokens), and the output size asked for (None: native)."""

    inputs: list[list[int]]
    dimensions: int | None


class JobPayload(TypedDict):
    id: str  # the request id
    reply_to: str  # the web process's reply channel
    key_id: int
    key_prefix: str
    model: ModelPayload
    prompt_text: str
    user_text: str
    prompt_tokens: int
    max_tokens: int | None
    stop: list[str]
    n: int
    seed: int | None
    temperature: float
    top_p: float
    ignore_eos: bool
    min_tokens: int
    stream: bool
    endpoint: str
    client: str
    enqueued_at: float  # Unix time on the web process
    tpm_reserved: int
    tpm_limit: int | None
    upstream: NotRequired[UpstreamJob]
    tools: NotRequired[ToolsJob]
    # Text completions (/v1/completions): each choice's prompt and its tokens, in choice order.
    prompts: NotRequired[list[tuple[str, int]]]
    # Structured output (absent: text): "json_object" or "json_schema", with its schema.
    response_format: NotRequired[str]
    json_schema: NotRequired[dict[str, Any] | None]
    # Per-token logprobs with this many alternatives each (absent: no logprobs).
    logprobs: NotRequired[int]
    embedding: NotRequired[EmbeddingJob]  # present: an embedding job, not a generation


# --- Messages from worker to web process (Redis pub/sub on the web process's reply channel) -----


class StartMessage(TypedDict):
    r: str
    t: Literal["start"]
    queue_ms: float
    worker: str


class DeltaMessage(TypedDict):
    r: str
    t: Literal["delta"]
    seq: int
    d: list[tuple[int, str]]  # (choice index, text)
    f: list[tuple[int, str]]  # (choice index, finish reason)
    # Per choice index: OpenAI `logprobs.content` entries and streaming `delta.tool_calls`
    # entries for this delta's tokens.
    lp: NotRequired[list[tuple[int, list[dict[str, Any]]]]]
    tc: NotRequired[list[tuple[int, list[dict[str, Any]]]]]


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DoneMessage(TypedDict):
    r: str
    t: Literal["done"]
    seq: int
    usage: Usage
    finish: list[str | None]
    texts: NotRequired[list[str]]  # non-streaming jobs send the whole text at the end
    # Non-streaming jobs, per choice: OpenAI `message.tool_calls` and `logprobs.content`.
    tool_calls: NotRequired[list[list[dict[str, Any]] | None]]
    logprobs: NotRequired[list[list[dict[str, Any]] | None]]
    # Embedding jobs: one vector per input, as base64 of little-endian float32 (OpenAI's
    # `encoding_format: base64`, and a quarter of the bytes of JSON floats on the way).
    embeddings: NotRequired[list[str]]
    ttft_ms: float
    queue_ms: float


class ErrorMessage(TypedDict):
    r: str
    t: Literal["error"]
    code: str
    message: str
    # The HTTP status and OpenAI error type and param the client gets (when no token reached
    # it yet); absent: 503 server_error (a worker's trouble).
    status: NotRequired[int]
    type: NotRequired[str]
    param: NotRequired[str | None]


WorkerMessage = StartMessage | DeltaMessage | DoneMessage | ErrorMessage


# --- What the web side's reader of a job sees besides the worker's messages ----------------------


class LostMessage(TypedDict):
    """The reply channel lost its Redis connection: messages may have been missed."""

    t: Literal["lost"]


class TickMessage(TypedDict):
    """Nothing happened for a while (a stream sends a keep-alive)."""

    t: Literal["tick"]


HubMessage = WorkerMessage | LostMessage


def celery_message(payload: JobPayload) -> bytes:
    """The job as a Celery (protocol 2) message on kombu's Redis transport, ready to LPUSH.

    Web processes enqueue inside the admission script, in the same round trip as the rate limit
    check, which Celery's own (blocking) publisher cannot do. The envelope is what
    `kombu.transport.redis.Channel._put` writes; tests run it through real workers.
    """
    task_id = payload["id"]
    body = orjson.dumps(
        [[], {"job": payload}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    headers: dict[str, object] = {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": f"{{'job': <{payload['model']['name']} request {task_id}>}}",
        "origin": "nebula-web",
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def job_from_message(raw: bytes | str) -> JobPayload:
    """The job inside a message `celery_message` wrote (what Celery's worker decodes for us)."""
    envelope = orjson.loads(raw)
    _args, kwargs, _embed = orjson.loads(base64.b64decode(envelope["body"]))
    job: JobPayload = kwargs["job"]
    return job


class LocalQueueConsumer:
    """Standalone mode's stand-in for Celery workers: takes jobs off the in-process queue that
    the admission script pushed them to, and runs them on local threads with `execute`."""

    def __init__(self, execute: Callable[[JobPayload], Any]) -> None:
        self._execute = execute
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="nebula-local-queue", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        client = get_redis()
        while not self._stop.is_set():
            item = client.brpop([QUEUE], timeout=1)
            if not item:
                continue
            try:
                job = job_from_message(item[1])
            except (ValueError, KeyError, TypeError):
                logger.exception("dropping a malformed job message")
                continue
            local_executor().submit(self._execute, job)


# --- State transitions ---------------------------------------------------------------------------

# Worker: taking a delivered job (the `claim` of the diagram above) is part of the script that
# takes its GPU slot: see `inference.slots.slot_acquire`.

# Web: give up on a job nobody started in time. Returns 1 if the web process now owns it.
ABANDON = LuaScript(
    """
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'waiting' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'abandoned')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

# Web: stop the job (the client went away, or its key was revoked: ARGV[2], optional, says why
# for the worker's record). Returns the state the job was in ('' if never claimed); the job's
# record belongs to the web process unless it was already running on a worker.
CANCEL = LuaScript(
    """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'cancelled' or state == 'abandoned' or state == 'failed' then
  return state
end
if ARGV[2] and ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[2]) end
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return state or ''
"""
)

# Web: the worker running the job is dead. ARGV: dead worker id, 'retry' or 'fail', ttl.
# 'retry' forgets the claim so a resent message can be claimed again; 'fail' ends the job.
# Returns -1 if the web process did not take over, else the tokens the job had made (which
# the web process then bills).
TAKE_OVER = LuaScript(
    """
local state = redis.call('HGET', KEYS[1], 'state')
if (state ~= 'waiting' and state ~= 'running')
    or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  return -1
end
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
if ARGV[2] == 'retry' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'state', 'failed')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return tokens
"""
)

# Worker: settle a delivered job whose owner died with it claimed and unfinished (running,
# waiting for a slot, or cancelled by its web process but never ended by its worker), and
# whose web process has not taken it over (it is gone too, or it would have within
# NEBULA_WORKER_TTL). KEYS: job, slots, waiting line, usage stream. ARGV: dead owner, request
# id, usage record, ttl, sequences. Frees the slots and records the job, once: returns 1 if
# this call settled it, else 0.
SETTLE_ORPHAN = LuaScript(
    SLOT_MEMBERS_LUA
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if (state ~= 'waiting' and state ~= 'running' and state ~= 'cancelled')
    or redis.call('HGET', KEYS[1], 'ended') == '1'
    or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', state == 'cancelled' and 'cancelled' or 'failed', 'ended', '1')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[2], unpack(slot_members(ARGV[2], tonumber(ARGV[5]))))
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('XADD', KEYS[4], '*', 'd', ARGV[3], 'delivered', '')
return 1
"""
)


# Worker: send a message if the job is still ours and running, and note how many tokens it has
# made so far (whoever settles the job for a dead worker bills them). ARGV: reply channel,
# message ('' to send nothing: a non-streaming job checking in), owner, tokens so far.
# Returns -1 if the job is not ours (the client cancelled or another worker took over), else
# the number of subscribers that got the message (1 when there was none to send): 0 means the
# web process that asked is gone.
PUBLISH = LuaScript(
    """
if redis.call('HGET', KEYS[1], 'state') ~= 'running'
    or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[3] then
  return -1
end
redis.call('HSET', KEYS[1], 'tokens', ARGV[4])
if ARGV[2] == '' then return 1 end
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""
)

# Worker: end a job that ran. KEYS: job, slots, usage stream. ARGV: owner, request id, final
# state, usage record, reply channel, final message ('' for none), ttl, sequences.
# Frees the slot, sends the final message and records usage, atomically; the record notes
# whether anyone received the final message. Returns -1 if the job was no longer ours (then
# someone else records it, and the slot under this request id, if any, is the new attempt's:
# it is left alone), else the PUBLISH count (0 if there was no message or no listener).
FINISH = LuaScript(
    SLOT_MEMBERS_LUA
    + """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return -1 end
redis.call('ZREM', KEYS[2], unpack(slot_members(ARGV[2], tonumber(ARGV[8]))))
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' and state ~= 'cancelled' and state ~= 'waiting' then return -1 end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'ended', '1')
redis.call('EXPIRE', KEYS[1], ARGV[7])
local delivered = ''
if ARGV[6] ~= '' then delivered = redis.call('PUBLISH', ARGV[5], ARGV[6]) end
redis.call('XADD', KEYS[3], '*', 'd', ARGV[4], 'delivered', delivered)
if delivered == '' then return 0 end
return delivered
"""
)


# Web: is the job's worker alive? KEYS: job, workers zset, the model's slots. ARGV: worker ttl
# ms, request id. Returns {state or '', worker or '', 1 if the job is alive, live workers}.
# A running job holds a GPU slot whose lease its worker renews while a thread runs the job, so
# an expired lease means the job died even when its worker process lives on (say, the thread
# lost its Redis connection): the web process then treats it like a dead worker's job.
INSPECT = LuaScript(
    NOW_MS
    + """
local state = redis.call('HGET', KEYS[1], 'state') or ''
local worker = redis.call('HGET', KEYS[1], 'worker') or ''
local since = now - tonumber(ARGV[1])
local alive = 0
if worker ~= '' then
  -- The owner is '{worker id}/{run}' (inference.runner.JobRun.owner).
  local process = string.match(worker, '^(.*)/') or worker
  local seen = tonumber(redis.call('ZSCORE', KEYS[2], process) or '0')
  if seen >= since then alive = 1 end
  if alive == 1 and state == 'running'
      and tonumber(redis.call('ZSCORE', KEYS[3], ARGV[2]) or '0') < now then
    alive = 0
  end
end
return {state, worker, alive, redis.call('ZCOUNT', KEYS[2], since, '+inf')}
"""
)
