"""Operators manage keys, deployments and usage from Django's admin."""

import re

import pytest

from keys.models import ApiKey
from telemetry.models import UsageRecord

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


def test_creating_a_key_in_the_admin_shows_its_secret_once(admin_client, alice):
    response = admin_client.post(
        "/admin/keys/apikey/add/",
        {"name": "from admin", "owner": alice.pk, "rpm_limit": 10, "allowed_models": "[]"},
        follow=True,
    )
    assert response.status_code == 200
    page = response.content.decode()
    secrets = re.findall(r"nb_[0-9A-Za-z]{38}", page)
    assert len(secrets) == 1
    key = ApiKey.objects.get(name="from admin")
    assert key.owner == alice and key.prefix == secrets[0][:11]
    again = admin_client.get("/admin/keys/apikey/").content.decode()
    assert secrets[0] not in again


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
