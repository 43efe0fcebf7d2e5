"""/audit: the audit log for operators, filterable and in pages; and in the admin, read only."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from keys.access import SYSTEM, actor_for_user
from keys.services import key_create, key_revoke, team_create
from telemetry.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(operator, alice):
    """Five key actions by the operator, a team by the system, one key action by alice."""
    as_operator = actor_for_user(operator)
    keys = [key_create(actor=as_operator, owner=alice, name=f"k{i}").key for i in range(3)]
    key_revoke(actor=as_operator, key=keys[0])
    key_revoke(actor=as_operator, key=keys[1])
    team_create(actor=SYSTEM, name="ml")
    key_create(actor=actor_for_user(alice), name="own")
    return keys


def _get(client, query="", **headers):
    return client.get(f"/audit{query}", **headers)


def test_the_audit_log_is_for_operators_and_admin_keys(client, history, alice, operator, make_key):
    assert _get(client).status_code == 401
    client.force_login(alice)
    assert _get(client).status_code == 403
    client.logout()
    _, regular = make_key(operator)
    _, admin = make_key(operator, is_admin=True)
    assert _get(client, HTTP_AUTHORIZATION=f"Bearer {regular}").status_code == 403
    assert _get(client, HTTP_AUTHORIZATION=f"Bearer {admin}").status_code == 200
    client.force_login(operator)
    body = _get(client).json()
    assert body["object"] == "list" and body["next"] is None
    newest = body["data"][0]
    assert set(newest) == {
        "id", "created_at", "actor", "username", "action", "target_type", "target_id",
        "target_label", "before", "after",
    }  # fmt: skip
    assert len(body["data"]) == AuditEvent.objects.count()


def test_filters_narrow_the_log(client, history, operator, alice):
    client.force_login(operator)

    def actions(query):
        response = _get(client, query)
        assert response.status_code == 200, response.content
        return [e["action"] for e in response.json()["data"]]

    assert actions("?action=key.revoke") == ["key.revoke", "key.revoke"]
    assert set(actions("?action=key.")) == {"key.create", "key.revoke"}
    assert actions("?target_type=team") == ["team.create"]
    assert actions(f"?target_type=api_key&target_id={history[0].pk}") == [
        "key.revoke",
        "key.create",
    ]
    assert actions("?actor=alice") == ["key.create"]
    events = _get(client, "?actor=alice").json()["data"]
    assert (events[0]["actor"], events[0]["username"]) == ("alice", "alice")
    system = _get(client, "?target_type=team").json()["data"][0]
    assert (system["actor"], system["username"]) == ("system", None)
    future = (timezone.now() + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert actions(f"?since={future}") == []
    assert len(actions(f"?until={future}")) == 7


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?since=yesterday", "since"),
        ("?target_type=teapot", "target_type"),
        ("?limit=0", "limit"),
        ("?limit=1000", "limit"),
        ("?actr=alice", "actr"),
        ("?cursor=bogus", "cursor"),
    ],
)
def test_bad_filters_are_a_400_naming_them(client, history, operator, query, param):
    client.force_login(operator)
    response = _get(client, query)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_pages_follow_a_cursor_without_gaps_or_repeats(client, history, operator):
    client.force_login(operator)
    seen, url = [], "/audit?limit=3"
    while url:
        page = client.get(url).json()
        assert len(page["data"]) <= 3
        seen += [event["id"] for event in page["data"]]
        url = page["next"]
    assert seen == list(AuditEvent.objects.order_by("-id").values_list("id", flat=True))
    assert len(seen) == 7


def test_the_admin_shows_the_log_read_only(client, history, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="root-pass-123")
    client.force_login(root)
    page = client.get("/admin/telemetry/auditevent/?action=key.revoke")
    assert page.status_code == 200 and b"key.revoke" in page.content
    assert client.get("/admin/telemetry/auditevent/add/").status_code == 403
    event = AuditEvent.objects.first()
    changed = client.post(f"/admin/telemetry/auditevent/{event.pk}/change/", {"action": "forged"})
    assert changed.status_code == 403
    event.refresh_from_db()
    assert event.action != "forged"
    assert json.dumps(event.after)  # before/after are plain JSON
