"""The key and team pages over HTTP (Django's test client), then the database."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from keys.access import SYSTEM
from keys.models import ApiKey, Team, TeamMembership
from keys.services import team_create, team_member_add
from keys.tokens import key_digest

pytestmark = pytest.mark.django_db


@pytest.fixture
def carol(django_user_model):
    return django_user_model.objects.create_user("carol", password="carol-pass-123")


@pytest.fixture
def team(alice, carol):
    """Team "ml": alice its admin, carol a member."""
    team = team_create(actor=SYSTEM, name="ml", admin=alice)
    team_member_add(actor=SYSTEM, team=team, user=carol)
    return team


# --- Editing keys --------------------------------------------------------------------------------


def test_an_operator_raises_a_limit_on_the_dashboard(client, operator, alice, make_key):
    key, _ = make_key(alice, name="demo key")
    client.force_login(operator)
    page = client.get(f"/dashboard/keys/{key.pk}/")
    assert page.status_code == 200
    assert b'name="rpm_limit"' in page.content and b'value="10"' in page.content
    response = client.post(
        f"/dashboard/keys/{key.pk}/",
        {"name": "demo key", "rpm_limit": "600", "tpm_limit": "", "allowed_models": ""},
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.rpm_limit == 600
    assert key.operator_limits == {"rpm_limit": 600}
    assert b"Saved" in client.get(response["Location"]).content


def test_the_edit_form_sends_only_what_changed(client, operator, alice, make_key):
    """Saving a form an operator restricted, unchanged, must not be a "change" of it."""
    key, _ = make_key(alice, allowed_models=["nebula-7b"], rpm_limit=5)
    client.force_login(alice)
    response = client.post(
        f"/dashboard/keys/{key.pk}/",
        {"name": "renamed", "rpm_limit": "5", "tpm_limit": "", "allowed_models": " nebula-7b "},
    )
    assert response.status_code == 302, response.content
    key.refresh_from_db()
    assert (key.name, key.rpm_limit, key.allowed_models) == ("renamed", 5, ["nebula-7b"])


def test_a_user_cannot_widen_an_operators_restriction_on_the_dashboard(client, alice, make_key):
    key, _ = make_key(alice, allowed_models=["nebula-7b"], rpm_limit=5)
    client.force_login(alice)
    page = client.get(f"/dashboard/keys/{key.pk}/")
    assert b"never raise them past 5 requests per minute" in page.content
    response = client.post(
        f"/dashboard/keys/{key.pk}/",
        {"name": key.name, "rpm_limit": "5", "tpm_limit": "", "allowed_models": ""},
    )
    assert response.status_code == 403
    assert "narrow that list" in response.context["form"].errors["allowed_models"][0]
    response = client.post(
        f"/dashboard/keys/{key.pk}/",
        {"name": key.name, "rpm_limit": "6", "tpm_limit": "", "allowed_models": "nebula-7b"},
    )
    assert response.status_code == 403
    assert "rpm_limit" in response.context["form"].errors
    assert b'value="6"' in response.content  # what was typed stays
    key.refresh_from_db()
    assert (key.rpm_limit, key.allowed_models) == (5, ["nebula-7b"])


def test_editing_the_expiry(client, alice, make_key):
    key, _ = make_key(alice)
    client.force_login(alice)
    when = (timezone.now() + timedelta(days=3)).replace(second=0, microsecond=0)
    form = {"name": key.name, "rpm_limit": "10", "tpm_limit": "", "allowed_models": ""}
    response = client.post(
        f"/dashboard/keys/{key.pk}/", {**form, "expires_at": when.strftime("%Y-%m-%dT%H:%M")}
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.expires_at == when
    past = client.post(f"/dashboard/keys/{key.pk}/", {**form, "expires_at": "2001-01-01T00:00"})
    assert past.status_code == 400
    assert "in the future" in past.context["form"].errors["expires_at"][0]
    assert client.post(f"/dashboard/keys/{key.pk}/", {**form, "expires_at": ""}).status_code == 302
    key.refresh_from_db()
    assert key.expires_at is None


def test_rotating_shows_the_new_secret_once_after_a_redirect(client, alice, make_key):
    key, old = make_key(alice)
    client.force_login(alice)
    response = client.post(f"/dashboard/keys/{key.pk}/rotate/", {"grace_seconds": "3600"})
    assert response.status_code == 302
    assert response["Location"].startswith(f"/dashboard/keys/{key.pk}/?reveal=")
    page = client.get(response["Location"])
    assert page["Cache-Control"] == "no-store"
    new = page.context["created"]["secret"]
    key.refresh_from_db()
    assert key.digest == key_digest(new) and key.previous_digest == key_digest(old)
    assert b"works until" in page.content
    assert new.encode() not in client.get(response["Location"]).content
    assert (key.previous_valid_until - key.rotated_at) == timedelta(hours=1)


def test_nobody_else_edits_rotates_or_sees_a_key(client, alice, bob, make_key):
    key, _ = make_key(alice, name="alices")
    client.force_login(bob)
    assert client.get(f"/dashboard/keys/{key.pk}/").status_code == 404
    form = {"name": "mine", "rpm_limit": "1", "tpm_limit": "", "allowed_models": ""}
    assert client.post(f"/dashboard/keys/{key.pk}/", form).status_code == 404
    rotate = client.post(f"/dashboard/keys/{key.pk}/rotate/", {"grace_seconds": "0"})
    assert rotate.status_code == 404
    key.refresh_from_db()
    assert key.name == "alices" and key.rotated_at is None


def test_a_dashboard_403_is_one_log_line_not_a_traceback(client, alice, ready_model, caplog):
    ready_model()
    client.force_login(alice)
    with caplog.at_level(logging.INFO):
        response = client.post("/dashboard/models/nebula-7b/scale/", {"replicas": "4"})
    assert response.status_code == 403
    assert b"Only operators" in response.content
    forbidden = [r for r in caplog.records if r.name == "django.request"]
    assert len(forbidden) == 1
    assert forbidden[0].getMessage() == "Forbidden: /dashboard/models/nebula-7b/scale/"
    assert forbidden[0].exc_info is None


# --- Teams -------------------------------------------------------------------------------------


def test_an_operator_creates_a_team_and_lands_on_it(client, operator, alice):
    client.force_login(operator)
    response = client.post("/dashboard/teams/", {"name": "research", "admin": "alice"})
    assert response.status_code == 302
    team = Team.objects.get(name="research")
    assert response["Location"] == f"/dashboard/teams/{team.pk}/"
    assert team.memberships.get().user == alice
    duplicate = client.post("/dashboard/teams/", {"name": "research"})
    assert duplicate.status_code == 400
    assert "already exists" in duplicate.context["form"].errors["name"][0]
    unknown = client.post("/dashboard/teams/", {"name": "other", "admin": "nobody"})
    assert unknown.status_code == 400
    assert not Team.objects.filter(name="other").exists()


def test_users_see_only_their_teams_and_cannot_create_one(client, team, bob, carol):
    client.force_login(bob)
    page = client.get("/dashboard/teams/")
    assert b"data-team=" not in page.content
    assert b"Create a team" not in page.content
    assert client.post("/dashboard/teams/", {"name": "mine"}).status_code == 403
    assert client.get(f"/dashboard/teams/{team.pk}/").status_code == 404
    client.force_login(carol)
    assert b'href="/dashboard/teams/' in client.get("/dashboard/teams/").content


def test_a_team_admin_adds_and_removes_members_on_the_team_page(client, team, alice, bob):
    client.force_login(alice)
    page = client.get(f"/dashboard/teams/{team.pk}/")
    assert b"Add member" in page.content and b"New team key" in page.content
    added = client.post(
        f"/dashboard/teams/{team.pk}/members/", {"username": "bob", "role": "member"}
    )
    assert added.status_code == 302
    assert TeamMembership.objects.filter(team=team, user=bob).exists()
    unknown = client.post(f"/dashboard/teams/{team.pk}/members/", {"username": "nobody"})
    assert unknown.status_code == 400
    assert "No user named" in unknown.context["member_form"].errors["username"][0]
    role = client.post(
        f"/dashboard/teams/{team.pk}/members/bob/", {"action": "role", "role": "admin"}
    )
    assert role.status_code == 302
    assert TeamMembership.objects.get(team=team, user=bob).role == "admin"
    removed = client.post(f"/dashboard/teams/{team.pk}/members/bob/", {"action": "remove"})
    assert removed.status_code == 302
    assert not TeamMembership.objects.filter(team=team, user=bob).exists()
    last = client.post(f"/dashboard/teams/{team.pk}/members/alice/", {"action": "remove"})
    assert last.status_code == 409
    assert b"needs at least one admin" in last.content


def test_a_member_sees_the_team_keys_but_no_controls(client, team, alice, carol, make_key):
    key, _ = make_key(alice, name="ml-prod", team=team)
    client.force_login(carol)
    page = client.get(f"/dashboard/teams/{team.pk}/")
    assert b"ml-prod" in page.content
    assert b"Add member" not in page.content and b"New team key" not in page.content
    assert b"Leave team" in page.content
    keys_page = client.get("/dashboard/keys/")
    assert b"ml-prod" in keys_page.content and b"team ml" in keys_page.content
    detail = client.get(f"/dashboard/keys/{key.pk}/")
    assert detail.status_code == 200 and b"Save changes" not in detail.content
    form = {"name": "mine", "rpm_limit": "1", "tpm_limit": "", "allowed_models": ""}
    assert client.post(f"/dashboard/keys/{key.pk}/", form).status_code == 403
    assert client.post(f"/dashboard/keys/{key.pk}/revoke/").status_code == 403
    added = client.post(f"/dashboard/teams/{team.pk}/members/", {"username": "bob"})
    assert added.status_code == 403
    key.refresh_from_db()
    assert key.name == "ml-prod" and key.state == "active"


def test_a_team_admin_creates_a_team_key_from_the_keys_page(client, team, alice):
    client.force_login(alice)
    page = client.get(f"/dashboard/keys/?team={team.pk}")
    assert f'<option value="{team.pk}" selected>ml</option>'.encode() in page.content
    response = client.post("/dashboard/keys/", {"name": "ml-batch", "team": str(team.pk)})
    assert response.status_code == 302
    assert ApiKey.objects.get(name="ml-batch").team == team


def test_a_member_leaving_goes_back_to_the_team_list(client, team, carol):
    client.force_login(carol)
    response = client.post(f"/dashboard/teams/{team.pk}/members/carol/", {"action": "remove"})
    assert response["Location"] == "/dashboard/teams/"
    assert not TeamMembership.objects.filter(team=team, user=carol).exists()
