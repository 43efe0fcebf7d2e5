"""/requests and /requests.csv: the request log, who sees which rows, filters, the keyset
cursor (no row twice, none skipped, while rows arrive), and the CSV of the same view."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from keys.access import SYSTEM
from keys.services import team_create, team_member_add
from telemetry.models import UsageRecord

pytestmark = [
    pytest.mark.django_db,
    # The CSV is an async iterator (daphne streams it); the test client reads it synchronously.
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous"),
]

_counter = iter(range(1_000_000))


def record(key: Any, *, status: int = 200, model: str = "nebula-7b", at: Any = None, **extra: Any):
    return UsageRecord.objects.create(
        request_id=f"req_log{next(_counter)}",
        api_key=key,
        key_prefix=key.prefix if key else "",
        model=model,
        endpoint="/v1/chat/completions",
        status=status,
        worker="gpu-host-1/123",
        prompt_tokens=10,
        completion_tokens=20 if status == 200 else 0,
        queue_ms=1.5,
        ttft_ms=12.0,
        latency_ms=80.0,
        cost=Decimal("0.0000123400"),
        created_at=at or timezone.now() - timedelta(minutes=1),
        **extra,
    )


@pytest.fixture
def world(operator, alice, bob, django_user_model, make_key):
    """alice: two personal keys; carol: a member of team ml, which owns a key alice made;
    bob: an outsider with a key of his own; an operator."""
    carol = django_user_model.objects.create_user("carol", password="carol-pass-123")
    team = team_create(actor=SYSTEM, name="ml", admin=alice)
    team_member_add(actor=SYSTEM, team=team, user=carol)
    alice_key, alice_secret = make_key(alice, name="alice-own")
    team_key, team_secret = make_key(alice, name="ml-prod", team=team)
    bob_key, bob_secret = make_key(bob, name="bob-own")
    _, admin_secret = make_key(operator, name="ops", is_admin=True)
    record(alice_key)
    record(alice_key, status=429)
    record(team_key, model="nebula-13b")
    record(team_key, status=503)
    record(bob_key)
    record(None, status=500)  # a key deleted since: operators only
    return {
        "carol": carol,
        "keys": {"alice": alice_key, "team": team_key, "bob": bob_key},
        "secrets": {
            "alice": alice_secret,
            "team": team_secret,
            "bob": bob_secret,
            "admin": admin_secret,
        },
    }


def _rows(client, query: str = "", **headers: Any) -> list[dict[str, Any]]:
    response = client.get(f"/requests{query}", **headers)
    assert response.status_code == 200, response.content
    return response.json()["data"]


def _key_names(rows) -> list[str]:
    return sorted(row["key_name"] or "-" for row in rows)


def test_an_operator_sees_every_request_with_its_worker(client, world, operator):
    client.force_login(operator)
    rows = _rows(client)
    assert len(rows) == 6
    assert {row["worker"] for row in rows} == {"gpu-host-1/123"}
    newest = rows[0]
    assert set(newest) == {
        "id", "created_at", "request_id", "key_id", "key_name", "key_prefix", "owner", "model",
        "endpoint", "client", "status", "finish_reason", "error_code", "stream", "prompt_tokens",
        "completion_tokens", "total_tokens", "cost", "queue_ms", "ttft_ms", "duration_ms", "worker",
    }  # fmt: skip


def test_an_admin_key_sees_every_request(client, world):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {world['secrets']['admin']}"}
    assert len(_rows(client, **headers)) == 6


def test_an_owner_sees_their_keys_and_their_teams_keys_but_no_workers(client, world, alice):
    client.force_login(alice)
    rows = _rows(client)
    assert _key_names(rows) == ["alice-own", "alice-own", "ml-prod", "ml-prod"]
    assert {row["worker"] for row in rows} == {None}
    # Never the secret: the key by its name and its display prefix.
    assert world["secrets"]["alice"] not in str(rows)
    assert {row["key_prefix"] for row in rows} == {
        world["keys"]["alice"].prefix,
        world["keys"]["team"].prefix,
    }


def test_a_team_member_sees_only_the_teams_requests(client, world):
    client.force_login(world["carol"])
    assert _key_names(_rows(client)) == ["ml-prod", "ml-prod"]


def test_another_user_sees_none_of_alices_requests(client, world, bob):
    client.force_login(bob)
    assert _key_names(_rows(client)) == ["bob-own"]
    # Naming alice's key gives nothing, not alice's rows.
    assert _rows(client, f"?key={world['keys']['alice'].pk}") == []
    response = client.get(f"/requests.csv?key={world['keys']['alice'].pk}")
    assert len(list(csv.reader(io.StringIO(b"".join(response).decode())))) == 1  # the header


def test_a_regular_key_sees_only_its_own_requests(client, world):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {world['secrets']['team']}"}
    assert _key_names(_rows(client, **headers)) == ["ml-prod", "ml-prod"]


def test_nobody_unauthenticated_reads_the_log(client, world):
    assert client.get("/requests").status_code == 401
    assert client.get("/requests.csv").status_code == 401


def test_filters_by_key_model_status_and_status_class(client, world, operator):
    client.force_login(operator)
    keys = world["keys"]
    assert _key_names(_rows(client, f"?key={keys['team'].pk}")) == ["ml-prod", "ml-prod"]
    assert [r["model"] for r in _rows(client, "?model=nebula-13b")] == ["nebula-13b"]
    assert [r["status"] for r in _rows(client, "?status=429")] == [429]
    assert sorted(r["status"] for r in _rows(client, "?status=5xx")) == [500, 503]
    assert sorted(r["status"] for r in _rows(client, "?status=4xx")) == [429]
    assert len(_rows(client, "?status=2xx")) == 3
    rows = _rows(client, f"?key={keys['alice'].pk}&status=2xx")
    assert [(r["key_name"], r["status"]) for r in rows] == [("alice-own", 200)]


def test_a_time_range_narrows_the_log(client, world, operator):
    now = timezone.now()
    old = record(world["keys"]["bob"], at=now - timedelta(days=3))
    client.force_login(operator)
    since = (now - timedelta(days=4)).isoformat()
    until = (now - timedelta(days=2)).isoformat()
    rows = _rows(client, f"?since={since.replace('+', '%2B')}&until={until.replace('+', '%2B')}")
    assert [r["id"] for r in rows] == [old.pk]
    assert len(_rows(client, f"?since={int((now - timedelta(hours=1)).timestamp())}")) == 6


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?status=abc", "status"),
        ("?status=7xx", "status"),
        ("?key=alice", "key"),
        ("?since=yesterday", "since"),
        ("?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "since"),
        ("?limit=0", "limit"),
        ("?limit=500", "limit"),
        ("?cursor=bm9wZQ", "cursor"),
        ("?frobnicate=1", "frobnicate"),
    ],
)
def test_bad_parameters_are_400s_naming_them(client, world, operator, query, param):
    client.force_login(operator)
    response = client.get(f"/requests{query}")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if param not in ("cursor", "limit"):
        assert client.get(f"/requests.csv{query}").status_code == 400


def test_pages_hold_every_row_once_while_new_rows_arrive(client, alice, make_key):
    """Rows that share a timestamp straddle page boundaries, and new rows (some with the very
    time of the boundary row) arrive between pages: each older row is seen exactly once."""
    key, _ = make_key(alice, name="busy")
    base = timezone.now() - timedelta(minutes=10)
    originals = []
    for index in range(23):
        # Groups of four share one created_at, as a ledger batch often does.
        originals.append(record(key, at=base - timedelta(seconds=index // 4)).pk)
    client.force_login(alice)
    seen: list[int] = []
    response = client.get("/requests?limit=5").json()
    while True:
        seen += [row["id"] for row in response["data"]]
        last = UsageRecord.objects.get(pk=seen[-1])
        # Arrivals: a newer row, and one at exactly the boundary's time (a higher id).
        record(key)
        record(key, at=last.created_at)
        if response["next_cursor"] is None:
            break
        assert response["next"].endswith(f"cursor={response['next_cursor']}")
        response = client.get(f"/requests?limit=5&cursor={response['next_cursor']}").json()
    assert len(seen) == len(set(seen)), "a row was shown twice"
    assert set(originals) <= set(seen), "a row was skipped"
    created = list(UsageRecord.objects.filter(pk__in=seen).values_list("created_at", "id"))
    order = {pk: index for index, pk in enumerate(seen)}
    assert sorted(created, key=lambda row: order[row[1]]) == sorted(created, reverse=True)


def _csv(client, query: str = "") -> list[dict[str, str]]:
    response = client.get(f"/requests.csv{query}")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    return list(csv.DictReader(io.StringIO(b"".join(response).decode())))


@pytest.mark.parametrize("query", ["", "?status=5xx", "?model=nebula-13b", "?status=2xx&key=KEY"])
def test_the_csv_is_the_filtered_view_whole(client, world, operator, alice, query):
    query = query.replace("KEY", str(world["keys"]["alice"].pk))
    for person in (operator, alice):
        client.force_login(person)
        listed = []
        page = client.get(f"/requests{query}{'&' if query else '?'}limit=1").json()
        while True:
            listed += page["data"]
            if page["next_cursor"] is None:
                break
            page = client.get(page["next"]).json()
        exported = _csv(client, query)
        assert [row["request_id"] for row in exported] == [row["request_id"] for row in listed]
        for row, shown in zip(exported, listed, strict=True):
            assert row["status"] == str(shown["status"])
            assert row["cost"] == shown["cost"]
            assert row["key_name"] == shown["key_name"]
            assert row["worker"] == (shown["worker"] or "")


def test_the_csv_streams_more_rows_than_one_chunk(client, alice, make_key, monkeypatch):
    monkeypatch.setattr("telemetry.requestlog.CSV_CHUNK", 7)
    key, _ = make_key(alice, name="many")
    for _ in range(30):
        record(key)
    client.force_login(alice)
    response = client.get("/requests.csv")
    chunks = list(response)
    assert len(chunks) == 1 + 5  # the header, then ceil(30 / 7) chunks of rows
    assert len(list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))) == 30


def test_a_model_name_cannot_become_a_spreadsheet_formula(client, alice, make_key):
    key, _ = make_key(alice, name="k")
    record(key, model='=HYPERLINK("http://evil.example","x")')
    client.force_login(alice)
    [row] = _csv(client)
    assert row["model"].startswith("'=")
    # The JSON stays as sent.
    assert _rows(client)[0]["model"].startswith("=HYPERLINK")
