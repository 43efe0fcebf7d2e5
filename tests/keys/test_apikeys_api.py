"""/apikeys: who may create, list, see and revoke which keys, and what the answers look like."""

import json

import pytest
from django.test import Client

from keys.models import ApiKey
from keys.tokens import key_digest

pytestmark = pytest.mark.django_db


def _error(response):
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def _post(client, data, **headers):
    return client.post(
        "/apikeys", data=json.dumps(data), content_type="application/json", **headers
    )


def test_created_key_shows_its_secret_once_and_stores_only_a_digest(client, alice):
    client.force_login(alice)

    created = _post(client, {"name": "laptop"})

    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith("nb_")
    stored = ApiKey.objects.get(pk=created.json()["id"])
    assert stored.digest == key_digest(secret)
    row = ApiKey.objects.filter(pk=stored.pk).values().get()
    assert all(secret not in str(value) for value in row.values())
    listing = client.get("/apikeys")
    detail = client.get(f"/apikeys/{stored.pk}")
    for later in (listing, detail):
        assert later.status_code == 200
        assert secret not in later.content.decode()
        assert '"key"' not in later.content.decode()
    assert listing.json()["data"][0]["prefix"] == secret[:11]


def test_new_keys_get_the_default_rate_limit(client, alice, settings):
    client.force_login(alice)
    created = _post(client, {"name": "default"}).json()
    assert created["rpm_limit"] == settings.NEBULA_DEFAULT_RPM == 10
    assert created["state"] == "active"


def test_anonymous_requests_get_401(client):
    response = client.get("/apikeys")
    assert response.status_code == 401
    assert _error(response)["code"] == "invalid_api_key"


def test_a_regular_key_cannot_create_or_list_keys(client, alice, make_key):
    _, secret = make_key(alice)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}

    assert _post(client, {"name": "sneaky"}, **auth).status_code == 403
    assert client.get("/apikeys", **auth).status_code == 403
    assert _error(client.get("/apikeys", **auth))["type"] == "permission_error"
    assert ApiKey.objects.count() == 1


def test_an_admin_key_creates_keys_for_users(client, operator, alice, make_key):
    _, admin_secret = make_key(operator, name="ci", is_admin=True)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {admin_secret}"}

    created = _post(client, {"name": "for alice", "owner": "alice", "rpm_limit": 600}, **auth)

    assert created.status_code == 201, created.content
    assert created.json()["owner"] == "alice"
    assert created.json()["rpm_limit"] == 600


def test_a_user_cannot_list_see_or_revoke_another_users_keys(client, alice, bob, make_key):
    alices_key, _ = make_key(alice, name="alice's")
    make_key(bob, name="bob's")
    client.force_login(bob)

    listing = client.get("/apikeys").json()["data"]
    assert [key["name"] for key in listing] == ["bob's"]
    assert client.get(f"/apikeys/{alices_key.pk}").status_code == 404
    assert client.delete(f"/apikeys/{alices_key.pk}").status_code == 404
    assert (
        client.patch(
            f"/apikeys/{alices_key.pk}", data={"name": "x"}, content_type="application/json"
        ).status_code
        == 404
    )
    alices_key.refresh_from_db()
    assert alices_key.state == "active"
    assert alices_key.name == "alice's"


def test_a_user_cannot_create_a_key_for_someone_else(client, alice, bob):
    client.force_login(bob)
    response = _post(client, {"name": "for alice", "owner": "alice"})
    assert response.status_code == 403
    assert not ApiKey.objects.exists()


def test_operators_see_and_revoke_everyones_keys(client, operator, alice, bob, make_key):
    alices_key, _ = make_key(alice, name="alice's")
    make_key(bob, name="bob's")
    client.force_login(operator)

    names = {key["name"] for key in client.get("/apikeys").json()["data"]}
    assert names == {"alice's", "bob's"}
    revoked = client.delete(f"/apikeys/{alices_key.pk}")
    assert revoked.status_code == 200
    assert revoked.json()["state"] == "revoked"


def test_revoking_twice_is_harmless(client, alice, make_key):
    key, _ = make_key(alice)
    client.force_login(alice)
    first = client.delete(f"/apikeys/{key.pk}").json()
    second = client.delete(f"/apikeys/{key.pk}").json()
    assert first["revoked_at"] == second["revoked_at"] is not None


def test_users_cannot_raise_their_own_limits(client, alice, make_key):
    client.force_login(alice)
    assert _post(client, {"name": "greedy", "rpm_limit": 1000}).status_code == 403
    assert _post(client, {"name": "admin", "is_admin": True}).status_code == 403
    lower = _post(client, {"name": "modest", "rpm_limit": 5, "tpm_limit": 1000})
    assert lower.status_code == 201
    key_id = lower.json()["id"]
    raised = client.patch(
        f"/apikeys/{key_id}", data={"rpm_limit": 50}, content_type="application/json"
    )
    assert raised.status_code == 403


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "k", "rpm_limit": -1}, "rpm_limit"),
        ({"name": "k", "rpm_limit": "lots"}, "rpm_limit"),
        ({"name": "k", "tpm_limit": 0}, "tpm_limit"),
        ({"name": "k", "allowed_models": "nebula-7b"}, "allowed_models"),
        ({"name": "k", "allowed_models": ["bad name!"]}, "allowed_models"),
        ({"name": "k", "expires_at": "yesterday"}, "expires_at"),
        ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ],
)
def test_bad_bodies_get_400_naming_the_field(client, alice, body, param):
    client.force_login(alice)
    response = _post(client, body)
    assert response.status_code == 400, response.content
    error = _error(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"name"'])
def test_bodies_that_are_not_json_objects_get_400(client, alice, raw):
    client.force_login(alice)
    response = client.post("/apikeys", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert _error(response)["message"]


def test_session_writes_need_a_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = _post(client, {"name": "no csrf"})
    assert response.status_code == 403
    assert "CSRF" in _error(response)["message"]
    assert not ApiKey.objects.exists()


def test_bearer_requests_need_no_csrf_token(operator, make_key):
    _, admin_secret = make_key(operator, is_admin=True)
    client = Client(enforce_csrf_checks=True)
    response = _post(client, {"name": "script"}, HTTP_AUTHORIZATION=f"Bearer {admin_secret}")
    assert response.status_code == 201


@pytest.mark.parametrize(
    "header",
    ["Bearer nb_definitelynotakey", "Bearer", "Basic dXNlcjpwYXNz", "Bearer nb_" + "A" * 38],
)
def test_bad_bearer_credentials_get_401(client, header):
    response = client.get("/apikeys", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert _error(response)["code"] == "invalid_api_key"


def test_revoked_key_cannot_manage_keys(client, operator, make_key):
    from keys.access import SYSTEM
    from keys.services import key_revoke

    key, secret = make_key(operator, is_admin=True)
    key_revoke(actor=SYSTEM, key=key)
    response = client.get("/apikeys", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 401
    assert "revoked" in _error(response)["message"]
