"""Who may touch what in a team, for every endpoint and page that teams brought, with a team
admin (alice), a member (carol), an outsider (bob) and an operator, through a session and
through API keys (regular keys for the users, an admin key for the operator).

Inside the team, what you may see but not change is a 403; outside it, a 404: whether a team
or its key exists is none of an outsider's business.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from keys.access import SYSTEM
from keys.services import team_create, team_member_add

pytestmark = pytest.mark.django_db

ANON, ADMIN, MEMBER, OUTSIDER, OPERATOR = "anonymous", "alice", "carol", "bob", "operator"
ADMIN_K, MEMBER_K, OUTSIDER_K, OPERATOR_K = "alice's key", "carol's key", "bob's key", "admin key"
PEOPLE = [ANON, ADMIN, MEMBER, OUTSIDER, OPERATOR]
ACTORS = [*PEOPLE, ADMIN_K, MEMBER_K, OUTSIDER_K, OPERATOR_K]


class World:
    def __init__(self, users: dict[str, Any], make_key: Any) -> None:
        self.users = users
        self.team = team_create(actor=SYSTEM, name="ml", admin=users[ADMIN])
        team_member_add(actor=SYSTEM, team=self.team, user=users[MEMBER])
        self.team_key, _ = make_key(users[ADMIN], name="ml-prod", team=self.team)
        self.secrets = {
            ADMIN_K: make_key(users[ADMIN], name="a")[1],
            MEMBER_K: make_key(users[MEMBER], name="c")[1],
            OUTSIDER_K: make_key(users[OUTSIDER], name="b")[1],
            OPERATOR_K: make_key(users[OPERATOR], name="ops", is_admin=True)[1],
        }

    def call(self, actor: str, method: str, path: str, body: Any = None) -> Any:
        client = Client(raise_request_exception=False)
        if actor in self.users:
            client.force_login(self.users[actor])
        headers = {}
        if actor in self.secrets:
            headers["HTTP_AUTHORIZATION"] = f"Bearer {self.secrets[actor]}"
        if path.startswith("/dashboard/"):
            return getattr(client, method)(path, body or {}, **headers)
        if body is None:
            response = getattr(client, method)(path, **headers)
        else:
            response = getattr(client, method)(
                path, json.dumps(body), content_type="application/json", **headers
            )
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        return response


@pytest.fixture
def world(alice, bob, operator, django_user_model, make_key) -> World:
    carol = django_user_model.objects.create_user("carol", password="carol-pass-123")
    return World({ADMIN: alice, MEMBER: carol, OUTSIDER: bob, OPERATOR: operator}, make_key)


def _statuses(world: World, method: str, path: str, body: Any = None, actors=ACTORS):
    return {actor: world.call(actor, method, path, body).status_code for actor in actors}


def test_reading_a_team_is_for_its_people_and_operators(world):
    expected = {
        ANON: 401, ADMIN: 200, MEMBER: 200, OUTSIDER: 404, OPERATOR: 200,
        ADMIN_K: 403, MEMBER_K: 403, OUTSIDER_K: 403, OPERATOR_K: 200,
    }  # fmt: skip
    team = world.team.pk
    assert _statuses(world, "get", f"/teams/{team}") == expected
    assert _statuses(world, "get", f"/teams/{team}/members") == expected
    listing = _statuses(world, "get", "/teams")
    assert listing == {**expected, OUTSIDER: 200}
    assert world.call(OUTSIDER, "get", "/teams").json()["data"] == []


def test_only_operators_create_and_rename_teams(world):
    for actor in ACTORS:
        status = world.call(actor, "post", "/teams", {"name": f"t-{actor[:5]}"}).status_code
        assert status == {ANON: 401, OPERATOR: 201, OPERATOR_K: 201}.get(actor, 403), actor
    renames = _statuses(world, "patch", f"/teams/{world.team.pk}", {"name": "renamed"})
    assert renames == {
        ANON: 401, ADMIN: 403, MEMBER: 403, OUTSIDER: 404, OPERATOR: 200,
        ADMIN_K: 403, MEMBER_K: 403, OUTSIDER_K: 403, OPERATOR_K: 200,
    }  # fmt: skip


def test_only_team_admins_and_operators_change_members(world, django_user_model):
    members = f"/teams/{world.team.pk}/members"
    for actor in ACTORS:
        newcomer = django_user_model.objects.create_user(f"new-{len(actor)}-{actor[:3]}")
        status = world.call(actor, "post", members, {"username": newcomer.username}).status_code
        expected = {ANON: 401, ADMIN: 201, OPERATOR: 201, OPERATOR_K: 201, OUTSIDER: 404}
        assert status == expected.get(actor, 403), actor
    role = _statuses(world, "patch", f"{members}/carol", {"role": "member"})
    assert role == {
        ANON: 401, ADMIN: 200, MEMBER: 403, OUTSIDER: 404, OPERATOR: 200,
        ADMIN_K: 403, MEMBER_K: 403, OUTSIDER_K: 403, OPERATOR_K: 200,
    }  # fmt: skip
    removal = _statuses(world, "delete", f"{members}/alice", actors=[ANON, MEMBER, OUTSIDER])
    assert removal == {ANON: 401, MEMBER: 403, OUTSIDER: 404}


def test_a_team_key_is_seen_by_the_team_and_changed_by_its_admins(world):
    path = f"/apikeys/{world.team_key.pk}"
    assert _statuses(world, "get", path) == {
        ANON: 401, ADMIN: 200, MEMBER: 200, OUTSIDER: 404, OPERATOR: 200,
        ADMIN_K: 403, MEMBER_K: 403, OUTSIDER_K: 403, OPERATOR_K: 200,
    }  # fmt: skip
    change = {
        ANON: 401, ADMIN: 200, MEMBER: 403, OUTSIDER: 404, OPERATOR: 200,
        ADMIN_K: 403, MEMBER_K: 403, OUTSIDER_K: 403, OPERATOR_K: 200,
    }  # fmt: skip
    assert _statuses(world, "patch", path, {"name": "renamed"}) == change
    assert _statuses(world, "post", f"{path}/rotate", {"grace_seconds": 0}) == change
    refusals = _statuses(world, "delete", path, actors=[ANON, MEMBER, OUTSIDER, MEMBER_K])
    assert refusals == {ANON: 401, MEMBER: 403, OUTSIDER: 404, MEMBER_K: 403}
    world.team_key.refresh_from_db()
    assert world.team_key.state == "active"
    assert world.call(ADMIN, "delete", path).json()["state"] == "revoked"


def test_creating_a_team_key_is_for_its_admins_and_operators(world):
    body = {"name": "new", "team": world.team.pk}
    statuses = _statuses(world, "post", "/apikeys", body)
    assert statuses == {
        ANON: 401, ADMIN: 201, MEMBER: 403, OUTSIDER: 400, OPERATOR: 201,
        ADMIN_K: 403, MEMBER_K: 403, OUTSIDER_K: 403, OPERATOR_K: 201,
    }  # fmt: skip
    # The outsider's 400 is the same as for a team that does not exist.
    unknown = world.call(OUTSIDER, "post", "/apikeys", {"name": "new", "team": 999999})
    outsider = world.call(OUTSIDER, "post", "/apikeys", body)
    assert unknown.json()["error"]["message"].replace("999999", "") == outsider.json()["error"][
        "message"
    ].replace(str(world.team.pk), "")


def test_team_pages_are_for_the_team_and_operators(world):
    team = world.team.pk
    pages = _statuses(world, "get", f"/dashboard/teams/{team}/", actors=PEOPLE)
    assert pages == {ANON: 302, ADMIN: 200, MEMBER: 200, OUTSIDER: 404, OPERATOR: 200}
    key_page = _statuses(world, "get", f"/dashboard/keys/{world.team_key.pk}/", actors=PEOPLE)
    assert key_page == {ANON: 302, ADMIN: 200, MEMBER: 200, OUTSIDER: 404, OPERATOR: 200}
    add = _statuses(
        world, "post", f"/dashboard/teams/{team}/members/", {"username": "x"}, actors=PEOPLE
    )
    assert add == {ANON: 302, ADMIN: 400, MEMBER: 403, OUTSIDER: 404, OPERATOR: 400}
    role = _statuses(
        world,
        "post",
        f"/dashboard/teams/{team}/members/carol/",
        {"action": "role", "role": "member"},
        actors=PEOPLE,
    )
    assert role == {ANON: 302, ADMIN: 302, MEMBER: 403, OUTSIDER: 404, OPERATOR: 302}
    rotate = _statuses(
        world,
        "post",
        f"/dashboard/keys/{world.team_key.pk}/rotate/",
        {"grace_seconds": "0"},
        actors=[ANON, MEMBER, OUTSIDER],
    )
    assert rotate == {ANON: 302, MEMBER: 403, OUTSIDER: 404}
    creation = _statuses(world, "post", "/dashboard/teams/", {"name": "x"}, actors=PEOPLE)
    assert creation == {ANON: 302, ADMIN: 403, MEMBER: 403, OUTSIDER: 403, OPERATOR: 302}
