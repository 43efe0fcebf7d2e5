"""Exact limits across web processes, and a usage ledger that loses nothing (live stack)."""

import asyncio
import contextlib
import time

import httpx
import openai
import orjson
import pytest

from inference.jobs import celery_message
from infra.redis_client import get_redis
from telemetry.ledger import ledger_flush
from telemetry.models import RefusalTally, UsageRecord
from tests.support.jobs import ReplyListener, make_job

HELLO = [{"role": "user", "content": "Hello GPU"}]
BODY = {"model": "nebula-7b", "messages": HELLO, "max_tokens": 5}


async def _fire(urls, secret, count, body=BODY):
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    urls[i % len(urls)] + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {secret}"},
                )
                for i in range(count)
            )
        )


def test_fifty_concurrent_requests_at_two_web_processes_let_exactly_ten_through(
    live, alice, make_key, ready_model
):
    ready_model()
    _, secret = make_key(alice)  # the default: 10 requests per minute
    responses = asyncio.run(_fire(live.urls, secret, 50))

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 40
    for response in responses:
        assert response.headers["X-RateLimit-Limit"] == "10"
        assert int(response.headers["X-RateLimit-Reset"]) >= time.time()
    limited = [r for r in responses if r.status_code == 429]
    for response in limited:
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert 1 <= int(response.headers["Retry-After"]) <= 6
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    # A request is earned back every 6 s: after Retry-After, exactly one more gets through.
    time.sleep(max(int(r.headers["Retry-After"]) for r in limited) + 0.2)
    again = asyncio.run(_fire(live.urls, secret, 3))
    assert sorted(r.status_code for r in again) == [200, 429, 429]


def test_two_hundred_concurrent_completions_leave_exactly_two_hundred_records(
    live, alice, make_key, ready_model
):
    ready_model(replicas=4, max_concurrent_seqs=64)
    key, secret = make_key(alice, rpm_limit=100_000)
    body = {**BODY, "max_tokens": 30, "stream": False}
    responses = asyncio.run(_fire(live.urls, secret, 200, body))
    assert {r.status_code for r in responses} == {200}

    ledger_flush()
    records = {r.request_id: r for r in UsageRecord.objects.filter(api_key=key)}
    assert len(records) == 200
    for response in responses:
        record = records[response.headers["x-request-id"]]
        usage = response.json()["usage"]
        assert (record.prompt_tokens, record.completion_tokens) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        assert record.status == 200 and record.latency_ms > 0


def test_a_job_delivered_twice_runs_once_and_leaves_one_record(live, alice, make_key):
    key, _ = make_key(alice)
    listener = ReplyListener()
    try:
        job = make_job(reply_to=listener.channel, key_id=key.pk, key_prefix=key.prefix)
        message = celery_message(job)
        get_redis().lpush("celery", message, message)  # the same job, twice, to real workers
        for _ in range(100):
            if listener.of(job["id"], "done"):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        assert len(listener.of(job["id"], "start")) == 1
        assert len(listener.of(job["id"], "done")) == 1
    finally:
        listener.close()
    ledger_flush()
    assert UsageRecord.objects.filter(request_id=job["id"]).count() == 1


def test_refused_requests_are_recorded_or_counted(live, alice, make_key, ready_model):
    """A bad request counts against the key's limit and is recorded; past the limit, good and
    bad requests alike get 429s, which are counted per minute rather than recorded one by one."""
    ready_model()
    key, secret = make_key(alice, rpm_limit=2)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    client.chat.completions.create(model="nebula-7b", messages=HELLO, max_tokens=1)
    statuses = []
    for call in (
        lambda: client.chat.completions.create(model="nebula-7b", messages=[]),
        lambda: client.chat.completions.create(model="nebula-7b", messages=HELLO),
        lambda: client.chat.completions.create(model="nebula-7b", messages=[]),
    ):
        with pytest.raises(openai.APIStatusError) as refused:
            call()
        statuses.append(refused.value.status_code)
    assert statuses == [400, 429, 429]
    ledger_flush()
    recorded = sorted(UsageRecord.objects.filter(api_key=key).values_list("status", flat=True))
    assert recorded == [200, 400]
    tallied = RefusalTally.objects.filter(api_key=key)
    assert {t.status for t in tallied} == {429} and sum(t.count for t in tallied) == 2


