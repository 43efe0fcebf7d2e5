"""Dashboard pages over HTTP (Django's test client), then the database."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from keys.models import ApiKey
from keys.tokens import key_digest
from models_registry.models import DeployedModel
from telemetry.models import UsageRecord

pytestmark = pytest.mark.django_db

PAGES = [
    "/dashboard/",
    "/dashboard/keys/",
    "/dashboard/models/",
    "/dashboard/chat/",
    "/dashboard/usage/",
]


def record(key, request_id, *, status=200, tokens=(10, 20), model="nebula-7b"):
    return UsageRecord.objects.create(
        request_id=request_id,
        api_key=key,
        key_prefix=key.prefix,
        model=model,
        endpoint="/v1/chat/completions",
        status=status,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        latency_ms=120.0,
        ttft_ms=30.0,
        created_at=timezone.now() - timedelta(minutes=2),
    )


# --- Login -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", PAGES)
def test_every_page_sends_anonymous_visitors_to_the_login_page(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_the_root_redirects_to_the_overview(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"


def test_a_wrong_password_is_shown_on_the_login_form_with_the_username_kept(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content
    assert b'value="alice"' in response.content


def test_logging_in_lands_on_the_overview_and_logging_out_needs_a_post(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-pass-123"})
    assert response["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200
    assert client.get("/accounts/logout/").status_code == 405
    assert client.post("/accounts/logout/")["Location"] == "/accounts/login/"
    assert client.get("/dashboard/").status_code == 302


@pytest.mark.parametrize("url", PAGES)
def test_every_page_renders_for_users_and_operators(client, alice, operator, make_key, url):
    make_key(alice)
    for person in (alice, operator):
        client.force_login(person)
        response = client.get(url)
        assert response.status_code == 200
        assert b'<main id="main"' in response.content


# --- API keys ----------------------------------------------------------------------------------


def test_creating_a_key_redirects_and_the_next_page_shows_its_secret_once(client, alice):
    client.force_login(alice)
    response = client.post("/dashboard/keys/", {"name": "billing", "rpm_limit": "5"})
    assert response.status_code == 302
    assert response["Location"].startswith("/dashboard/keys/?reveal=")
    assert b"nb_" not in response.content

    shown = client.get(response["Location"])
    assert shown.status_code == 200
    assert shown["Cache-Control"] == "no-store"
    secret = shown.context["created"]["secret"]
    assert secret.encode() in shown.content
    assert b"you won't see this again" in shown.content

    key = ApiKey.objects.get(owner=alice, name="billing")
    assert key.digest == key_digest(secret)
    assert key.rpm_limit == 5
    reloaded = client.get(response["Location"])  # a reload: no second key, no secret
    assert secret.encode() not in reloaded.content
    assert b"cannot be shown again" in reloaded.content
    assert ApiKey.objects.filter(owner=alice).count() == 1
    again = client.get("/dashboard/keys/")
    assert secret.encode() not in again.content
    assert key.prefix.encode() in again.content


def test_a_revealed_secret_is_for_the_person_who_created_it(client, alice, bob):
    client.force_login(alice)
    location = client.post("/dashboard/keys/", {"name": "mine"})["Location"]
    client.force_login(bob)
    page = client.get(location)
    assert page.context["created"] is None
    client.force_login(alice)  # the attempt used it up: nobody sees it now
    assert client.get(location).context["created"] is None


def test_key_form_errors_are_shown_in_place_and_keep_what_was_typed(client, alice):
    client.force_login(alice)
    response = client.post(
        "/dashboard/keys/", {"name": "", "rpm_limit": "lots", "allowed_models": "nebula-7b"}
    )
    assert response.status_code == 400
    form = response.context["form"]
    assert "name" in form.errors and "rpm_limit" in form.errors
    assert b'value="lots"' in response.content
    assert b'value="nebula-7b"' in response.content
    assert b'aria-invalid="true"' in response.content
    assert not ApiKey.objects.exists()


def test_a_user_cannot_raise_their_own_rate_limit(client, alice):
    client.force_login(alice)
    response = client.post("/dashboard/keys/", {"name": "greedy", "rpm_limit": "5000"})
    assert response.status_code == 403
    assert "Only operators" in response.context["form"].errors["rpm_limit"][0]
    assert b'value="greedy"' in response.content
    assert not ApiKey.objects.exists()


def test_a_service_refusal_lands_next_to_its_field(client, alice):
    client.force_login(alice)
    response = client.post("/dashboard/keys/", {"name": "k", "allowed_models": "bad name!"})
    assert response.status_code == 400
    assert "not a valid model name" in response.context["form"].errors["allowed_models"][0]


def test_operators_create_keys_for_others(client, operator, alice):
    client.force_login(operator)
    response = client.post(
        "/dashboard/keys/", {"name": "for alice", "owner": "alice", "rpm_limit": "600"}
    )
    assert response.status_code == 302
    key = ApiKey.objects.get(name="for alice")
    assert key.owner == alice and key.rpm_limit == 600


def test_revoking_asks_for_confirmation_first(client, alice, make_key):
    key, _ = make_key(alice, name="old")
    client.force_login(alice)
    confirm = client.get(f"/dashboard/keys/{key.pk}/revoke/")
    assert confirm.status_code == 200
    assert b"cannot be undone" in confirm.content
    key.refresh_from_db()
    assert key.state == "active"

    response = client.post(f"/dashboard/keys/{key.pk}/revoke/")
    assert response["Location"] == "/dashboard/keys/"
    key.refresh_from_db()
    assert key.state == "revoked"


def test_a_user_sees_and_revokes_only_their_own_keys(client, alice, bob, make_key):
    alices, _ = make_key(alice, name="alices-secret-project")
    make_key(bob, name="bobs-key")
    client.force_login(bob)
    page = client.get("/dashboard/keys/")
    assert b"bobs-key" in page.content
    assert b"alices-secret-project" not in page.content
    assert alices.prefix.encode() not in page.content
    assert client.get(f"/dashboard/keys/{alices.pk}/revoke/").status_code == 404
    assert client.post(f"/dashboard/keys/{alices.pk}/revoke/").status_code == 404
    alices.refresh_from_db()
    assert alices.state == "active"


def test_operators_see_everyones_keys(client, operator, alice, bob, make_key):
    make_key(alice, name="alices-key")
    make_key(bob, name="bobs-key")
    client.force_login(operator)
    page = client.get("/dashboard/keys/").content
    assert b"alices-key" in page and b"bobs-key" in page


# --- Models ------------------------------------------------------------------------------------


def test_an_operator_deploys_from_the_form(client, operator):
    client.force_login(operator)
    response = client.post(
        "/dashboard/models/",
        {
            "name": "nebula-13b",
            "params_billions": "13",
            "gpu_type": "A100-80GB",
            "gpus_per_replica": "1",
            "replicas": "2",
        },
    )
    assert response.status_code == 302
    model = DeployedModel.objects.get(name="nebula-13b")
    assert (model.state, model.replicas, model.gpu_type) == ("pending", 2, "A100-80GB")
    assert model.max_concurrent_seqs == 8 and model.context_length == 8192  # the defaults


def test_deploy_errors_are_shown_in_place_and_keep_what_was_typed(client, operator):
    client.force_login(operator)
    response = client.post(
        "/dashboard/models/",
        {
            "name": "bad name",
            "params_billions": "13",
            "gpu_type": "L4",
            "gpus_per_replica": "1",
            "replicas": "0",
        },
    )
    assert response.status_code == 400
    assert "model name" in response.context["form"].errors["name"][0]
    assert b'value="bad name"' in response.content
    assert b'<details class="card deploy" id="deploy" open>' in response.content

    response = client.post(
        "/dashboard/models/",
        {
            "name": "ok",
            "params_billions": "13",
            "gpu_type": "L4",
            "gpus_per_replica": "1",
            "replicas": "0",
        },
    )
    assert (
        "replicas must be a whole number from 1" in response.context["form"].errors["replicas"][0]
    )
    assert not DeployedModel.objects.exists()


def test_users_see_ready_models_without_the_fleet_details_and_cannot_deploy(
    client, alice, ready_model, operator
):
    ready_model("nebula-7b")
    DeployedModel.objects.create(
        name="secret-loading", parameters=7_000_000_000, gpu_type="H100-80GB", state="loading"
    )
    client.force_login(alice)
    page = client.get("/dashboard/models/").content
    assert b"nebula-7b" in page
    assert b"secret-loading" not in page
    assert b"H100" not in page
    assert b"Deploy a model" not in page
    response = client.post("/dashboard/models/", {"name": "x", "params_billions": "1"})
    assert response.status_code == 403
    assert not DeployedModel.objects.filter(name="x").exists()


def test_a_bad_scale_keeps_the_typed_value_next_to_its_row(client, operator, ready_model):
    ready_model("nebula-7b")
    client.force_login(operator)
    response = client.post("/dashboard/models/nebula-7b/scale/", {"replicas": "0"})
    assert response.status_code == 400
    assert b"replicas must be a whole number" in response.content
    assert b'value="0" aria-invalid="true"' in response.content

    response = client.post("/dashboard/models/nebula-7b/scale/", {"replicas": "3"})
    assert response.status_code == 302
    assert DeployedModel.objects.get(name="nebula-7b").target_replicas == 3  # loading them


def test_undeploying_asks_for_confirmation_first(client, operator, ready_model):
    ready_model("nebula-7b")
    client.force_login(operator)
    assert b"Undeploy nebula-7b?" in client.get("/dashboard/models/nebula-7b/undeploy/").content
    assert DeployedModel.objects.get(name="nebula-7b").state == "ready"
    client.post("/dashboard/models/nebula-7b/undeploy/")
    assert DeployedModel.objects.get(name="nebula-7b").state in ("stopping", "stopped")


def test_users_cannot_scale_or_undeploy(client, alice, ready_model):
    ready_model("nebula-7b")
    client.force_login(alice)
    assert client.post("/dashboard/models/nebula-7b/scale/", {"replicas": "4"}).status_code == 403
    assert client.post("/dashboard/models/nebula-7b/undeploy/").status_code == 403
    assert DeployedModel.objects.get(name="nebula-7b").state == "ready"


# --- Playground and usage ----------------------------------------------------------------------


def test_the_playground_offers_only_your_own_active_keys(client, operator, alice, make_key):
    make_key(alice, name="alices-key")
    make_key(operator, name="ops-key")
    revoked, _ = make_key(operator, name="ops-old-key")
    revoked.revoked_at = timezone.now()
    revoked.save()
    client.force_login(operator)
    page = client.get("/dashboard/chat/").content
    assert b"ops-key" in page
    assert b"alices-key" not in page
    assert b"ops-old-key" not in page
    assert b"nb_" in page  # the prefix, to tell keys apart
    assert b"digest" not in page


def test_usage_shows_only_your_own_keys_traffic(client, alice, bob, make_key):
    alices, _ = make_key(alice, name="alices-key")
    bobs, _ = make_key(bob, name="bobs-key")
    for i in range(3):
        record(alices, f"a{i}", tokens=(100, 900))
    record(bobs, "b0", tokens=(1, 2))
    client.force_login(bob)
    response = client.get("/dashboard/usage/")
    report = response.context["report"]
    assert report["totals"]["requests"] == 1
    assert report["totals"]["total_tokens"] == 3
    assert b"alices-key" not in response.content
    assert b"bobs-key" in response.content


def test_usage_filters_refuse_someone_elses_key(client, alice, bob, make_key):
    alices, _ = make_key(alice, name="alices-key")
    record(alices, "a0")
    client.force_login(bob)
    response = client.get(f"/dashboard/usage/?key={alices.pk}&window=24h")
    assert response.status_code == 400
    assert "key" in response.context["form"].errors
    assert response.context["report"] is None


def test_usage_narrows_to_one_key_and_range(client, alice, make_key):
    first, _ = make_key(alice, name="first")
    second, _ = make_key(alice, name="second")
    record(first, "f0")
    record(second, "s0")
    record(second, "s1")
    client.force_login(alice)
    response = client.get(f"/dashboard/usage/?key={second.pk}&window=1h")
    assert response.context["report"]["totals"]["requests"] == 2
    timeline = response.context["timeline"]
    assert timeline["bucket_seconds"] == 60
    assert sum(point["requests"] for point in timeline["points"]) == 2


# --- Static files ------------------------------------------------------------------------------


def test_collectstatic_builds_the_manifest_that_production_serves(tmp_path):
    manifest = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    with override_settings(STATIC_ROOT=tmp_path, STORAGES=manifest):
        call_command("collectstatic", "--noinput", verbosity=0)
    names = {path.name for path in tmp_path.rglob("*")}
    assert "staticfiles.json" in names
    assert any(name.startswith("nebula.") and name.endswith(".css") for name in names)
