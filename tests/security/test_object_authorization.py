"""Who may touch what, for every HTTP endpoint, with two users and an operator, each through a
session and through an API key (regular keys for the users, an admin key for the operator).

Someone else's key, usage or hidden deployment answers 404, never 403: whether it exists is
none of their business. (The dashboard's websocket consumers are tested with the dashboard.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from models_registry.models import DeployedModel, ModelState
from telemetry.models import UsageRecord

pytestmark = pytest.mark.django_db

ANON, ALICE, BOB, OPERATOR, ALICE_KEY, BOB_KEY, ADMIN_KEY = (
    "anonymous",
    "alice",
    "bob",
    "operator",
    "alice's key",
    "bob's key",
    "admin key",
)
ACTORS = [ANON, ALICE, BOB, OPERATOR, ALICE_KEY, BOB_KEY, ADMIN_KEY]


class World:
    def __init__(self, users: dict[str, Any], make_key: Any, ready_model: Any) -> None:
        self.users = users
        self.alice_key, alice_secret = make_key(users[ALICE], name="alice-1")
        self.alice_other, _ = make_key(users[ALICE], name="alice-2")
        self.bob_key, bob_secret = make_key(users[BOB], name="bob-1")
        _, admin_secret = make_key(users[OPERATOR], name="ops", is_admin=True)
        self.secrets = {ALICE_KEY: alice_secret, BOB_KEY: bob_secret, ADMIN_KEY: admin_secret}
        ready_model("nebula-7b")
        old = ready_model("old-model", params_billions=1)
        DeployedModel.objects.filter(pk=old.pk).update(state=ModelState.STOPPED)
        for key in (self.alice_key, self.alice_other, self.bob_key):
            UsageRecord.objects.create(
                request_id=f"req_{key.name}",
                api_key=key,
                key_prefix=key.prefix,
                model="nebula-7b",
                endpoint="/v1/chat/completions",
                status=200,
                prompt_tokens=10,
                completion_tokens=5,
                created_at=timezone.now(),
            )

    def client(self, actor: str) -> tuple[Client, dict[str, str]]:
        client = Client(raise_request_exception=False)
        if actor in (ALICE, BOB, OPERATOR):
            client.force_login(self.users[actor])
        headers = {}
        if actor in self.secrets:
            headers["HTTP_AUTHORIZATION"] = f"Bearer {self.secrets[actor]}"
        return client, headers

    def call(self, actor: str, method: str, path: str, body: Any = None) -> Any:
        client, headers = self.client(actor)
        data = json.dumps(body) if body is not None else None
        kwargs: dict[str, Any] = {"content_type": "application/json"} if data else {}
        response = (
            getattr(client, method)(path, data, **kwargs, **headers)
            if data
            else (getattr(client, method)(path, **headers))
        )
        if response.status_code >= 400 and not path.startswith("/admin"):
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        return response


@pytest.fixture
def world(alice, bob, operator, make_key, ready_model) -> World:
    return World({ALICE: alice, BOB: bob, OPERATOR: operator}, make_key, ready_model)


def _statuses(world: World, method: str, path: str, body: Any = None) -> dict[str, int]:
    return {actor: world.call(actor, method, path, body).status_code for actor in ACTORS}


def test_listing_keys_shows_each_person_their_own(world):
    assert _statuses(world, "get", "/apikeys") == {
        ANON: 401, ALICE: 200, BOB: 200, OPERATOR: 200, ALICE_KEY: 403, BOB_KEY: 403,
        ADMIN_KEY: 200,
    }  # fmt: skip

    def names(actor):
        return sorted(k["name"] for k in world.call(actor, "get", "/apikeys").json()["data"])

    assert names(ALICE) == ["alice-1", "alice-2"]
    assert names(BOB) == ["bob-1"]
    assert names(OPERATOR) == names(ADMIN_KEY) == ["alice-1", "alice-2", "bob-1", "ops"]
    assert [k["name"] for k in world.call(ALICE, "get", "/apikeys?owner=bob").json()["data"]] == []


def test_one_key_is_its_owners_and_the_operators_only(world):
    path = f"/apikeys/{world.alice_key.pk}"
    expected = {
        ANON: 401, ALICE: 200, BOB: 404, OPERATOR: 200, ALICE_KEY: 403, BOB_KEY: 403,
        ADMIN_KEY: 200,
    }  # fmt: skip
    assert _statuses(world, "get", path) == expected
    assert _statuses(world, "patch", path, {"name": "renamed"}) == expected
    assert world.call(BOB, "delete", path).status_code == 404
    assert world.call(BOB_KEY, "delete", path).status_code == 403
    world.alice_key.refresh_from_db()
    assert world.alice_key.revoked_at is None
    assert world.call(ALICE, "delete", path).status_code == 200


def test_only_operators_hand_out_capacity_privilege_or_keys_for_others(world):
    alice_path = f"/apikeys/{world.alice_key.pk}"
    assert world.call(ALICE, "patch", alice_path, {"rpm_limit": 10_000}).status_code == 403
    assert world.call(OPERATOR, "patch", alice_path, {"rpm_limit": 10_000}).status_code == 200
    for body in ({"name": "x", "owner": "bob"}, {"name": "x", "is_admin": True},
                 {"name": "x", "rpm_limit": 10_000}):  # fmt: skip
        assert world.call(ALICE, "post", "/apikeys", body).status_code == 403, body
        assert world.call(ADMIN_KEY, "post", "/apikeys", body).status_code == 201, body
    assert world.call(ALICE_KEY, "post", "/apikeys", {"name": "x"}).status_code == 403


def test_deployments_are_listed_by_what_each_may_use(world):
    statuses = _statuses(world, "get", "/models")
    assert statuses == {actor: 401 if actor == ANON else 200 for actor in ACTORS}
    user_view = world.call(ALICE, "get", "/models").json()["data"]
    assert [m["name"] for m in user_view] == ["nebula-7b"]
    assert "gpu_type" not in user_view[0] and "replicas" not in user_view[0]
    operator_view = world.call(OPERATOR, "get", "/models").json()["data"]
    assert sorted(m["name"] for m in operator_view) == ["nebula-7b", "old-model"]
    assert _statuses(world, "get", "/models/old-model") == {
        ANON: 401, ALICE: 404, BOB: 404, OPERATOR: 200, ALICE_KEY: 404, BOB_KEY: 404,
        ADMIN_KEY: 200,
    }  # fmt: skip


def test_only_operators_deploy_scale_and_undeploy(world):
    changes = [
        ("post", "/models", {"name": "new", "params_billions": 7, "gpu_type": "H100-80GB"}),
        ("patch", "/models/nebula-7b", {"replicas": 2}),
        ("delete", "/models/nebula-7b", None),
    ]
    for method, path, body in changes:
        statuses = {
            actor: world.call(actor, method, path, body).status_code
            for actor in (ANON, ALICE, BOB, ALICE_KEY, BOB_KEY)
        }
        assert statuses == {ANON: 401, ALICE: 403, BOB: 403, ALICE_KEY: 403, BOB_KEY: 403}
    assert world.call(OPERATOR, *changes[0]).status_code == 201
    assert world.call(ADMIN_KEY, *changes[1]).status_code == 200
    assert world.call(OPERATOR, *changes[2][:2]).status_code == 200


def test_usage_shows_each_their_own(world):
    def keys_in(actor, query=""):
        response = world.call(actor, "get", "/metrics" + query)
        assert response.status_code == 200
        report = response.json()
        return sorted(entry["key"]["name"] for entry in report["keys"]), report["totals"]

    assert world.call(ANON, "get", "/metrics").status_code == 401
    assert keys_in(ALICE)[0] == ["alice-1", "alice-2"]
    assert keys_in(BOB) == (["bob-1"], keys_in(BOB_KEY)[1])
    assert keys_in(ALICE_KEY)[0] == ["alice-1"]
    assert keys_in(OPERATOR)[0] == keys_in(ADMIN_KEY)[0] == ["alice-1", "alice-2", "bob-1"]
    # Asking for someone else's key by id shows nothing of it, not even its totals.
    for actor in (ALICE, ALICE_KEY):
        names, totals = keys_in(actor, f"?key={world.bob_key.pk}")
        assert names == [] and totals["requests"] == 0
    names, totals = keys_in(ALICE_KEY, f"?key={world.alice_other.pk}")
    assert names == [] and totals["requests"] == 0


def test_prometheus_is_for_operators_and_admin_keys(world):
    assert _statuses(world, "get", "/metrics/prometheus") == {
        ANON: 401, ALICE: 403, BOB: 403, OPERATOR: 200, ALICE_KEY: 403, BOB_KEY: 403,
        ADMIN_KEY: 200,
    }  # fmt: skip


def test_health_details_are_for_operators_only(world):
    from inference.workers import WorkerRuntime

    WorkerRuntime(concurrency=1).beat()  # a live worker to show, or not
    for actor in ACTORS:
        workers = world.call(actor, "get", "/health").json()["checks"]["workers"]
        shown = "workers" in workers
        # Only a logged-in operator sees hosts and pids; /health reads no API keys.
        assert shown == (actor == OPERATOR), actor


def test_the_admin_is_for_staff(world):
    for actor in (ANON, ALICE, BOB, ALICE_KEY, ADMIN_KEY):
        response = world.call(actor, "get", "/admin/keys/apikey/")
        assert response.status_code == 302 and "/admin/login/" in response["Location"], actor
    # Staff without the model permission see the admin, not the keys.
    assert world.call(OPERATOR, "get", "/admin/").status_code == 200
    assert world.call(OPERATOR, "get", "/admin/keys/apikey/").status_code == 403


# Committed data: /v1 views read keys and models on their own threads (infra.db).
@pytest.mark.django_db(transaction=True)
def test_v1_models_show_a_key_only_the_models_it_may_use(world, make_key):
    _, limited = make_key(world.users[ALICE], allowed_models=["old-model"])
    client = Client(raise_request_exception=False)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {limited}"}
    assert client.get("/v1/models", **auth).json()["data"] == []
    assert client.get("/v1/models/nebula-7b", **auth).status_code == 404
    every = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {world.secrets[ALICE_KEY]}")
    assert [m["id"] for m in every.json()["data"]] == ["nebula-7b"]
