"""Changing keys over /apikeys: who may narrow or widen what, rotation with a grace period, and
the audit log every change leaves."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from keys.models import ApiKey
from keys.tokens import key_digest
from telemetry.models import AuditEvent

pytestmark = pytest.mark.django_db


def _patch(client, key, body, **headers):
    return client.patch(
        f"/apikeys/{key.pk}", data=json.dumps(body), content_type="application/json", **headers
    )


def _post(client, path, body, **headers):
    return client.post(path, data=json.dumps(body), content_type="application/json", **headers)


def _code(response):
    return response.json()["error"]["code"], response.json()["error"]["param"]


@pytest.fixture
def restricted(client, operator, alice):
    """Alice's key, restricted by an operator: two models, 30 rpm, 1000 tpm, expiring in a week."""
    client.force_login(operator)
    expiry = (timezone.now() + timedelta(days=7)).isoformat()
    created = _post(
        client,
        "/apikeys",
        {
            "name": "restricted",
            "owner": "alice",
            "rpm_limit": 30,
            "tpm_limit": 1000,
            "allowed_models": ["nebula-7b", "nebula-13b"],
            "expires_at": expiry,
        },
    )
    assert created.status_code == 201, created.content
    client.force_login(alice)
    return ApiKey.objects.get(pk=created.json()["id"])


def test_a_user_cannot_lift_the_model_restriction_an_operator_set(client, restricted):
    widened = _patch(client, restricted, {"allowed_models": []})
    assert widened.status_code == 403
    assert _code(widened) == ("insufficient_permissions", "allowed_models")
    assert _patch(client, restricted, {"allowed_models": ["other"]}).status_code == 403
    restricted.refresh_from_db()
    assert restricted.allowed_models == ["nebula-13b", "nebula-7b"]

    narrowed = _patch(client, restricted, {"allowed_models": ["nebula-7b"]})
    assert narrowed.status_code == 200
    assert narrowed.json()["allowed_models"] == ["nebula-7b"]
    # Narrowed, and back to what the operator allowed: still within the operator's grant.
    back = _patch(client, restricted, {"allowed_models": ["nebula-7b", "nebula-13b"]})
    assert back.status_code == 200


def test_a_user_cannot_raise_lift_or_extend_an_operators_limits(client, restricted):
    later = (timezone.now() + timedelta(days=30)).isoformat()
    for body, param in [
        ({"rpm_limit": 31}, "rpm_limit"),
        ({"tpm_limit": 1001}, "tpm_limit"),
        ({"tpm_limit": None}, "tpm_limit"),
        ({"expires_at": None}, "expires_at"),
        ({"expires_at": later}, "expires_at"),
    ]:
        response = _patch(client, restricted, body)
        assert response.status_code == 403, body
        assert _code(response)[1] == param
    sooner = (timezone.now() + timedelta(days=1)).isoformat()
    lowered = _patch(client, restricted, {"rpm_limit": 5, "tpm_limit": 10, "expires_at": sooner})
    assert lowered.status_code == 200, lowered.content
    assert _patch(client, restricted, {"rpm_limit": 30}).status_code == 200  # the grant


def test_a_user_cannot_raise_a_limit_an_operator_lowered(client, operator, alice, make_key):
    key, _ = make_key(alice)
    client.force_login(operator)
    assert _patch(client, key, {"rpm_limit": 2}).status_code == 200
    client.force_login(alice)
    # 10 is the default anyone may give their own key, but an operator throttled this one.
    response = _patch(client, key, {"rpm_limit": 10})
    assert response.status_code == 403
    assert "Only operators can raise this key above 2" in response.json()["error"]["message"]


def test_users_shape_their_own_keys_within_the_defaults(client, alice, settings):
    client.force_login(alice)
    created = _post(client, "/apikeys", {"name": "mine", "rpm_limit": 3, "tpm_limit": 50})
    key = ApiKey.objects.get(pk=created.json()["id"])
    assert key.operator_limits == {}
    assert _patch(client, key, {"rpm_limit": settings.NEBULA_DEFAULT_RPM}).status_code == 200
    assert _patch(client, key, {"rpm_limit": settings.NEBULA_DEFAULT_RPM + 1}).status_code == 403
    assert _patch(client, key, {"tpm_limit": None}).status_code == 200  # their own limit
    assert _patch(client, key, {"allowed_models": []}).status_code == 200


def test_operators_raising_a_limit_sets_the_new_ceiling(client, operator, alice, make_key):
    key, _ = make_key(alice)
    client.force_login(operator)
    assert _patch(client, key, {"rpm_limit": 600, "name": "fast"}).status_code == 200
    client.force_login(alice)
    assert _patch(client, key, {"rpm_limit": 100}).status_code == 200
    assert _patch(client, key, {"rpm_limit": 600}).status_code == 200
    assert _patch(client, key, {"rpm_limit": 601}).status_code == 403


