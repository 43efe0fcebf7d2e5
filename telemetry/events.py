"""A request's usage record as producers write it: web processes for requests no model served,
workers for jobs that ran (inside the script that ends the job). `telemetry.ledger` moves these
events from the Redis stream `STREAM` into the database; Prometheus aggregates them."""

from __future__ import annotations

import time
from typing import TypedDict

import orjson

from infra.logging import redact

STREAM = "nebula:usage"
# The endpoints that generate tokens: their records have first-token and latency timings.
GENERATION_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
# Inter-token latency histogram bounds (ms), as vLLM's `time_per_output_token` buckets.
ITL_BUCKETS_MS = (10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 2500)


class UsageEvent(TypedDict):
    request_id: str
    key_id: int | None
    key_prefix: str
    model: str
    endpoint: str
    client: str
    worker: str
    status: int
    finish_reason: str
    error_code: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float | None
    ttft_ms: float | None
    latency_ms: float | None
    created_at: float  # Unix time
    itl_hist: list[int]  # counts per ITL_BUCKETS_MS bound, plus one for above the last
    itl_sum_ms: float


def usage_event(
    *,
    request_id: str,
    key_id: int | None,
    key_prefix: str,
    model: str,
    endpoint: str,
    status: int,
    client: str = "api",
    worker: str = "",
    finish_reason: str = "",
    error_code: str = "",
    stream: bool = False,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    queue_ms: float | None = None,
    ttft_ms: float | None = None,
    latency_ms: float | None = None,
    created_at: float | None = None,
    itl_hist: list[int] | None = None,
    itl_sum_ms: float = 0.0,
) -> UsageEvent:
    return {
        "request_id": request_id,
        "key_id": key_id,
        "key_prefix": key_prefix,
        # Whatever the client sent as the model name: PostgreSQL refuses NUL in text, and a
        # key pasted there must not end up in /metrics and the admin.
        "model": redact(model.replace("\x00", ""))[:256],
        "endpoint": endpoint,
        "client": client,
        "worker": worker,
        "status": status,
        "finish_reason": finish_reason,
        "error_code": error_code,
        "stream": stream,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "queue_ms": queue_ms,
        "ttft_ms": ttft_ms,
        "latency_ms": latency_ms,
        "created_at": time.time() if created_at is None else created_at,
        "itl_hist": itl_hist or [],
        "itl_sum_ms": itl_sum_ms,
    }


def itl_histogram(gaps_ms: list[float]) -> list[int]:
    counts = [0] * (len(ITL_BUCKETS_MS) + 1)
    for gap in gaps_ms:
        for index, bound in enumerate(ITL_BUCKETS_MS):
            if gap <= bound:
                counts[index] += 1
                break
        else:
            counts[-1] += 1
    return counts


def encode(event: UsageEvent) -> bytes:
    return orjson.dumps(event)
