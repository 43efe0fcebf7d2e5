"""The official `openai` client against the live stack (daphne + Celery workers) in front of a
real HTTP engine on loopback: the openai-compatible backend end to end, faults included."""

import json
import time

import httpx
import openai
import pytest

from telemetry.ledger import ledger_flush
from telemetry.models import UsageRecord
from tests.support.clients import ChatCall
from tests.support.faults import wait_until
from tests.support.stack import free_port
from tests.support.upstream import EngineProcess, deploy_upstream, forget_upstream_state


@pytest.fixture
def secret(live, alice, make_key, redis_client):
    forget_upstream_state(redis_client)
    _, key = make_key(alice, rpm_limit=10_000)
    return key


def records(request_id=None):
    ledger_flush()
    found = UsageRecord.objects.all()
    return list(found.filter(request_id=request_id) if request_id else found)


def ask(content):
    return [{"role": "user", "content": content}]


def test_the_openai_client_gets_the_engines_answer_streaming_and_not(
    live, secret, engine, openai_client
):
    deploy_upstream(engine.url, name="llama-live", upstream_api_key="sk-live-upstream")
    engine.control(require_key="sk-live-upstream")
    client = openai_client(secret)

    completion = client.chat.completions.create(
        model="llama-live", messages=ask("three words here [[tokens=4]]")
    )
    assert completion.model == "llama-live"  # Nebula's name, not the engine's
    assert completion.choices[0].message.content == "w0 w1 w2 w3 "
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 4)

    chunks = list(
        client.chat.completions.create(
            model="llama-live",
            messages=ask("stream [[tokens=6]]"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 w4 w5 "
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].choices == []
    assert {c.model for c in chunks} == {"llama-live"}

    listed = [m.id for m in client.models.list()]
    assert "llama-live" in listed

    by_status = [(r.status, r.completion_tokens, r.prompt_tokens) for r in records()]
    assert sorted(by_status) == sorted([(200, 4, 4), (200, 6, 2), (200, 0, 0)])
    assert all(e["authorization"] == "Bearer sk-live-upstream" for e in engine.log)


def test_tool_calls_reach_the_openai_client(live, secret, engine, openai_client):
    deploy_upstream(engine.url, name="llama-tools")
    client = openai_client(secret)
    completion = client.chat.completions.create(
        model="llama-tools", messages=ask("weather in Paris? [[tool_call]]")
    )
    (call,) = completion.choices[0].message.tool_calls
    assert (call.id, call.function.name) == ("call_test_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.content is None

    stream = client.chat.completions.create(
        model="llama-tools", messages=ask("weather? [[tool_call]]"), stream=True
    )
    arguments, names = "", []
    for chunk in stream:
        for choice in chunk.choices:
            for part in choice.delta.tool_calls or []:
                names += [part.function.name] if part.function.name else []
                arguments += part.function.arguments or ""
    assert names == ["get_weather"] and json.loads(arguments) == {"city": "Paris"}


def test_the_engines_400_reaches_the_client_as_a_400_with_its_message(
    live, secret, engine, openai_client
):
    deploy_upstream(engine.url, name="llama-400")
    client = openai_client(secret)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="llama-400", messages=ask("[[status=400]]"))
    assert refused.value.body["message"] == "test upstream says 400"
    with pytest.raises(openai.BadRequestError):  # streaming: still a status, not a chunk
        client.chat.completions.create(
            model="llama-400", messages=ask("[[status=400]]"), stream=True
        )
    assert [r.status for r in records()] == [400, 400]


def test_an_engine_nobody_can_reach_is_a_503_upstream_unavailable(live, secret, openai_client):
    deploy_upstream(f"http://127.0.0.1:{free_port()}", name="llama-gone")
    client = openai_client(secret)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="llama-gone", messages=ask("hello"), stream=True)
    assert time.monotonic() - started < 5
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "upstream_unavailable"
    (record,) = records()
    assert (record.status, record.error_code) == (503, "upstream_unavailable")


def test_an_engine_killed_mid_stream_ends_the_stream_with_an_error_and_a_record(live, secret):
    engine = EngineProcess(free_port())
    try:
        deploy_upstream(engine.url, name="llama-killed")
        call = ChatCall(
            live.url,
            secret,
            {
                "model": "llama-killed",
                "messages": ask("long [[tokens=500]] [[delay=0.02]]"),
                "stream": True,
            },
        ).go()
        wait_until(lambda: call.content_chunks >= 5, timeout=10)
        engine.kill()
        call.result(timeout=10)
    finally:
        engine.kill()
    call.assert_well_formed()
    (error,) = call.errors
    assert error["code"] == "upstream_disconnected"
    (record,) = records(call.request_id)
    assert record.status == 502 and record.completion_tokens >= 5


def test_a_hung_engine_ends_the_stream_after_the_read_timeout(live, secret, engine):
    deploy_upstream(engine.url, name="llama-hung", read_timeout=1.5)
    call = ChatCall(
        live.url,
        secret,
        {
            "model": "llama-hung",
            "messages": ask("x [[tokens=50]] [[hang_after=3]]"),
            "stream": True,
        },
    ).go()
    started = time.monotonic()
    call.result(timeout=15)
    assert time.monotonic() - started < 6
    call.assert_well_formed()
    assert call.errors[0]["code"] == "upstream_timeout"
    assert records(call.request_id)[0].status == 504


def test_a_client_hanging_up_cancels_the_engines_request(live, secret, engine):
    deploy_upstream(engine.url, name="llama-hangup")
    body = {
        "model": "llama-hangup",
        "messages": ask("x [[tokens=500]] [[delay=0.02]]"),
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.stream(
        "POST", live.url + "/v1/chat/completions", json=body, headers=headers, timeout=10
    ) as response:
        for index, _ in enumerate(response.iter_lines()):
            if index > 10:
                break
    wait_until(lambda: engine.log and engine.log[0]["disconnected"], timeout=5)
    wait_until(lambda: records(), timeout=5)
    (record,) = records()
    assert (record.status, record.finish_reason) == (499, "cancelled")
    assert 0 < record.completion_tokens < 500


def test_the_workers_probe_the_engines_and_operators_see_it(
    live, secret, engine, operator, make_key
):
    down = f"http://127.0.0.1:{free_port()}"
    deploy_upstream(engine.url, down, name="llama-probed")
    _, admin = make_key(operator, is_admin=True)

    def health():
        body = httpx.get(
            live.url + "/models/llama-probed", headers={"Authorization": f"Bearer {admin}"}
        ).json()
        return {r["url"]: r["health"] for r in body["upstream"]["replicas"]}

    # A worker's prober thread (NEBULA_UPSTREAM_PROBE_INTERVAL, 2 s) finds one up, one down.
    assert wait_until(lambda: "unknown" not in health().values() and health(), timeout=10) == {
        engine.url: "healthy",
        down: "down",
    }
    engine.control(health_status=503)
    wait_until(lambda: health()[engine.url] == "down", timeout=10)
    engine.control(health_status=200)
    wait_until(lambda: health()[engine.url] == "healthy", timeout=10)
