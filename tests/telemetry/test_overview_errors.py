"""The overview tells client errors (4xx) from server errors (5xx), and only a share of server
errors over the last minutes makes the service "degraded"."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from keys.access import actor_for_user
from telemetry import services
from telemetry.models import UsageRecord
from telemetry.services import overview_report

pytestmark = pytest.mark.django_db

_counter = iter(range(1_000_000))


@pytest.fixture(autouse=True)
def _checks_pass(monkeypatch):
    """Database, Redis and workers all fine: what is left to judge is the traffic."""
    healthy = {
        "status": "ok", "failing": [], "uptime_seconds": 1.0, "version": "test",
        "mode": "distributed", "checks": {"workers": {"ok": True, "live": 1, "latency_ms": 1.0}},
    }  # fmt: skip
    monkeypatch.setattr(services, "health_report", lambda detailed: (True, dict(healthy)))
    monkeypatch.setattr(services, "fleet_snapshot", lambda actor: [])


def traffic(key: Any, status: int, count: int, *, minutes_ago: float = 1) -> None:
    for _ in range(count):
        UsageRecord.objects.create(
            request_id=f"req_ov{next(_counter)}", api_key=key, key_prefix=key.prefix,
            model="nebula-7b", endpoint="/v1/chat/completions", status=status,
            created_at=timezone.now() - timedelta(minutes=minutes_ago),
        )  # fmt: skip


def test_client_errors_are_counted_apart_and_never_degrade(operator, alice, make_key):
    key, _ = make_key(alice)
    traffic(key, 200, 5)
    traffic(key, 429, 30)
    traffic(key, 400, 10)
    traffic(key, 499, 5)
    report = overview_report(actor=actor_for_user(operator))
    assert report["health"]["ok"] is True and report["health"]["status"] == "ok"
    t = report["traffic"]
    assert (t["client_errors"], t["server_errors"]) == (45, 0)
    assert t["client_error_rate"] == pytest.approx(0.9)
    assert t["server_error_rate"] == 0.0


def test_a_share_of_server_errors_degrades_the_service(operator, alice, make_key):
    key, _ = make_key(alice)
    traffic(key, 200, 10)
    traffic(key, 503, 4)
    traffic(key, 500, 2)
    report = overview_report(actor=actor_for_user(operator))
    health = report["health"]
    assert health["ok"] is False and health["status"] == "degraded"
    assert health["failing"] == ["server errors (38% in 5 min)"]
    assert report["traffic"]["server_errors"] == 6


def test_a_few_server_errors_or_old_ones_do_not_degrade(operator, alice, make_key):
    key, _ = make_key(alice)
    traffic(key, 500, 4)  # under NEBULA_DEGRADED_MIN_5XX
    traffic(key, 502, 20, minutes_ago=30)  # in the hour, but not in the last five minutes
    report = overview_report(actor=actor_for_user(operator))
    assert report["health"]["ok"] is True
    assert report["traffic"]["server_errors"] == 24


def test_the_services_state_is_the_same_for_everyone_its_numbers_are_not(
    operator, alice, bob, make_key
):
    alices, _ = make_key(alice)
    bobs, _ = make_key(bob)
    traffic(alices, 200, 3)
    traffic(bobs, 503, 10)
    report = overview_report(actor=actor_for_user(alice))
    assert report["health"]["ok"] is False
    assert report["health"]["failing"] == ["server errors"]  # no figures of others' traffic
    assert report["traffic"]["server_errors"] == 0 and report["traffic"]["requests"] == 3


def test_the_overview_page_shows_both_kinds(client, operator, alice, make_key):
    key, _ = make_key(alice)
    traffic(key, 200, 10)
    traffic(key, 404, 3)
    traffic(key, 503, 7)
    client.force_login(operator)
    html = client.get("/dashboard/").content.decode()
    assert "Server errors (5xx)" in html
    assert '<span data-o="server_errors">7</span>' in html
    assert '<span data-o="client_errors">3</span>' in html
    assert "Degraded: server errors (35% in 5 min)" in html
