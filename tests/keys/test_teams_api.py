"""/teams over HTTP: operators create teams, team admins run them, members see the team's keys
and usage, and nobody outside learns anything."""

import json

import pytest
from django.utils import timezone

from keys.models import ApiKey, Team, TeamMembership
from telemetry.models import AuditEvent, UsageRecord

pytestmark = pytest.mark.django_db


def _send(client, method, path, body=None, **headers):
    if body is None:
        return getattr(client, method)(path, **headers)
    return getattr(client, method)(
        path, data=json.dumps(body), content_type="application/json", **headers
    )


@pytest.fixture
def carol(django_user_model):
    return django_user_model.objects.create_user("carol", password="carol-pass-123")


@pytest.fixture
def team(client, operator, alice, carol):
    """Team "ml": alice is its admin, carol a member (bob is not in it)."""
    client.force_login(operator)
    created = _send(client, "post", "/teams", {"name": "ml", "admin": "alice"})
    assert created.status_code == 201, created.content
    team = Team.objects.get(pk=created.json()["id"])
    added = _send(client, "post", f"/teams/{team.pk}/members", {"username": "carol"})
    assert added.status_code == 201
    client.logout()
    return team


def test_an_operator_creates_a_team_with_its_first_admin(client, operator, alice):
    client.force_login(operator)
    response = _send(client, "post", "/teams", {"name": "research", "admin": "alice"})
    assert response.status_code == 201
    assert response.json()["members"] == [
        {
            "username": "alice",
            "role": "admin",
            "joined_at": response.json()["members"][0]["joined_at"],
        }
    ]
    duplicate = _send(client, "post", "/teams", {"name": "research"})
    assert duplicate.status_code == 400
    assert duplicate.json()["error"]["code"] == "duplicate_name"
    assert _send(client, "post", "/teams", {"name": " "}).status_code == 400


def test_users_cannot_create_teams(client, alice):
    client.force_login(alice)
    assert _send(client, "post", "/teams", {"name": "mine"}).status_code == 403
    assert not Team.objects.exists()


