"""The openai-compatible backend on the worker side: jobs relayed to a real HTTP engine (the
test upstream, on loopback) through the runner, against real Redis, without Celery."""

import threading
import time

import pytest

from inference.jobs import CANCEL, JOB_TTL_SECONDS, job_key
from inference.runner import completion_execute
from inference.schemas import parse_chat_request
from inference.services import upstream_body
from inference.slots import slots_key
from models_registry import upstreams
from tests.support.faults import wait_until
from tests.support.jobs import make_job, usage_events
from tests.support.stack import free_port
from tests.support.upstream import deploy_upstream, forget_upstream_state

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_upstream_state(redis_client):
    forget_upstream_state(redis_client)


def deploy(*urls, **options):
    return deploy_upstream(*urls, **options)


def upstream_job(model, listener, content="hello there [[tokens=4]]", stream=True, **body):
    job = make_job(
        model=model.name,
        capacity=model.capacity,
        reply_to=listener.channel,
        stream=stream,
    )
    job["model"]["backend"] = "openai-compatible"
    job["upstream"] = {
        "deployment_id": model.pk,
        "body": {"messages": [{"role": "user", "content": content}], **body},
    }
    return job


def run(job, worker):
    completion_execute(job, worker)
    time.sleep(0.1)  # the listener's thread takes the last messages off the channel


def streamed_text(listener, job):
    return "".join(text for d in listener.of(job["id"], "delta") for _, text in d["d"])


