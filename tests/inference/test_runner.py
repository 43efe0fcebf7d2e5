"""Running jobs on the worker side against real Redis, without Celery."""

import threading
import time
import uuid

import pytest

from inference.batching import EngineLoop
from inference.engine import count_tokens
from inference.jobs import CANCEL, JOB_TTL_SECONDS, job_key
from inference.runner import completion_execute
from inference.slots import slots_key, waiting_key
from inference.workers import WorkerRuntime
from infra.redis_client import get_redis
from tests.support.faults import wait_until
from tests.support.jobs import make_job, usage_events


class VirtualClock:
    """The engine loop's clock: time moves only when the loop waits for its next step, by
    exactly as long as it waits, so the schedule shows whatever the machine's speed."""

    def __init__(self):
        self.now = 0.0
        self.slept = []

    def monotonic(self):
        return self.now

    def wait(self, condition, timeout):
        if timeout is None:
            condition.wait()
            return
        self.slept.append(timeout)
        self.now += timeout


def run_timed(monkeypatch, settings, worker, listener, scale, **job_options):
    clock = VirtualClock()
    worker.engine = EngineLoop(get_redis, clock=clock)
    settings.NEBULA_SIM_TIME_SCALE = scale
    job = make_job(reply_to=listener.channel, **job_options)
    completion_execute(job, worker)
    return job, clock


def test_time_scale_zero_adds_no_waiting(monkeypatch, settings, worker, listener):
    # A 70B model on one L4 would take ~0.7 s per token at scale 1.
    job, clock = run_timed(
        monkeypatch, settings, worker, listener, 0, params_billions=70, gpu="L4", max_tokens=50
    )
    assert clock.slept == []
    (event,) = usage_events(job["id"])
    assert event["status"] == 200 and 0 < event["completion_tokens"] <= 50


def test_simulated_time_comes_from_the_hardware(monkeypatch, settings, worker, listener):
    job, clock = run_timed(monkeypatch, settings, worker, listener, 1.0, max_tokens=20)
    prefill = 2 * 7e9 * job["prompt_tokens"] / (989e12 * 0.5)
    per_token = 14e9 / (3.35e12 * 0.7)
    assert sum(clock.slept) == pytest.approx(prefill + 19 * per_token, rel=1e-3)


def test_a_13b_model_takes_longer_than_a_7b_model_on_the_same_gpu(
    monkeypatch, settings, worker, listener
):
    _, small = run_timed(monkeypatch, settings, worker, listener, 1.0, params_billions=7)
    _, big = run_timed(monkeypatch, settings, worker, listener, 1.0, params_billions=13)
    assert sum(big.slept) > sum(small.slept) * 1.8


def test_a_streaming_job_sends_start_deltas_and_done_in_order(settings, worker, listener):
    settings.NEBULA_SIM_TIME_SCALE = 0
    job = make_job(reply_to=listener.channel, max_tokens=100)
    completion_execute(job, worker)
    time.sleep(0.2)
    kinds = [m["t"] for m in listener.of(job["id"])]
    assert kinds[0] == "start" and kinds[-1] == "done" and "delta" in kinds
    deltas = listener.of(job["id"], "delta")
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    streamed = "".join(text for d in deltas for _, text in d["d"])
    usage = listener.of(job["id"], "done")[0]["usage"]
    assert usage["completion_tokens"] == count_tokens(streamed) <= 100


def test_a_non_streaming_job_sends_only_its_result(settings, worker, listener):
    settings.NEBULA_SIM_TIME_SCALE = 0
    job = make_job(reply_to=listener.channel, max_tokens=30, stream=False)
    completion_execute(job, worker)
    time.sleep(0.2)
    (done,) = listener.of(job["id"])
    assert done["t"] == "done"
    assert done["usage"]["completion_tokens"] == count_tokens(done["texts"][0]) <= 30
    (event,) = usage_events(job["id"])
    assert event["status"] == 200


def test_a_job_delivered_twice_runs_once_and_is_recorded_once(settings, worker, listener):
    settings.NEBULA_SIM_TIME_SCALE = 0
    job = make_job(reply_to=listener.channel)
    completion_execute(job, worker)
    completion_execute(job, WorkerRuntime(concurrency=8))
    time.sleep(0.2)
    assert len(listener.of(job["id"], "done")) == 1
    assert len(usage_events(job["id"])) == 1


def _run_concurrently(jobs, worker):
    threads = [threading.Thread(target=completion_execute, args=(job, worker)) for job in jobs]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # arrive in order
    return threads


def test_with_capacity_two_a_third_concurrent_job_waits(settings, worker, listener, redis_client):
    # 20B on 2×L4 decodes a token in ~95 ms; at scale 0.5, eight tokens take ~0.3 s.
    settings.NEBULA_SIM_TIME_SCALE = 0.5
    model = f"capacity-two-{uuid.uuid4().hex[:6]}"
    jobs = [
        make_job(
            reply_to=listener.channel, model=model, params_billions=20, gpu="L4", gpus=2, capacity=2
        )
        for _ in range(3)
    ]
    threads = _run_concurrently(jobs, worker)
    # Two run, one waits in line (which one: whichever thread this machine started last).
    waiting: list[bytes] = []

    def two_run_and_one_waits() -> bool:
        waiting[:] = redis_client.zrange(waiting_key(model), 0, -1)
        return redis_client.zcard(slots_key(model)) == 2 and len(waiting) == 1

    wait_until(two_run_and_one_waits, timeout=5, interval=0.01)
    waiter = waiting[0].decode()
    runners = [job["id"] for job in jobs if job["id"] != waiter]
    for thread in threads:
        thread.join()
    first_done = min(listener.at(request_id, "done") for request_id in runners)
    assert listener.at(waiter, "start") >= first_done - 0.01
    assert usage_events(waiter)[0]["queue_ms"] > 200
    assert redis_client.zcard(slots_key(model)) == 0


