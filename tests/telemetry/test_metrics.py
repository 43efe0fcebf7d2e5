"""/metrics: usage per key, and who may see which."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from telemetry.models import UsageRecord

pytestmark = pytest.mark.django_db

_counter = iter(range(1_000_000))


def record(
    key,
    *,
    status=200,
    model="nebula-7b",
    minutes_ago=1,
    latency=100.0,
    ttft=10.0,
    prompt=10,
    completion=20,
    endpoint="/v1/chat/completions",
    **extra,
):
    return UsageRecord.objects.create(
        request_id=f"req_test{next(_counter)}",
        api_key=key,
        key_prefix=key.prefix if key else "",
        model=model,
        endpoint=endpoint,
        status=status,
        latency_ms=latency if status == 200 else None,
        ttft_ms=ttft if status == 200 else None,
        prompt_tokens=prompt if status == 200 else 0,
        completion_tokens=completion if status == 200 else 0,
        created_at=timezone.now() - timedelta(minutes=minutes_ago),
        **extra,
    )


@pytest.fixture
def usage(alice, bob, make_key):
    alice_a, alice_a_secret = make_key(alice, name="alice-a")
    alice_b, _ = make_key(alice, name="alice-b")
    bobs, bobs_secret = make_key(bob, name="bob-1")
    for _ in range(3):
        record(alice_a)
    record(alice_a, status=429)
    record(alice_b, model="nebula-13b")
    record(bobs, completion=500)
    return {"alice_a": (alice_a, alice_a_secret), "bob": (bobs, bobs_secret)}


def names(report):
    return sorted(entry["key"]["name"] for entry in report["keys"])


def test_a_key_sees_only_its_own_usage(client, usage):
    _, secret = usage["alice_a"]
    report = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    assert names(report) == ["alice-a"]
    assert report["totals"]["requests"] == 4
    assert report["totals"]["completion_tokens"] == 60


def test_a_user_sees_all_of_their_keys_and_nobody_elses(client, usage, alice):
    client.force_login(alice)
    report = client.get("/metrics").json()
    assert names(report) == ["alice-a", "alice-b"]
    assert report["totals"]["requests"] == 5
    assert "bob-1" not in str(report)


def test_a_key_cannot_ask_for_another_keys_usage(client, usage):
    bobs, _ = usage["bob"]
    _, alice_secret = usage["alice_a"]
    report = client.get(
        f"/metrics?key={bobs.pk}", HTTP_AUTHORIZATION=f"Bearer {alice_secret}"
    ).json()
    assert report["keys"] == [] and report["totals"]["requests"] == 0


def test_operators_and_admin_keys_see_everyone(client, usage, operator, make_key):
    client.force_login(operator)
    assert names(client.get("/metrics").json()) == ["alice-a", "alice-b", "bob-1"]
    client.logout()
    _, admin_secret = make_key(operator, is_admin=True)
    report = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {admin_secret}").json()
    assert report["totals"]["requests"] == 6


def test_the_report_counts_errors_tokens_and_percentiles(client, alice, make_key):
    key, secret = make_key(alice)
    for latency in (100, 200, 300, 400):
        record(key, latency=latency, ttft=latency / 10)
    record(key, status=429)
    record(key, status=404, model="missing")
    entry = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {secret}").json()["keys"][0]
    assert entry["requests"] == 6 and entry["successes"] == 4
    assert entry["errors"] == {"404": 1, "429": 1}
    assert entry["rate_limited"] == 1
    assert entry["prompt_tokens"] == 40 and entry["completion_tokens"] == 80
    assert entry["latency_ms"] == {"p50": 200.0, "p95": 400.0}
    assert entry["ttft_ms"] == {"p50": 20.0, "p95": 40.0}
    models = {m["model"]: m["requests"] for m in entry["models"]}
    assert models == {"nebula-7b": 5, "missing": 1}


def test_text_completions_count_in_the_latency_percentiles_and_others_do_not(
    client, alice, make_key
):
    key, secret = make_key(alice)
    record(key, latency=100, ttft=10)
    record(key, latency=300, ttft=30, endpoint="/v1/completions")
    record(key, latency=9000, ttft=None, endpoint="/v1/models")
    entry = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {secret}").json()["keys"][0]
    assert entry["latency_ms"]["p95"] == 300.0 and entry["ttft_ms"]["p95"] == 30.0


def test_the_series_has_a_point_per_minute_for_the_last_hour(client, alice, make_key):
    key, secret = make_key(alice)
    record(key, minutes_ago=2)
    record(key, minutes_ago=2)
    record(key, minutes_ago=90)  # outside the hour
    series = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {secret}").json()["series"]
    assert len(series) == 60
    assert sum(point["requests"] for point in series) == 2
    assert max(point["requests"] for point in series) == 2


def test_the_time_range_can_be_chosen(client, alice, make_key):
    key, secret = make_key(alice)
    record(key, minutes_ago=30)
    record(key, minutes_ago=60 * 30)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert client.get("/metrics?window=1h", **auth).json()["totals"]["requests"] == 1
    assert client.get("/metrics?window=7d", **auth).json()["totals"]["requests"] == 2
    since = (timezone.now() - timedelta(hours=2)).isoformat()
    assert client.get("/metrics", {"since": since}, **auth).json()["totals"]["requests"] == 1


@pytest.mark.parametrize(
    "query", ["window=forever", "since=yesterday", "since=2030-01-01T00:00:00Z", "window=0h"]
)
def test_bad_time_ranges_get_400(client, alice, make_key, query):
    _, secret = make_key(alice)
    response = client.get(f"/metrics?{query}", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 400
    assert response.json()["error"]["param"] in {"since", "window", "until"}


def test_metrics_need_authentication(client):
    assert Client().get("/metrics").status_code == 401


def test_prometheus_is_for_operators(client, alice, operator, make_key):
    _, user_secret = make_key(alice)
    assert (
        client.get("/metrics/prometheus", HTTP_AUTHORIZATION=f"Bearer {user_secret}").status_code
        == 403
    )
    client.force_login(operator)
    response = client.get("/metrics/prometheus")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "nebula:workers_live" in response.content.decode()
