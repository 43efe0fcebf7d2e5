"""/budgets over HTTP: operators set any budget; a key's owner (or its team's admin) may cap the
key, never lift what an operator set; nobody sees a budget that is not about them."""

import json

import pytest

from billing.models import Budget
from billing.services import budget_set
from keys.access import SYSTEM
from keys.models import Team, TeamMembership, TeamRole
from telemetry.models import AuditEvent

pytestmark = pytest.mark.django_db


def _send(client, method, path, body=None):
    if body is None:
        return getattr(client, method)(path)
    return getattr(client, method)(path, data=json.dumps(body), content_type="application/json")


@pytest.fixture
def team(alice, carol):
    """Team "ml": alice is its admin, carol a member; bob is not in it."""
    team = Team.objects.create(name="ml")
    TeamMembership.objects.create(team=team, user=alice, role=TeamRole.ADMIN)
    TeamMembership.objects.create(team=team, user=carol, role=TeamRole.MEMBER)
    return team


def test_an_operator_sets_a_key_budget_and_it_is_audited(client, operator, alice, make_key):
    key, _ = make_key(alice)
    client.force_login(operator)
    response = _send(
        client, "post", "/budgets", {"scope": "key", "api_key": key.pk, "amount": "25.50"}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["amount"] == "25.5"
    assert body["period"] == "month"
    assert body["spent"] == "0.0000000000"
    assert body["operator_set"] is True
    event = AuditEvent.objects.get(action="budget.set")
    assert event.actor == operator and event.after["amount"] == "25.5"


def test_the_owner_sees_the_budget_and_another_user_sees_nothing(client, alice, bob, make_key):
    key, _ = make_key(alice)
    budget = budget_set(actor=SYSTEM, scope="key", target=key, amount="10", period="day")
    client.force_login(alice)
    assert [b["id"] for b in client.get("/budgets").json()["data"]] == [budget.pk]
    assert client.get(f"/budgets/{budget.pk}").status_code == 200
    client.force_login(bob)
    assert client.get("/budgets").json()["data"] == []
    for method, body in (("get", None), ("patch", {"amount": "99"}), ("delete", None)):
        response = _send(client, method, f"/budgets/{budget.pk}", body)
        assert response.status_code == 404, (method, response.content)
    # Nor can bob put a budget on alice's key: it does not exist, as far as he knows.
    response = _send(client, "post", "/budgets", {"scope": "key", "api_key": key.pk, "amount": "1"})
    assert response.status_code == 404
    assert Budget.objects.get().amount == 10


def test_an_owner_caps_their_key_but_cannot_lift_an_operators_budget(client, alice, make_key):
    key, _ = make_key(alice)
    client.force_login(alice)
    mine = _send(client, "post", "/budgets", {"scope": "key", "api_key": key.pk, "amount": "5"})
    assert mine.status_code == 200, mine.content
    assert mine.json()["operator_set"] is False
    assert (
        _send(client, "patch", f"/budgets/{mine.json()['id']}", {"amount": "6"}).status_code == 200
    )
    budget_set(actor=SYSTEM, scope="key", target=key, amount="1")  # an operator's now
    refused = _send(client, "patch", f"/budgets/{mine.json()['id']}", {"amount": "100"})
    assert refused.status_code == 403
    assert "operator" in refused.json()["error"]["message"]
    assert _send(client, "delete", f"/budgets/{mine.json()['id']}").status_code == 403
    assert Budget.objects.get().amount == 1


def test_only_operators_set_user_and_team_budgets(client, alice, team):
    client.force_login(alice)  # a team admin, still not an operator
    for body in (
        {"scope": "user", "user": "alice", "amount": "100"},
        {"scope": "team", "team": team.pk, "amount": "100"},
    ):
        response = _send(client, "post", "/budgets", body)
        assert response.status_code == 403, response.content
    assert not Budget.objects.exists()


def test_team_members_see_the_team_budget_and_only_team_admins_cap_team_keys(
    client, alice, bob, carol, team, make_key
):
    team_key, _ = make_key(alice, team=team)
    team_budget = budget_set(actor=SYSTEM, scope="team", target=team, amount="1000")
    client.force_login(carol)
    assert [b["id"] for b in client.get("/budgets").json()["data"]] == [team_budget.pk]
    refused = _send(
        client, "post", "/budgets", {"scope": "key", "api_key": team_key.pk, "amount": "1"}
    )
    assert refused.status_code == 403
    client.force_login(alice)
    capped = _send(
        client, "post", "/budgets", {"scope": "key", "api_key": team_key.pk, "amount": "50"}
    )
    assert capped.status_code == 200, capped.content
    client.force_login(bob)
    assert client.get("/budgets").json()["data"] == []
    assert client.get(f"/budgets/{team_budget.pk}").status_code == 404


def test_a_regular_key_sees_the_budgets_that_apply_to_it_and_manages_none(client, alice, make_key):
    key, secret = make_key(alice)
    other, _ = make_key(alice, name="other")
    mine = budget_set(actor=SYSTEM, scope="key", target=key, amount="3")
    budget_set(actor=SYSTEM, scope="key", target=other, amount="4")
    user = budget_set(actor=SYSTEM, scope="user", target=alice, amount="5")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    listed = client.get("/budgets", **auth).json()["data"]
    assert sorted(b["id"] for b in listed) == sorted([mine.pk, user.pk])
    response = client.post(
        "/budgets",
        data=json.dumps({"scope": "key", "api_key": key.pk, "amount": "100"}),
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {"scope": "key", "amount": "1"},  # names no key
        {"scope": "team", "api_key": 1, "amount": "1"},
        {"scope": "key", "api_key": 1, "amount": 1.5},  # a float is not money
        {"scope": "key", "api_key": 1, "amount": "-1"},
        {"scope": "key", "api_key": 1, "amount": "1", "period": "week"},
        {"scope": "key", "api_key": 1, "amount": "1", "currency": "EUR"},
    ],
)
def test_a_malformed_budget_is_a_400(client, operator, alice, make_key, body):
    key, _ = make_key(alice)
    if "api_key" in body:
        body["api_key"] = key.pk
    client.force_login(operator)
    response = _send(client, "post", "/budgets", body)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["type"] == "invalid_request_error"