def test_raising_capacity_lets_a_waiting_job_in(settings, worker, listener, redis_client):
    settings.NEBULA_SIM_TIME_SCALE = 0.5
    model = f"capacity-one-{uuid.uuid4().hex[:6]}"
    redis_client.hset("nebula:capacity", model, 1)
    jobs = [
        make_job(
            reply_to=listener.channel,
            model=model,
            params_billions=20,
            gpu="L4",
            gpus=2,
            capacity=1,
            max_tokens=40,  # ~2 s: long enough to see both run at once
            ignore_eos=True,
        )
        for _ in range(2)
    ]
    threads = _run_concurrently(jobs, worker)
    wait_until(lambda: redis_client.zcard(waiting_key(model)) == 1, timeout=5, interval=0.01)
    assert redis_client.zcard(slots_key(model)) == 1
    redis_client.hset("nebula:capacity", model, 2)  # what model_scale publishes
    wait_until(lambda: redis_client.zcard(slots_key(model)) == 2, timeout=1, interval=0.01)
    for thread in threads:
        thread.join()
    redis_client.hdel("nebula:capacity", model)


def test_a_cancelled_stream_stops_within_a_token_or_two_and_frees_its_slot(
    settings, worker, listener, redis_client
):
    settings.NEBULA_SIM_TIME_SCALE = 0.5  # ~48 ms per token
    job = make_job(reply_to=listener.channel, params_billions=20, gpu="L4", gpus=2, max_tokens=500)
    thread = threading.Thread(target=completion_execute, args=(job, worker))
    thread.start()
    time.sleep(0.5)
    CANCEL(redis_client, [job_key(job["id"])], [JOB_TTL_SECONDS])
    cancelled_at = time.monotonic()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - cancelled_at < 0.2  # within a couple of ~48 ms tokens
    assert redis_client.zcard(slots_key(job["model"]["name"])) == 0
    (event,) = usage_events(job["id"])
    assert event["finish_reason"] == "cancelled" and event["status"] == 499
    assert 0 < event["completion_tokens"] < 30


def test_a_job_whose_web_process_is_gone_stops(settings, worker):
    settings.NEBULA_SIM_TIME_SCALE = 0
    job = make_job(reply_to="nebula:reply:nobody-listens", max_tokens=500)
    completion_execute(job, worker)
    (event,) = usage_events(job["id"])
    assert event["finish_reason"] == "cancelled"
    assert event["completion_tokens"] <= 1


def test_a_resent_job_keeps_its_lease_when_its_first_run_stands_down_on_the_same_worker(
    worker, redis_client
):
    # A job given up for dead can be resent and taken by another thread of the same worker
    # while its first run is still standing down. The first run ending must not stop the
    # heartbeat renewing the second run's lease, or the web process resends it again and
    # again (seen in CI: 503 worker_lost after three attempts).
    model, request_id = f"m-{uuid.uuid4().hex[:6]}", f"req_{uuid.uuid4().hex}"
    redis_client.zadd(slots_key(model), {request_id: 0})  # the second run's slot, lease lapsed
    with worker.holding_slot(model, request_id, "w/first"):
        second = worker.holding_slot(model, request_id, "w/second")
        second.__enter__()
    try:
        worker.beat()
        lease_ends_ms = redis_client.zscore(slots_key(model), request_id)
        assert lease_ends_ms > time.time() * 1000
    finally:
        second.__exit__(None, None, None)
    assert worker.busy == 0


def test_a_job_with_n_choices_holds_n_slots_and_waits_for_as_many(
    settings, worker, listener, redis_client
):
    settings.NEBULA_SIM_TIME_SCALE = 0.5  # ~48 ms per token on 20B / 2×L4
    model = f"capacity-four-{uuid.uuid4().hex[:6]}"
    options = dict(
        reply_to=listener.channel,
        model=model,
        params_billions=20,
        gpu="L4",
        gpus=2,
        capacity=4,
        max_tokens=12,
        ignore_eos=True,
    )
    now = time.time()  # the line is in order of arrival (ms): make it unambiguous
    three, two, one = (
        make_job(n=3, enqueued_at=now, **options),
        make_job(n=2, enqueued_at=now + 0.01, **options),
        make_job(enqueued_at=now + 0.02, **options),
    )
    threads = _run_concurrently([three, two, one], worker)
    # Three sequences run; the two-choice job waits for two free slots, and the one-choice job
    # behind it does not overtake it, though one slot is free.
    wait_until(
        lambda: (
            redis_client.zcard(slots_key(model)) == 3
            and redis_client.zrange(waiting_key(model), 0, -1)
            == [two["id"].encode(), one["id"].encode()]
        ),
        timeout=5,
        interval=0.01,
    )
    for thread in threads:
        thread.join()
    assert listener.at(two["id"], "start") >= listener.at(three["id"], "done") - 0.01
    assert redis_client.zcard(slots_key(model)) == 0
    assert [len(listener.of(job["id"], "done")) for job in (three, two, one)] == [1, 1, 1]
