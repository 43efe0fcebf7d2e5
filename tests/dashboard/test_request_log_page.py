"""The dashboard's request log page: the API's rows, filters and visibility, as HTML."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from keys.access import SYSTEM
from keys.services import team_create, team_member_add
from telemetry.models import UsageRecord

pytestmark = pytest.mark.django_db


def _record(key, index, *, status=200, model="nebula-7b"):
    return UsageRecord.objects.create(
        request_id=f"req_page{index}", api_key=key, key_prefix=key.prefix, model=model,
        endpoint="/v1/chat/completions", status=status, worker="gpu-7/42",
        created_at=timezone.now() - timedelta(seconds=index),
    )  # fmt: skip


@pytest.fixture
def world(alice, bob, django_user_model, make_key):
    carol = django_user_model.objects.create_user("carol", password="carol-pass-123")
    team = team_create(actor=SYSTEM, name="ml", admin=alice)
    team_member_add(actor=SYSTEM, team=team, user=carol)
    team_key, _ = make_key(alice, name="ml-prod", team=team)
    bob_key, _ = make_key(bob, name="bob-own")
    for index in range(60):
        _record(team_key, index, status=503 if index % 10 == 0 else 200)
    _record(bob_key, 100, model="bob-model")
    return {"carol": carol, "team_key": team_key}


def _ids(html: str) -> list[str]:
    return re.findall(r'data-request="([^"]+)"', html)


def test_an_operator_sees_every_request_and_its_worker(client, world, operator):
    client.force_login(operator)
    html = client.get("/dashboard/requests/").content.decode()
    assert len(_ids(html)) == 50  # one page
    assert "gpu-7/42" in html and ">Worker<" in html
    assert 'rel="next"' in html


def test_a_team_member_sees_the_teams_requests_only_and_no_worker(client, world):
    client.force_login(world["carol"])
    html = client.get("/dashboard/requests/").content.decode()
    assert "req_page100" not in html and "bob-own" not in html and "bob-model" not in html
    assert "gpu-7/42" not in html and ">Worker<" not in html
    next_url = re.search(r'href="(\?[^"]+)" rel="next"', html).group(1).replace("&amp;", "&")
    older = client.get(f"/dashboard/requests/{next_url}").content.decode()
    assert set(_ids(html)).isdisjoint(_ids(older))
    assert len(_ids(html)) + len(_ids(older)) == 60


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous")
def test_filters_narrow_the_page_and_the_export_link_keeps_them(client, world, operator):
    client.force_login(operator)
    key = world["team_key"].pk
    html = client.get(f"/dashboard/requests/?key={key}&status=5xx").content.decode()
    assert len(_ids(html)) == 6
    assert f'href="/requests.csv?key={key}&amp;status=5xx"' in html
    exported = b"".join(client.get(f"/requests.csv?key={key}&status=5xx")).decode()
    assert sorted(_ids(html)) == sorted(re.findall(r"(req_page\d+)", exported))


def test_a_bad_filter_is_a_400_page_saying_why(client, world, alice):
    client.force_login(alice)
    response = client.get("/dashboard/requests/?since=not-a-time")
    assert response.status_code == 400
    assert "&#x27;since&#x27; must be an ISO 8601 time" in response.content.decode()


def test_the_page_needs_a_login(client, world):
    response = client.get("/dashboard/requests/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
