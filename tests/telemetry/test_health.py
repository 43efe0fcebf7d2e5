import pytest
from django.test import Client

from infra import redis_client


def test_health_is_ok_with_database_redis_and_workers(live):
    import httpx

    response = httpx.get(live.url + "/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["failing"] == []
    assert body["uptime_seconds"] >= 0
    assert body["version"]
    assert {name for name, check in body["checks"].items() if check["ok"]} == {
        "database",
        "redis",
        "workers",
    }
    assert body["checks"]["workers"]["live"] >= 2
    assert "workers" not in body["checks"]["workers"]  # per-worker detail is for operators


@pytest.mark.django_db
def test_operators_see_each_live_worker(live, operator):
    client = Client()
    client.force_login(operator)
    workers = client.get("/health").json()["checks"]["workers"]["workers"]
    assert len(workers) >= 2
    assert {"host", "pid", "busy", "concurrency"} <= set(workers[0])


@pytest.fixture
def redis_unreachable(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    redis_client.reset_clients()
    yield
    redis_client.reset_clients()


@pytest.mark.django_db
def test_health_is_503_naming_redis_when_redis_is_unreachable(client, redis_unreachable):
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert set(body["failing"]) == {"redis", "workers"}
    assert body["checks"]["database"]["ok"]


@pytest.mark.django_db
def test_health_is_503_naming_workers_when_none_reports(client, monkeypatch):
    monkeypatch.setattr("inference.heartbeats.WORKERS_KEY", "nebula:test:no-workers")
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["failing"] == ["workers"]