def test_a_stream_from_the_engine_arrives_as_start_deltas_and_done(
    engine, worker, listener, redis_client
):
    model = deploy(engine.url)
    job = upstream_job(model, listener, "one two three [[tokens=4]]")
    run(job, worker)
    kinds = [m["t"] for m in listener.of(job["id"])]
    assert kinds[0] == "start" and kinds[-1] == "done" and "delta" in kinds
    deltas = listener.of(job["id"], "delta")
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert streamed_text(listener, job) == "w0 w1 w2 w3 "
    assert [f for d in deltas for f in d["f"]] == [[0, "stop"]]
    (done,) = listener.of(job["id"], "done")
    # Usage is the engine's own count (the test engine counts words: 4 in the prompt;
    # Nebula's estimate in the job was 10).
    assert done["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    (event,) = usage_events(job["id"])
    assert event["status"] == 200
    assert (event["prompt_tokens"], event["completion_tokens"]) == (4, 4)
    assert event["ttft_ms"] is not None
    # The engine got its own model name, and was asked to stream with usage.
    (seen,) = engine.log
    assert seen["body"]["model"] == "test-upstream-model"
    assert seen["body"]["stream"] is True
    assert seen["body"]["stream_options"] == {"include_usage": True}
    assert seen["finished"]
    assert redis_client.zcard(slots_key(model.name)) == 0
    assert all(
        redis_client.zcard(upstreams.inflight_key(r.pk)) == 0 for r in model.upstream_replicas.all()
    )


def test_a_non_streaming_job_gets_the_whole_answer_at_the_end(engine, worker, listener):
    model = deploy(engine.url)
    job = upstream_job(model, listener, "hi [[tokens=3]]", stream=False)
    run(job, worker)
    (done,) = listener.of(job["id"])
    assert done["t"] == "done"
    assert done["texts"] == ["w0 w1 w2 "]
    assert done["ttft_ms"] > 0
    assert engine.log[0]["body"]["stream"] is True  # streamed from the engine all the same


def test_several_choices_are_relayed_by_index(engine, worker, listener):
    model = deploy(engine.url)
    job = upstream_job(model, listener, "hi [[tokens=2]]", stream=False, n=2)
    job["n"] = 2
    run(job, worker)
    (done,) = listener.of(job["id"])
    assert done["texts"] == ["w0 w1 ", "w0 w1 "]
    assert done["usage"]["completion_tokens"] == 4


def test_tool_calls_and_logprobs_are_relayed(engine, worker, listener):
    model = deploy(engine.url)
    streaming = upstream_job(model, listener, "weather? [[tool_call]]")
    run(streaming, worker)
    parts = [entry for d in listener.of(streaming["id"], "delta") for entry in d.get("tc", [])]
    assert parts[0][1][0]["function"]["name"] == "get_weather"
    arguments = "".join(call["function"]["arguments"] for _, calls in parts for call in calls)
    assert arguments == '{"city": "Paris"}'
    assert [f for d in listener.of(streaming["id"], "delta") for f in d["f"]] == [[0, "tool_calls"]]

    whole = upstream_job(model, listener, "weather? [[tool_call]]", stream=False)
    run(whole, worker)
    (done,) = listener.of(whole["id"])
    assert done["tool_calls"] == [
        [
            {
                "id": "call_test_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ]
    ]
    assert done["finish"] == ["tool_calls"]

    scored = upstream_job(model, listener, "hi [[tokens=2]] [[logprobs]]", stream=False)
    run(scored, worker)
    (done,) = listener.of(scored["id"])
    assert [entry["token"] for entry in done["logprobs"][0]] == ["w0 ", "w1 "]
    streamed = upstream_job(model, listener, "hi [[tokens=2]] [[logprobs]]")
    run(streamed, worker)
    lp = [entry for d in listener.of(streamed["id"], "delta") for entry in d.get("lp", [])]
    assert [e["logprob"] for _, entries in lp for e in entries] == [-0.25, -0.25]


def test_a_legacy_function_call_is_relayed_as_call_zero(engine, worker, listener):
    model = deploy(engine.url)
    streaming = upstream_job(model, listener, "weather? [[function_call]]")
    run(streaming, worker)
    parts = [entry for d in listener.of(streaming["id"], "delta") for entry in d.get("tc", [])]
    assert parts[0][1][0] == {
        "index": 0,
        "function": {"name": "get_weather", "arguments": '{"city": '},
    }
    arguments = "".join(call["function"]["arguments"] for _, calls in parts for call in calls)
    assert arguments == '{"city": "Paris"}'
    finishes = [f for d in listener.of(streaming["id"], "delta") for f in d["f"]]
    assert finishes == [[0, "function_call"]]

    whole = upstream_job(model, listener, "weather? [[function_call]]", stream=False)
    run(whole, worker)
    (done,) = listener.of(whole["id"])
    (calls,) = done["tool_calls"]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert done["finish"] == ["function_call"]


def test_an_engine_that_answers_json_to_a_stream_request_is_understood(engine, worker, listener):
    model = deploy(engine.url)
    job = upstream_job(model, listener, "hi [[tokens=3]] [[json]]")
    run(job, worker)
    assert streamed_text(listener, job) == "w0 w1 w2 "
    assert listener.of(job["id"], "done")[0]["usage"]["completion_tokens"] == 3


def test_the_engines_400_keeps_its_status_and_message(engine, worker, listener):
    model = deploy(engine.url)
    job = upstream_job(model, listener, "[[status=400]]")
    run(job, worker)
    (error,) = listener.of(job["id"])
    assert error["t"] == "error"
    assert error["status"] == 400
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "test upstream says 400"
    (event,) = usage_events(job["id"])
    assert event["status"] == 400 and event["completion_tokens"] == 0


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [
        (429, 429, "upstream_rate_limited"),
        (500, 502, "upstream_error"),
        (503, 503, "upstream_unavailable"),
        (401, 502, "upstream_auth_failed"),
    ],
)
def test_engine_errors_map_to_statuses_that_say_whose_fault_it_is(
    engine, worker, listener, status, expected, code
):
    model = deploy(engine.url)
    job = upstream_job(model, listener, f"[[status={status}]]")
    run(job, worker)
    (error,) = listener.of(job["id"])
    assert (error["status"], error["code"]) == (expected, code)
    assert usage_events(job["id"])[0]["status"] == expected


def test_a_refused_connection_is_a_503_and_takes_the_replica_out(worker, listener, redis_client):
    model = deploy(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    job = upstream_job(model, listener)
    started = time.monotonic()
    run(job, worker)
    assert time.monotonic() - started < 3
    (error,) = listener.of(job["id"])
    assert (error["status"], error["code"]) == (503, "upstream_unavailable")
    replica = model.upstream_replicas.get()
    assert redis_client.hget(upstreams.health_key(model.pk), str(replica.pk)) == b"0"
    (event,) = usage_events(job["id"])
    assert (event["status"], event["error_code"]) == (503, "upstream_unavailable")


def test_a_replica_failing_before_the_first_token_is_retried_on_another(
    engine, second_engine, worker, listener, redis_client
):
    engine.control(fail_status=500)
    model = deploy(engine.url, second_engine.url)
    job = upstream_job(model, listener, "hi [[tokens=2]]")
    run(job, worker)
    assert streamed_text(listener, job) == "w0 w1 "
    assert usage_events(job["id"])[0]["status"] == 200
    assert len(engine.log) == 1 and len(second_engine.log) == 1
    first = model.upstream_replicas.get(position=0)
    assert redis_client.hget(upstreams.health_key(model.pk), str(first.pk)) == b"0"

    # Now it is out of the rotation: the next request goes straight to the other one.
    job = upstream_job(model, listener, "hi [[tokens=2]]")
    run(job, worker)
    assert len(engine.log) == 1 and len(second_engine.log) == 2


def test_an_engine_dying_mid_stream_ends_the_stream_with_an_error(
    engine, second_engine, worker, listener
):
    # Not retried elsewhere once tokens reached the client (the second engine stays unused).
    model = deploy(engine.url, second_engine.url)
    job = upstream_job(model, listener, "hi [[tokens=10]] [[die_after=3]] [[delay=0.02]]")
    run(job, worker)
    messages = listener.of(job["id"])
    assert messages[-1]["t"] == "error"
    assert messages[-1]["code"] == "upstream_disconnected"
    assert streamed_text(listener, job) == "w0 w1 w2 "
    (event,) = usage_events(job["id"])
    assert (event["status"], event["completion_tokens"]) == (502, 3)
    assert second_engine.log == []


def test_an_engine_dying_before_the_first_token_is_retried(engine, second_engine, worker, listener):
    engine.control(die_after=0)
    model = deploy(engine.url, second_engine.url)
    job = upstream_job(model, listener, "hi [[tokens=2]]")
    run(job, worker)
    assert streamed_text(listener, job) == "w0 w1 "
    assert len(engine.log) == 1 and len(second_engine.log) == 1
    assert usage_events(job["id"])[0]["status"] == 200


def test_a_hung_engine_is_a_504_after_the_read_timeout(engine, worker, listener):
    model = deploy(engine.url, read_timeout=1)
    job = upstream_job(model, listener, "hi [[tokens=10]] [[hang_after=2]]")
    started = time.monotonic()
    run(job, worker)
    assert time.monotonic() - started < 3
    messages = listener.of(job["id"])
    assert messages[-1]["t"] == "error" and messages[-1]["code"] == "upstream_timeout"
    (event,) = usage_events(job["id"])
    assert (event["status"], event["completion_tokens"]) == (504, 2)
    wait_until(lambda: engine.log[0]["disconnected"], timeout=2)  # the engine was told


def test_garbage_from_the_engine_is_a_502(engine, worker, listener):
    model = deploy(engine.url)
    job = upstream_job(model, listener, "[[garbage]]")
    run(job, worker)
    (error,) = [m for m in listener.of(job["id"]) if m["t"] == "error"]
    assert (error["status"], error["code"]) == (502, "upstream_bad_response")
    assert usage_events(job["id"])[0]["status"] == 502


@pytest.mark.django_db(transaction=True)  # the job runs on a thread of its own
def test_a_cancelled_stream_closes_the_engines_request(engine, worker, listener, redis_client):
    model = deploy(engine.url)
    job = upstream_job(model, listener, "hi [[tokens=200]] [[delay=0.02]]")
    thread = threading.Thread(target=completion_execute, args=(job, worker))
    thread.start()
    wait_until(lambda: len(listener.of(job["id"], "delta")) >= 3, timeout=5)
    CANCEL(redis_client, [job_key(job["id"])], [JOB_TTL_SECONDS])
    thread.join(timeout=3)
    assert not thread.is_alive()
    wait_until(lambda: engine.log[0]["disconnected"], timeout=2)
    (event,) = usage_events(job["id"])
    assert (event["status"], event["finish_reason"]) == (499, "cancelled")
    assert 3 <= event["completion_tokens"] < 100


@pytest.mark.django_db(transaction=True)  # the job runs on a thread of its own
def test_a_non_streaming_job_cancelled_while_the_engine_is_quiet_stops_too(
    engine, worker, listener, redis_client
):
    model = deploy(engine.url)
    job = upstream_job(model, listener, "hi [[first_delay=30]]", stream=False)
    thread = threading.Thread(target=completion_execute, args=(job, worker))
    thread.start()
    wait_until(lambda: len(engine.log) == 1, timeout=5)
    CANCEL(redis_client, [job_key(job["id"])], [JOB_TTL_SECONDS])
    thread.join(timeout=2)
    assert not thread.is_alive()
    wait_until(lambda: engine.log[0]["disconnected"], timeout=2)
    assert usage_events(job["id"])[0]["status"] == 499


def test_the_upstream_key_is_sent_as_a_bearer_token_and_never_quoted_back(engine, worker, listener):
    engine.control(require_key="sk-upstream-secret-123")
    model = deploy(engine.url, upstream_api_key="sk-upstream-secret-123")
    job = upstream_job(model, listener, "hi [[tokens=1]]")
    run(job, worker)
    assert engine.log[0]["authorization"] == "Bearer sk-upstream-secret-123"
    assert streamed_text(listener, job) == "w0 "


@pytest.mark.django_db(transaction=True)  # the job runs on a thread of its own
def test_requests_spread_over_replicas_by_load(engine, second_engine, worker, listener):
    model = deploy(engine.url, second_engine.url)
    jobs = [upstream_job(model, listener, "hi [[tokens=10]] [[delay=0.05]]") for _ in range(4)]
    threads = [threading.Thread(target=completion_execute, args=(j, worker)) for j in jobs]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=10)
    assert (len(engine.log), len(second_engine.log)) == (2, 2)


def test_requests_to_an_engine_reuse_one_connection(engine, worker, listener):
    model = deploy(engine.url)
    for stream in (True, False, True):
        run(upstream_job(model, listener, "hi [[tokens=3]]", stream=stream), worker)
    assert len({entry["client_port"] for entry in engine.log}) == 1


def test_an_engine_gets_the_clients_parameters_with_max_tokens_under_its_usual_name():
    request = parse_chat_request(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true,'
        b' "stream_options": {"include_usage": false}, "max_completion_tokens": 7,'
        b' "temperature": 0.5, "seed": 3, "stop": ["x"], "ignore_eos": true}'
    )
    assert upstream_body(request) == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 7,
        "temperature": 0.5,
        "seed": 3,
        "stop": ["x"],
        "ignore_eos": True,
    }
