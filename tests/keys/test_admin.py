"""Operators manage keys, deployments and usage from Django's admin."""

import json
import re

import pytest
from django.contrib.sessions.models import Session

from keys.models import ApiKey, Team
from keys.tokens import key_digest
from telemetry.models import AuditEvent, UsageRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="root-pass-123")
    client.force_login(root)
    return client


def test_key_list_shows_owner_prefix_and_limits_but_no_secret(admin_client, alice, make_key):
    key, secret = make_key(alice, name="alice laptop", rpm_limit=7)
    page = admin_client.get("/admin/keys/apikey/").content.decode()
    assert "alice laptop" in page and key.prefix in page and "alice" in page
    assert secret not in page
    assert key.digest not in page
    detail = admin_client.get(f"/admin/keys/apikey/{key.pk}/change/").content.decode()
    assert secret not in detail and key.digest not in detail


def _add_key(admin_client, alice, name="from admin", **extra):
    return admin_client.post(
        "/admin/keys/apikey/add/",
        {"name": name, "owner": alice.pk, "rpm_limit": 10, "allowed_models": "[]", **extra},
    )


def test_creating_a_key_in_the_admin_shows_its_secret_once(admin_client, alice):
    response = _add_key(admin_client, alice)
    assert response.status_code == 302
    key = ApiKey.objects.get(name="from admin")
    assert response["Location"].startswith(f"/admin/keys/apikey/{key.pk}/change/?reveal=")
    page = admin_client.get(response["Location"])
    assert "no-store" in page["Cache-Control"]
    secrets = re.findall(r"nb_[0-9A-Za-z]{38}", page.content.decode())
    assert len(secrets) == 1
    assert key.owner == alice and key.prefix == secrets[0][:11]
    assert key.digest == key_digest(secrets[0])
    reloaded = admin_client.get(response["Location"]).content.decode()
    assert secrets[0] not in reloaded and "cannot be shown again" in reloaded
    again = admin_client.get("/admin/keys/apikey/").content.decode()
    assert secrets[0] not in again


def test_a_secret_created_in_the_admin_is_never_written_to_the_database(admin_client, alice):
    response = _add_key(admin_client, alice)
    # Flash messages live in the session, and the session in the database (and so in the
    # SQLite WAL, even once the message is read): the secret must not pass through either.
    sessions = [json.dumps(session.get_decoded()) for session in Session.objects.all()]
    assert sessions and not any("nb_" in session for session in sessions)
    page = admin_client.get(response["Location"]).content.decode()
    secret = re.findall(r"nb_[0-9A-Za-z]{38}", page)[0]
    assert ApiKey.objects.get().digest == key_digest(secret)
    assert not any(secret in json.dumps(s.get_decoded()) for s in Session.objects.all())


def test_a_refused_admin_key_is_shown_on_the_form(admin_client, alice):
    response = _add_key(admin_client, alice, expires_at_0="2001-01-01", expires_at_1="00:00:00")
    assert response.status_code == 200
    assert "expires_at must be in the future" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_admin_edits_go_through_the_service_and_are_audited(admin_client, alice, make_key):
    key, _ = make_key(alice, name="before")
    response = admin_client.post(
        f"/admin/keys/apikey/{key.pk}/change/",
        {"name": "after", "rpm_limit": 50, "allowed_models": '["nebula-7b"]'},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    key.refresh_from_db()
    assert (key.name, key.rpm_limit, key.allowed_models) == ("after", 50, ["nebula-7b"])
    # What the operator changed is now the ceiling the owner cannot widen.
    assert key.operator_limits == {"rpm_limit": 50, "allowed_models": ["nebula-7b"]}
    event = AuditEvent.objects.get(action="key.update")
    assert (event.before["name"], event.after["name"], event.actor_label) == (
        "before",
        "after",
        "root",
    )


def test_teams_and_members_are_managed_in_the_admin_through_the_services(admin_client, alice, bob):
    response = admin_client.post(
        "/admin/keys/team/add/",
        {
            "name": "ops",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "0",
            "memberships-0-user": alice.pk,
            "memberships-0-role": "admin",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    team = Team.objects.get(name="ops")
    assert [(m.user, m.role) for m in team.memberships.all()] == [(alice, "admin")]
    assert list(
        AuditEvent.objects.filter(target_type="team")
        .order_by("id")
        .values_list("action", flat=True)
    ) == ["team.create", "team.member_add"]


def test_revoke_action_revokes_selected_keys(admin_client, alice, make_key):
    key, _ = make_key(alice)
    admin_client.post(
        "/admin/keys/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]}
    )
    key.refresh_from_db()
    assert key.state == "revoked"


def test_usage_records_are_read_only_and_filterable(admin_client, alice, make_key):
    from django.utils import timezone

    key, _ = make_key(alice)
    UsageRecord.objects.create(
        request_id="req_admin1",
        api_key=key,
        key_prefix=key.prefix,
        model="nebula-7b",
        endpoint="/v1/chat/completions",
        status=200,
        created_at=timezone.now(),
    )
    listing = admin_client.get("/admin/telemetry/usagerecord/?status__exact=200")
    assert "req_admin1" in listing.content.decode()
    assert admin_client.get("/admin/telemetry/usagerecord/add/").status_code == 403
    record = UsageRecord.objects.get()
    change = admin_client.post(f"/admin/telemetry/usagerecord/{record.pk}/change/", {"status": 500})
    assert change.status_code == 403
    record.refresh_from_db()
    assert record.status == 200


def test_deployments_are_listed_with_their_state(admin_client, ready_model):
    ready_model("nebula-admin-7b")
    page = admin_client.get("/admin/models_registry/deployedmodel/").content.decode()
    assert "nebula-admin-7b" in page and "ready" in page


def test_the_new_secret_never_travels_in_a_cookie(admin_client, alice):
    response = admin_client.post(
        "/admin/keys/apikey/add/",
        {"name": "cookie check", "owner": alice.pk, "rpm_limit": 10, "allowed_models": "[]"},
    )
    assert response.status_code == 302
    cookies = "; ".join(f"{name}={morsel.value}" for name, morsel in response.cookies.items())
    assert "nb_" not in cookies and "messages" not in cookies
