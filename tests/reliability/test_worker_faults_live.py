"""Workers and web processes that die (kill -9) or freeze (SIGSTOP) in the middle of jobs, on the
private fault stack. What must hold: a job that has sent nothing yet is retried elsewhere; a
stream that was under way ends with an error chunk and [DONE], never duplicated tokens; the GPU
slot is freed; each request leaves exactly one usage record with the right outcome."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from telemetry.ledger import ledger_flush
from telemetry.models import UsageRecord
from tests.reliability.conftest import SLOW
from tests.support.clients import ChatCall, jobs_in, worker_pid
from tests.support.faults import wait_until

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Hello GPU, how do you serve models?"}]


def _chat(**body):
    return {"model": "slow-one", "messages": HELLO, "seed": 7, "ignore_eos": True, **body}


def _slots_in_use(faults, model="slow-one") -> int:
    return faults.redis.client().zcount(f"nebula:slots:{model}", time.time() * 1000, "+inf")


def _records(*calls):
    ledger_flush()
    return [list(UsageRecord.objects.filter(request_id=call.request_id)) for call in calls]


def test_a_killed_workers_jobs_are_retried_or_end_with_an_error(
    faults, alice, make_key, ready_model
):
    ready_model("slow-one", max_concurrent_seqs=2, **SLOW)
    _, secret = make_key(alice, rpm_limit=1000)
    survivor, victim = faults.workers
    # One worker takes every job at first; its replacement starts only once they are all its.
    survivor.kill()

    streaming = ChatCall(faults.url, secret, _chat(stream=True, max_tokens=3000)).go()
    wait_until(lambda: streaming.content_chunks >= 3, timeout=20)
    whole = ChatCall(faults.url, secret, _chat(max_tokens=400)).go()
    redis = faults.redis.client()
    wait_until(lambda: [j["state"] for j in jobs_in(redis).values()] == ["running"] * 2, timeout=20)
    waiting = ChatCall(faults.url, secret, _chat(stream=True, max_tokens=20, seed=8)).go()
    # Two jobs hold the model's two slots; the third waits for one. All on the victim.
    jobs = wait_until(
        lambda: (
            (found := jobs_in(redis))
            and sorted(job["state"] for job in found.values()) == ["running", "running", "waiting"]
            and found
        ),
        timeout=20,
    )
    assert {worker_pid(job["worker"]) for job in jobs.values()} == {victim.popen.pid}
    faults.start_worker()
    wait_until(lambda: faults.live_workers() == 2, timeout=30)

    killed_at = time.monotonic()
    victim.kill()

    # The stream under way ends with an error chunk and [DONE], soon after the worker died.
    streaming.result()
    streaming.assert_well_formed()
    assert [error["code"] for error in streaming.errors] == ["worker_lost"]
    assert streaming.finished_at - killed_at < 6
    # The jobs that had sent nothing to their clients were resent and completed.
    whole.result()
    whole.assert_well_formed()
    assert whole.status == 200 and whole.json["usage"]["completion_tokens"] == 400
    waiting.result()
    waiting.assert_well_formed()
    assert waiting.status == 200 and not waiting.errors and waiting.text

    # Exactly one record each, with what the client saw.
    (lost,), (retried,), (resent,) = _records(streaming, whole, waiting)
    assert (lost.status, lost.error_code, lost.finish_reason) == (503, "worker_lost", "error")
    # What the client received is billed: the prompt and every token the dead worker sent.
    assert lost.prompt_tokens > 0 and lost.completion_tokens >= streaming.content_chunks
    assert (retried.status, retried.completion_tokens) == (200, 400)
    assert resent.status == 200
    assert victim.popen.pid not in {worker_pid(retried.worker), worker_pid(resent.worker)}
    # The dead worker's slots are free again.
    wait_until(lambda: _slots_in_use(faults) == 0, timeout=5)

    # What streamed before the kill is exactly the start of the reply: no token twice.
    again = (
        ChatCall(faults.url, secret, _chat(max_tokens=streaming.content_chunks + 20)).go().result()
    )
    assert again.text.startswith(streaming.text)


def test_a_frozen_worker_that_wakes_up_stands_down(faults, alice, make_key, ready_model):
    ready_model("slow-one", max_concurrent_seqs=4, **SLOW)
    _, secret = make_key(alice, rpm_limit=1000)
    call = ChatCall(faults.url, secret, _chat(max_tokens=300)).go()
    redis = faults.redis.client()
    job = wait_until(
        lambda: next((j for j in jobs_in(redis).values() if j.get("state") == "running"), None),
        timeout=10,
    )
    frozen = faults.worker_by_pid(worker_pid(job["worker"]))
    frozen.popen.send_signal(signal.SIGSTOP)
    try:
        # Given up for dead, the job is resent to the other worker, which runs it.
        wait_until(lambda: call.finished_at is not None, timeout=30)
    finally:
        frozen.popen.send_signal(signal.SIGCONT)
    call.result()
    assert call.status == 200 and call.json["usage"]["completion_tokens"] == 300
    # The thawed worker finds the job is no longer its own: no second answer or record.
    time.sleep(2)
    [[record]] = _records(call)
    assert record.status == 200
    assert worker_pid(record.worker) != frozen.popen.pid
    assert jobs_in(redis)[call.request_id]["state"] == "done"


def test_a_job_whose_lease_lapses_on_a_live_worker_is_retried(faults, alice, make_key, ready_model):
    """A job thread that dies (say, on a Redis error) while its worker process lives on stops
    renewing its slot's lease; the web process takes that as the job's death. Here the lease is
    removed by hand while the thread still runs: the retry may land on the same worker, and the
    old thread must stand down rather than answer twice."""
    ready_model("slow-one", max_concurrent_seqs=4, **SLOW)
    _, secret = make_key(alice, rpm_limit=1000)
    call = ChatCall(faults.url, secret, _chat(max_tokens=300)).go()
    redis = faults.redis.client()
    request_id, first = wait_until(
        lambda: next(
            ((rid, j) for rid, j in jobs_in(redis).items() if j.get("state") == "running"), None
        ),
        timeout=10,
    )
    redis.zrem("nebula:slots:slow-one", request_id)
    call.result()
    assert call.status == 200 and call.json["usage"]["completion_tokens"] == 300
    time.sleep(1)
    [[record]] = _records(call)
    assert record.status == 200 and record.completion_tokens == 300
    assert jobs_in(redis)[request_id]["worker"] != first["worker"]


def test_with_no_worker_alive_requests_get_503_at_once(faults, alice, make_key, ready_model):
    ready_model("nebula-7b")
    _, secret = make_key(alice, rpm_limit=1000)
    for worker in faults.workers:
        worker.kill()
    wait_until(lambda: faults.live_workers() == 0, timeout=10)
    health = httpx.get(faults.url + "/health").json()
    assert health["failing"] == ["workers"]
    calls = []
    for stream in (False, True):
        started = time.monotonic()
        call = (
            ChatCall(
                faults.url, secret, {"model": "nebula-7b", "messages": HELLO, "stream": stream}
            )
            .go()
            .result()
        )
        call.assert_well_formed()
        assert call.status == 503
        assert call.json["error"]["code"] == "no_workers_available"
        assert time.monotonic() - started < 2
        calls.append(call)
    for [record] in _records(*calls):
        assert (record.status, record.error_code) == (503, "no_workers_available")


def test_a_web_process_killed_mid_stream_stops_its_job(faults, alice, make_key, ready_model):
    ready_model("slow-one", max_concurrent_seqs=1, **SLOW)
    _, secret = make_key(alice, rpm_limit=1000)
    doomed = faults.stack.webs[1]
    call = ChatCall(faults.urls[1], secret, _chat(stream=True, max_tokens=3000)).go()
    wait_until(lambda: call.content_chunks >= 5, timeout=20)
    killed_at = time.monotonic()
    doomed.kill()
    call.join(10)
    # The worker notices nobody listens any more, stops, and frees the capacity-1 model.
    redis = faults.redis.client()
    wait_until(lambda: jobs_in(redis)[call.request_id]["state"] == "cancelled", timeout=5)
    assert _slots_in_use(faults) == 0
    stopped_after = time.monotonic() - killed_at
    assert stopped_after < 3
    [[record]] = _records(call)
    assert (record.status, record.finish_reason, record.error_code) == (
        499,
        "cancelled",
        "client_gone",
    )
    assert call.content_chunks <= record.completion_tokens < 1000
    # The model serves the next request at once, through the surviving web process.
    after = ChatCall(faults.urls[0], secret, _chat(max_tokens=5)).go().result(timeout=10)
    assert after.status == 200


def test_jobs_lost_with_their_worker_and_their_web_process_are_settled_when_redelivered(
    faults, alice, make_key, ready_model
):
    """Nobody is left to notice: the worker died with the jobs claimed, and the web process that
    would have resent or failed them died too. Celery redelivers the unacknowledged jobs (after
    the visibility timeout) to a new worker, which must record each once, bill the tokens the
    dead run made, and free what it held, rather than drop them as already claimed."""
    ready_model("slow-one", max_concurrent_seqs=4, **SLOW)
    _, secret = make_key(alice, rpm_limit=1000)
    survivor, victim = faults.workers
    survivor.kill()  # every job goes to the victim
    doomed_web = faults.stack.webs[1]
    calls = [
        ChatCall(faults.urls[1], secret, _chat(stream=True, max_tokens=3000, seed=seed)).go()
        for seed in (1, 2)
    ]
    whole = ChatCall(faults.urls[1], secret, _chat(max_tokens=3000, seed=3)).go()
    wait_until(lambda: all(call.content_chunks >= 3 for call in calls), timeout=20)
    redis = faults.redis.client()
    request_ids = set(wait_until(lambda: len(found := jobs_in(redis)) == 3 and found, timeout=10))
    victim.kill()
    doomed_web.kill()
    for call in [*calls, whole]:
        call.join(10)
    # A new worker restores the dead one's unacknowledged messages once they are older than
    # its visibility timeout.
    faults.stack.start_worker(
        concurrency=16,
        extra_env={"NEBULA_VISIBILITY_TIMEOUT": "2", "NEBULA_UNACKED_RESTORE_INTERVAL": "1"},
    )
    wait_until(lambda: all(job["state"] == "failed" for job in jobs_in(redis).values()), timeout=40)
    ledger_flush()
    records = {r.request_id: r for r in UsageRecord.objects.filter(request_id__in=request_ids)}
    assert set(records) == request_ids
    for record in records.values():
        assert (record.status, record.error_code) == (503, "worker_lost")
        assert record.prompt_tokens > 0
    for call in calls:  # the tokens the streams received are billed
        assert records[call.request_id].completion_tokens >= call.content_chunks
    assert _slots_in_use(faults) == 0
    # Each job is settled once: a later delivery of the same job finds nothing to do.
    time.sleep(3)
    ledger_flush()
    assert UsageRecord.objects.filter(request_id__in=request_ids).count() == 3


def test_a_stream_its_client_left_is_recorded_even_when_its_worker_dies_before_noticing(
    faults, alice, make_key, ready_model
):
    """The web process stops a stream whose client hung up and leaves its record to the
    worker running it; that worker freezes before it notices, then dies. The redelivered job
    is settled by the next worker as what it was: cancelled by its client, tokens billed."""
    ready_model("slow-one", max_concurrent_seqs=4, **SLOW)
    _, secret = make_key(alice, rpm_limit=1000)
    survivor, victim = faults.workers
    survivor.kill()
    redis = faults.redis.client()
    with httpx.stream(
        "POST",
        faults.url + "/v1/chat/completions",
        json=_chat(stream=True, max_tokens=3000),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        victim.popen.send_signal(signal.SIGSTOP)
    # The client is gone: its web process marks the job cancelled for the (frozen) worker.
    wait_until(lambda: jobs_in(redis)[request_id]["state"] == "cancelled", timeout=10)
    victim.kill()
    faults.stack.start_worker(
        concurrency=16,
        extra_env={"NEBULA_VISIBILITY_TIMEOUT": "2", "NEBULA_UNACKED_RESTORE_INTERVAL": "1"},
    )

    def recorded():
        ledger_flush()
        return UsageRecord.objects.filter(request_id=request_id).first()

    record = wait_until(recorded, timeout=40)
    assert (record.status, record.error_code, record.finish_reason) == (
        499,
        "client_gone",
        "cancelled",
    )
    assert record.completion_tokens > 0
    assert _slots_in_use(faults) == 0