def test_unknown_fields_are_refused_not_ignored(client, alice, make_key):
    key, _ = make_key(alice)
    client.force_login(alice)
    for response in (
        _patch(client, key, {"rpm_limt": 5}),
        _post(client, "/apikeys", {"name": "x", "budget": 5}),
        _post(client, f"/apikeys/{key.pk}/rotate", {"grace_seconds": 0, "keep": True}),
    ):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid_value" and "Unknown field" in error["message"]
    assert ApiKey.objects.count() == 1


def test_secrets_are_sent_with_cache_control_no_store(client, alice, make_key):
    client.force_login(alice)
    created = _post(client, "/apikeys", {"name": "fresh"})
    assert created.status_code == 201
    assert created["Cache-Control"] == "no-store"
    rotated = _post(client, f"/apikeys/{created.json()['id']}/rotate", {"grace_seconds": 0})
    assert rotated.status_code == 200
    assert rotated["Cache-Control"] == "no-store"


def _admin_list(client, secret):
    return client.get("/apikeys", HTTP_AUTHORIZATION=f"Bearer {secret}")


def test_a_rotated_key_has_a_new_secret_and_the_old_one_works_for_the_grace(
    client, operator, make_key
):
    key, old = make_key(operator, name="ci", is_admin=True)
    client.force_login(operator)
    response = _post(client, f"/apikeys/{key.pk}/rotate", {"grace_seconds": 3600})
    assert response.status_code == 200
    body = response.json()
    new = body["key"]
    assert new != old and body["id"] == key.pk
    assert body["previous_prefix"] == old[:11] and body["prefix"] == new[:11]
    key.refresh_from_db()
    assert (key.digest, key.previous_digest) == (key_digest(new), key_digest(old))
    client.logout()
    assert _admin_list(client, old).status_code == 200
    assert _admin_list(client, new).status_code == 200

    # The grace period ends.
    ApiKey.objects.filter(pk=key.pk).update(previous_valid_until=timezone.now())
    refused = _admin_list(client, old)
    assert refused.status_code == 401
    assert "rotated" in refused.json()["error"]["message"]
    assert _admin_list(client, new).status_code == 200


def test_rotating_again_retires_the_secret_before_last(client, operator, make_key):
    key, first = make_key(operator, is_admin=True)
    client.force_login(operator)
    second = _post(client, f"/apikeys/{key.pk}/rotate", {"grace_seconds": 3600}).json()["key"]
    third = _post(client, f"/apikeys/{key.pk}/rotate", {"grace_seconds": 0}).json()["key"]
    client.logout()
    assert _admin_list(client, first).status_code == 401
    assert _admin_list(client, second).status_code == 401  # grace 0: at once
    assert _admin_list(client, third).status_code == 200


def test_rotation_needs_an_active_key_and_a_sane_grace(client, alice, make_key):
    key, _ = make_key(alice)
    client.force_login(alice)
    for grace in (-1, 31 * 24 * 3600, "soon", None):
        response = _post(client, f"/apikeys/{key.pk}/rotate", {"grace_seconds": grace})
        assert response.status_code == 400, grace
        assert response.json()["error"]["param"] == "grace_seconds"
    client.delete(f"/apikeys/{key.pk}")
    revoked = _post(client, f"/apikeys/{key.pk}/rotate", {"grace_seconds": 0})
    assert revoked.status_code == 409
    assert "revoked" in revoked.json()["error"]["message"]


def test_every_key_change_is_audited_with_before_and_after_but_no_secret(client, operator, alice):
    client.force_login(operator)
    created = _post(client, "/apikeys", {"name": "audited", "owner": "alice", "rpm_limit": 60})
    secret = created.json()["key"]
    key_id = created.json()["id"]
    _patch(client, ApiKey.objects.get(pk=key_id), {"rpm_limit": 120})
    rotated = _post(client, f"/apikeys/{key_id}/rotate", {"grace_seconds": 60}).json()["key"]
    client.delete(f"/apikeys/{key_id}")

    events = list(AuditEvent.objects.filter(target_id=str(key_id)).order_by("id"))
    assert [e.action for e in events] == ["key.create", "key.update", "key.rotate", "key.revoke"]
    assert {e.actor_label for e in events} == {"olivia-operator"}
    assert all(e.target_type == "api_key" and e.actor == operator for e in events)
    update = events[1]
    assert (update.before["rpm_limit"], update.after["rpm_limit"]) == (60, 120)
    assert events[3].after["state"] == "revoked"
    dumped = json.dumps([[e.before, e.after, e.target_label] for e in events])
    for leaked in (secret, rotated, ApiKey.objects.get(pk=key_id).digest):
        assert leaked not in dumped


def test_changes_through_an_admin_key_name_the_key_in_the_audit_log(
    client, operator, alice, make_key
):
    admin, secret = make_key(operator, name="ci", is_admin=True)
    key, _ = make_key(alice)
    _patch(client, key, {"name": "renamed"}, HTTP_AUTHORIZATION=f"Bearer {secret}")
    event = AuditEvent.objects.get(action="key.update")
    assert event.actor_label == f"olivia-operator via key {admin.prefix}…"