def test_a_team_admin_manages_members(client, team, alice, carol, bob):
    client.force_login(alice)
    members = f"/teams/{team.pk}/members"
    assert _send(client, "post", members, {"username": "bob"}).status_code == 201
    again = _send(client, "post", members, {"username": "bob"})
    assert again.status_code == 409
    assert _send(client, "post", members, {"username": "nobody"}).status_code == 400
    assert _send(client, "post", members, {"username": "x", "role": "owner"}).status_code == 400
    promoted = _send(client, "patch", f"{members}/carol", {"role": "admin"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    assert _send(client, "delete", f"{members}/bob").status_code == 204
    roles = {m["username"]: m["role"] for m in _send(client, "get", members).json()["data"]}
    assert roles == {"alice": "admin", "carol": "admin"}


def test_members_see_the_team_but_cannot_manage_it(client, team, carol, bob):
    client.force_login(carol)
    assert _send(client, "get", f"/teams/{team.pk}").status_code == 200
    assert [t["name"] for t in _send(client, "get", "/teams").json()["data"]] == ["ml"]
    members = f"/teams/{team.pk}/members"
    assert _send(client, "post", members, {"username": "bob"}).status_code == 403
    assert _send(client, "patch", f"{members}/carol", {"role": "admin"}).status_code == 403
    assert _send(client, "delete", f"{members}/alice").status_code == 403
    assert _send(client, "patch", f"/teams/{team.pk}", {"name": "mine"}).status_code == 403
    # A member may leave.
    assert _send(client, "delete", f"{members}/carol").status_code == 204
    assert _send(client, "get", f"/teams/{team.pk}").status_code == 404


def test_outsiders_learn_nothing_of_a_team(client, team, bob):
    client.force_login(bob)
    assert _send(client, "get", "/teams").json()["data"] == []
    for method, path, body in [
        ("get", f"/teams/{team.pk}", None),
        ("patch", f"/teams/{team.pk}", {"name": "x"}),
        ("get", f"/teams/{team.pk}/members", None),
        ("post", f"/teams/{team.pk}/members", {"username": "bob"}),
        ("patch", f"/teams/{team.pk}/members/alice", {"role": "member"}),
        ("delete", f"/teams/{team.pk}/members/alice", None),
        ("get", "/teams/999999", None),
    ]:
        assert _send(client, method, path, body).status_code == 404, (method, path)
    assert TeamMembership.objects.filter(team=team).count() == 2


def test_a_team_keeps_an_admin_unless_an_operator_says_otherwise(client, team, alice, operator):
    client.force_login(alice)
    demoted = _send(client, "patch", f"/teams/{team.pk}/members/alice", {"role": "member"})
    assert demoted.status_code == 409
    assert demoted.json()["error"]["code"] == "last_team_admin"
    assert _send(client, "delete", f"/teams/{team.pk}/members/alice").status_code == 409
    client.force_login(operator)
    assert _send(client, "delete", f"/teams/{team.pk}/members/alice").status_code == 204


def test_team_keys_are_seen_by_members_and_managed_by_team_admins(client, team, alice, carol, bob):
    client.force_login(alice)
    created = _send(client, "post", "/apikeys", {"name": "ml-prod", "team": team.pk})
    assert created.status_code == 201, created.content
    assert created.json()["team"] == {"id": team.pk, "name": "ml"}
    key = ApiKey.objects.get(pk=created.json()["id"])
    path = f"/apikeys/{key.pk}"

    client.force_login(carol)
    assert [k["name"] for k in _send(client, "get", "/apikeys").json()["data"]] == ["ml-prod"]
    assert _send(client, "get", f"/apikeys?team={team.pk}").json()["data"][0]["id"] == key.pk
    assert _send(client, "get", path).status_code == 200
    assert _send(client, "patch", path, {"name": "mine"}).status_code == 403
    assert _send(client, "post", f"{path}/rotate", {"grace_seconds": 0}).status_code == 403
    assert _send(client, "delete", path).status_code == 403
    refused = _send(client, "post", "/apikeys", {"name": "x", "team": team.pk})
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "team"

    client.force_login(bob)
    assert _send(client, "get", "/apikeys").json()["data"] == []
    assert _send(client, "get", path).status_code == 404
    assert _send(client, "patch", path, {"name": "x"}).status_code == 404
    foreign = _send(client, "post", "/apikeys", {"name": "x", "team": team.pk})
    assert foreign.status_code == 400 and foreign.json()["error"]["param"] == "team"

    client.force_login(alice)
    assert _send(client, "patch", path, {"rpm_limit": 5}).status_code == 200
    assert _send(client, "post", f"{path}/rotate", {"grace_seconds": 0}).status_code == 200
    assert _send(client, "delete", path).json()["state"] == "revoked"


def test_team_admins_create_team_keys_within_the_defaults_like_anyone(client, team, alice):
    client.force_login(alice)
    for body in ({"rpm_limit": 1000}, {"is_admin": True}, {"owner": "carol"}):
        response = _send(client, "post", "/apikeys", {"name": "x", "team": team.pk, **body})
        assert response.status_code == 403, body
    assert not ApiKey.objects.exists()


def test_members_see_their_teams_usage(client, team, alice, carol, bob, make_key):
    team_key, _ = make_key(alice, name="shared", team=team)
    UsageRecord.objects.create(
        request_id="req_team1",
        api_key=team_key,
        key_prefix=team_key.prefix,
        model="nebula-7b",
        endpoint="/v1/chat/completions",
        status=200,
        prompt_tokens=3,
        completion_tokens=4,
        created_at=timezone.now(),
    )
    client.force_login(carol)
    report = _send(client, "get", "/metrics").json()
    assert [row["key"]["name"] for row in report["keys"]] == ["shared"]
    assert report["totals"]["total_tokens"] == 7
    client.force_login(bob)
    assert _send(client, "get", "/metrics").json()["totals"]["requests"] == 0


def test_team_changes_are_audited(client, team, alice, operator):
    client.force_login(alice)
    _send(client, "patch", f"/teams/{team.pk}/members/carol", {"role": "admin"})
    actions = list(
        AuditEvent.objects.filter(target_type="team")
        .order_by("id")
        .values_list("action", "actor_label")
    )
    assert actions == [
        ("team.create", "olivia-operator"),
        ("team.member_add", "olivia-operator"),
        ("team.member_add", "olivia-operator"),
        ("team.member_role", "alice"),
    ]
    role = AuditEvent.objects.get(action="team.member_role")
    assert (role.before, role.after) == (
        {"user": "carol", "role": "member"},
        {"user": "carol", "role": "admin"},
    )


def test_a_regular_key_manages_no_team(client, team, alice, make_key):
    _, secret = make_key(alice)
    response = _send(client, "get", "/teams", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 403