def test_metrics_report_what_real_requests_did(live, alice, bob, make_key, ready_model):
    ready_model()
    key, secret = make_key(alice, rpm_limit=6)
    _, bobs_secret = make_key(bob, rpm_limit=100)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    usages = [
        client.chat.completions.create(model="nebula-7b", messages=HELLO, max_tokens=8).usage
        for _ in range(5)
    ]
    for model in ("nebula-404", "nebula-7b"):
        with contextlib.suppress(openai.APIStatusError):
            client.chat.completions.create(model=model, messages=HELLO)
    openai.OpenAI(base_url=live.url + "/v1", api_key=bobs_secret).models.list()
    ledger_flush()

    report = httpx.get(live.url + "/metrics", headers={"Authorization": f"Bearer {secret}"}).json()
    (entry,) = report["keys"]
    assert entry["key"]["id"] == key.pk
    assert entry["requests"] == 7 and entry["successes"] == 5
    assert entry["errors"] == {"404": 1, "429": 1}
    assert entry["prompt_tokens"] == sum(u.prompt_tokens for u in usages)
    assert entry["completion_tokens"] == sum(u.completion_tokens for u in usages)
    assert entry["latency_ms"]["p50"] > 0 and entry["ttft_ms"]["p95"] > 0
    by_model = {m["model"]: m["requests"] for m in entry["models"]}
    assert by_model == {"nebula-7b": 6, "nebula-404": 1}
    assert sum(point["requests"] for point in entry["series"]) == 7


def test_prometheus_aggregates_every_process(live, operator, make_key, ready_model):
    ready_model()
    _, admin_secret = make_key(operator, is_admin=True, rpm_limit=1000)
    responses = asyncio.run(_fire(live.urls, admin_secret, 10, {**BODY, "max_tokens": 4}))
    tokens = sum(r.json()["usage"]["completion_tokens"] for r in responses)
    ledger_flush()
    text = httpx.get(
        live.url + "/metrics/prometheus", headers={"Authorization": f"Bearer {admin_secret}"}
    ).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['nebula:generation_tokens_total{model_name="nebula-7b"}'] >= tokens
    assert (
        samples['nebula:request_success_total{finished_reason="length",model_name="nebula-7b"}']
        >= 10
    )
    assert samples['nebula:time_to_first_token_seconds_count{model_name="nebula-7b"}'] >= 10
    assert 'nebula:e2e_request_latency_seconds_bucket{le="+Inf",model_name="nebula-7b"}' in samples
    assert samples['nebula:num_requests_running{model_name="nebula-7b"}'] == 0
    assert samples["nebula:workers_live"] >= 2
    prefix = orjson.loads(
        httpx.get(
            live.url + "/apikeys", headers={"Authorization": f"Bearer {admin_secret}"}
        ).content
    )["data"][0]["prefix"]
    assert f'nebula:requests_total{{key_prefix="{prefix}",status="200"}}' in samples
    assert admin_secret not in text


def test_a_token_limit_is_enforced_with_its_headers(live, alice, make_key, ready_model):
    ready_model()
    _, secret = make_key(alice, rpm_limit=100, tpm_limit=250)
    headers = {"Authorization": f"Bearer {secret}"}
    body = {**BODY, "max_tokens": 100, "ignore_eos": True}
    url = live.url + "/v1/chat/completions"

    first = httpx.post(url, json=body, headers=headers, timeout=30)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "250"
    used = first.json()["usage"]["total_tokens"]
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 250 - used

    second = httpx.post(url, json=body, headers=headers, timeout=30)
    assert second.status_code == 200  # two requests of ~110 tokens fit in 250 a minute
    third = httpx.post(url, json=body, headers=headers, timeout=30)
    assert third.status_code == 429
    assert third.headers["x-ratelimit-remaining-tokens"] != "250"
    assert int(third.headers["Retry-After"]) >= 1
    # OpenAI's way: which limit refused it, and its figures.
    error = third.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert error["message"].startswith(
        "Rate limit reached for this API key on tokens per min (TPM): Limit 250, Used "
    )

    too_big = httpx.post(url, json={**body, "max_tokens": 1000}, headers=headers, timeout=30)
    assert too_big.status_code == 429
    error = too_big.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert "Request too large on tokens per min (TPM): Limit 250, Requested" in error["message"]
