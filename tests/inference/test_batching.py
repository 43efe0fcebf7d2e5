"""The worker's engine loop (inference.batching): one loop runs every sequence of the process,
a step at a time, against the real test Redis."""

import threading
import time
import uuid

from inference.batching import EngineLoop
from inference.jobs import CANCEL, JOB_TTL_SECONDS, job_key
from inference.runner import completion_execute
from inference.workers import WorkerRuntime
from infra.redis_client import get_redis
from tests.inference.test_runner import VirtualClock
from tests.support.faults import wait_until
from tests.support.jobs import ReplyListener, make_job, usage_events

# 20B on 2×L4: ~95 ms a token at full time scale.
SLOW = {"params_billions": 20, "gpu": "L4", "gpus": 2, "ignore_eos": True}


def _start(jobs, worker):
    threads = [threading.Thread(target=completion_execute, args=(job, worker)) for job in jobs]
    for thread in threads:
        thread.start()
    return threads


def test_one_loop_runs_every_sequence_and_a_newcomer_gets_its_first_token_first(settings):
    settings.NEBULA_SIM_TIME_SCALE = 1.0
    worker = WorkerRuntime(concurrency=32)
    clock = VirtualClock()
    worker.engine = EngineLoop(get_redis, clock=clock)
    listener = ReplyListener()
    try:
        model = f"batch-{uuid.uuid4().hex[:6]}"
        running = [
            make_job(reply_to=listener.channel, model=model, capacity=32, max_tokens=40, **SLOW)
            for _ in range(8)
        ]
        threads = _start(running, worker)
        wait_until(lambda: all(listener.of(j["id"], "delta") for j in running), timeout=10)
        names = {thread.name for thread in threading.enumerate()}
        assert sum(name == "nebula-engine" for name in names) == 1
        newcomer = make_job(
            reply_to=listener.channel, model=model, capacity=32, max_tokens=40, **SLOW
        )
        threads += _start([newcomer], worker)
        wait_until(lambda: listener.of(newcomer["id"], "delta"), timeout=10)
        first = listener.at(newcomer["id"], "delta")
        before = {
            j["id"]: len([m for t, m in listener.messages if m["r"] == j["id"] and t <= first])
            for j in running
        }
        for thread in threads:
            thread.join(timeout=30)
        # Its prefill is shorter than a decode step: its first token came before any running
        # sequence's next one, from the same loop.
        after = {
            j["id"]: len([m for t, m in listener.messages if m["r"] == j["id"] and t <= first])
            for j in running
        }
        assert after == before
        for job in [*running, newcomer]:
            (event,) = usage_events(job["id"])
            assert (event["status"], event["completion_tokens"]) == (200, 40)
    finally:
        listener.close()


def test_a_cancelled_sequence_leaves_the_batch_and_the_others_finish(settings, redis_client):
    settings.NEBULA_SIM_TIME_SCALE = 0.2  # ~19 ms a token
    worker = WorkerRuntime(concurrency=8)
    listener = ReplyListener()
    try:
        model = f"batch-{uuid.uuid4().hex[:6]}"
        jobs = [
            make_job(reply_to=listener.channel, model=model, capacity=8, max_tokens=60, **SLOW)
            for _ in range(3)
        ]
        threads = _start(jobs, worker)
        wait_until(lambda: all(listener.of(j["id"], "delta") for j in jobs), timeout=10)
        CANCEL(redis_client, [job_key(jobs[1]["id"])], [JOB_TTL_SECONDS])
        cancelled_at = time.monotonic()
        threads[1].join(timeout=5)
        assert time.monotonic() - cancelled_at < 0.2
        for thread in threads:
            thread.join(timeout=30)
        statuses = [usage_events(job["id"])[0]["status"] for job in jobs]
        assert statuses == [200, 499, 200]
        assert worker.engine.running == 0
    finally:
        listener.close()
