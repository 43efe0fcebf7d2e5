"""Upstream deployments: validation, the key at rest, probing, routing and the lifecycle,
against the test engine on loopback and real Redis."""

import uuid

import pytest

from infra import aio
from infra.crypto import secret_decrypt
from infra.errors import InvalidRequest
from keys.access import Actor
from models_registry import services, upstreams
from models_registry.models import DeployedModel, ModelEvent, UpstreamConfig
from models_registry.serializers import deployment_data
from models_registry.upstreams import normalize_url
from tests.support.stack import free_port
from tests.support.upstream import deploy_upstream, forget_upstream_state

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_upstream_state(redis_client):
    forget_upstream_state(redis_client)


def target_of(model):
    return upstreams.upstream_target(model.pk, name=model.name)


def probe(model):
    statuses, _ = aio.run(upstreams.probe_target(target_of(model)))
    return [statuses[r.pk] for r in model.upstream_replicas.all()]


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("http://gpu-a.invalid:8000", "http://gpu-a.invalid:8000"),
        ("http://gpu-a.invalid:8000/v1", "http://gpu-a.invalid:8000"),
        ("https://GPU-Box.example:443/vllm/v1/", "https://gpu-box.example:443/vllm"),
        ("  http://localhost:11434/  ", "http://localhost:11434"),
    ],
)
def test_base_urls_are_stored_without_the_v1_people_paste(raw, stored):
    assert normalize_url(raw) == stored


@pytest.mark.parametrize(
    ("spec", "param", "words"),
    [
        ({}, "upstream_urls", "needs upstream_urls"),
        ({"upstream_urls": []}, "upstream_urls", "needs upstream_urls"),
        ({"upstream_urls": ["ftp://x"]}, "upstream_urls", "http:// or https://"),
        ({"upstream_urls": ["http://user:pw@x:1"]}, "upstream_urls", "credentials"),
        ({"upstream_urls": ["http://x:1", "http://x:1/v1"]}, "upstream_urls", "repeats"),
        ({"upstream_urls": ["http://x:99999"]}, "upstream_urls", "port"),
        ({"upstream_urls": ["http://x:1?a=b"]}, "upstream_urls", "query"),
        ({"upstream_urls": ["http://x:1"], "read_timeout": 0}, "read_timeout", "above 0"),
        ({"upstream_urls": ["http://x:1"], "connect_timeout": "5"}, "connect_timeout", "number"),
        ({"upstream_urls": ["http://x:1"], "upstream_api_key": "a\nb"}, "upstream_api_key", "line"),
        (
            {"upstream_urls": ["http://x:1", "http://y:1"], "replicas": 3},
            "replicas",
            "per upstream",
        ),
        ({"upstream_urls": ["http://x:1"], "gpu_type": "TPU"}, "gpu_type", "Unknown GPU"),
    ],
)
def test_an_upstream_deployment_that_makes_no_sense_is_a_400_naming_the_field(
    operator, spec, param, words
):
    with pytest.raises(InvalidRequest) as refused:
        services.model_deploy(
            actor=Actor(user=operator), name="up", backend="openai-compatible", **spec
        )
    assert refused.value.param == param
    assert words in refused.value.message
    assert not DeployedModel.objects.exists()


def test_an_unknown_backend_is_refused(operator):
    with pytest.raises(InvalidRequest) as refused:
        services.model_deploy(
            actor=Actor(user=operator), name="up", backend="triton", params_billions=7
        )
    assert refused.value.param == "backend"


def test_an_upstream_deployment_needs_no_gpu_and_has_one_replica_per_url(operator):
    model = deploy_upstream("http://a:8000", "http://b:8000", max_concurrent_seqs=16)
    assert (model.replicas, model.capacity, model.gpu_type, model.parameters) == (2, 32, "", 0)
    assert [r.url for r in model.upstream_replicas.all()] == ["http://a:8000", "http://b:8000"]
    assert model.upstream.model_name == "test-upstream-model"


def test_the_upstream_key_is_encrypted_at_rest_and_never_serialized(operator):
    model = deploy_upstream("http://a:8000", upstream_api_key="sk-very-secret-upstream-key")
    stored = UpstreamConfig.objects.get(deployment=model).api_key_encrypted
    assert "sk-very-secret" not in stored
    assert secret_decrypt(stored) == "sk-very-secret-upstream-key"
    data = deployment_data(model, operator=True)
    assert "sk-very-secret" not in repr(data) and stored not in repr(data)
    assert data["upstream"]["has_api_key"] is True
    assert target_of(model).api_key == "sk-very-secret-upstream-key"
    assert "sk-very-secret" not in repr(target_of(model))


def test_a_key_encrypted_with_another_secret_is_not_used_and_says_so(operator, settings, caplog):
    model = deploy_upstream("http://a:8000", upstream_api_key="sk-old")
    settings.NEBULA_ENCRYPTION_KEYS = ["5Hs4aG8Yz1bq3P0Wn2mQ7rT9vX6cK1dL4eF8gH0jJ2s="]
    assert target_of(model).api_key == ""
    assert "cannot be decrypted" in caplog.text and "sk-old" not in caplog.text


def test_a_rotated_encryption_key_still_reads_what_the_old_one_wrote(operator, settings):
    old = "5Hs4aG8Yz1bq3P0Wn2mQ7rT9vX6cK1dL4eF8gH0jJ2s="
    settings.NEBULA_ENCRYPTION_KEYS = [old]
    model = deploy_upstream("http://a:8000", upstream_api_key="sk-rotate-me")
    settings.NEBULA_ENCRYPTION_KEYS = ["Jd1p8Xz0Qm4bR7sT2vW5yA9cE3fH6kL0nP2qS4uV6xY=", old]
    upstreams._targets.clear()
    assert target_of(model).api_key == "sk-rotate-me"


def test_an_upstream_deployment_cannot_be_scaled_by_replica_count(operator):
    model = deploy_upstream("http://a:8000")
    with pytest.raises(InvalidRequest) as refused:
        services.model_scale(actor=Actor(user=operator), model=model, replicas=3)
    assert refused.value.param == "replicas"


# --- probing ------------------------------------------------------------------------------------


def test_a_healthy_vllm_replica_reports_latency_and_its_queue(engine, redis_client):
    engine.control(running=3, waiting=2, kv_cache=0.5)
    model = deploy_upstream(engine.url)
    (status,) = probe(model)
    assert status["healthy"] and status["error"] == ""
    assert status["latency_ms"] > 0
    assert (status["running"], status["waiting"], status["kv_cache_usage"]) == (3, 2, 0.5)
    replica = model.upstream_replicas.get()
    assert redis_client.hget(upstreams.health_key(model.pk), str(replica.pk)) == b"1"
    assert redis_client.hget(upstreams.load_key(model.pk), str(replica.pk)) == b"5"
    (shown,) = deployment_data(model, operator=True)["upstream"]["replicas"]
    assert shown["health"] == "healthy" and shown["running"] == 3


def test_a_replica_failing_its_health_check_leaves_the_rotation_and_comes_back(
    engine, second_engine, redis_client
):
    model = deploy_upstream(engine.url, second_engine.url, max_concurrent_seqs=4)
    assert upstreams.upstream_probe_round() == 1
    assert redis_client.hget("nebula:capacity", model.name) == b"8"
    engine.control(health_status=503)
    upstreams.upstream_probe_round()
    first, second = probe(model)
    assert not first["healthy"] and first["error"] == "/health answered 503"
    assert second["healthy"]
    assert redis_client.hget("nebula:capacity", model.name) == b"4"
    route = aio.run(upstreams.replica_pick(target_of(model), request_id="req_a"))
    assert [r.url for r in route.candidates] == [second_engine.url]
    engine.control(health_status=200)
    upstreams.upstream_probe_round()
    assert redis_client.hget("nebula:capacity", model.name) == b"8"
    route = aio.run(upstreams.replica_pick(target_of(model), request_id="req_b"))
    assert {r.url for r in route.candidates} == {engine.url, second_engine.url}


def test_with_every_replica_down_requests_still_try_them_and_capacity_stays(
    redis_client,
):
    model = deploy_upstream(f"http://127.0.0.1:{free_port()}", max_concurrent_seqs=4)
    upstreams.upstream_probe_round()
    (status,) = probe(model)
    assert not status["healthy"] and "could not connect" in status["error"]
    # All down: capacity is not zero (requests would queue until the queue timeout); they are
    # tried and fail at once with upstream_unavailable.
    assert redis_client.hget("nebula:capacity", model.name) == b"4"
    route = aio.run(upstreams.replica_pick(target_of(model), request_id="req_c"))
    assert len(route.candidates) == 1


def test_a_replica_not_serving_the_model_is_down_and_says_what_it_serves(engine):
    engine.control(models=["llama-3-8b", "qwen-7b"])
    (status,) = probe(deploy_upstream(engine.url))
    assert not status["healthy"]
    assert status["error"] == (
        "does not serve 'test-upstream-model' (it serves: llama-3-8b, qwen-7b)"
    )


def test_an_engine_without_a_health_endpoint_is_judged_by_its_model_list(engine):
    engine.control(health_status=404)  # Ollama has no /health
    (status,) = probe(deploy_upstream(engine.url))
    assert status["healthy"]


def test_a_probe_uses_the_upstream_key(engine):
    engine.control(require_key="sk-probe-key")
    assert not probe(deploy_upstream(engine.url))[0]["healthy"]
    assert probe(deploy_upstream(engine.url, upstream_api_key="sk-probe-key"))[0]["healthy"]


def test_the_least_loaded_replica_goes_first(engine, second_engine):
    engine.control(waiting=10)  # the engine says it has a queue
    model = deploy_upstream(engine.url, second_engine.url)
    probe(model)
    route = aio.run(upstreams.replica_pick(target_of(model), request_id=f"req_{uuid.uuid4()}"))
    assert route.candidates[0].url == second_engine.url


def test_requests_in_flight_count_as_load(engine, second_engine):
    model = deploy_upstream(engine.url, second_engine.url)
    target = target_of(model)
    picks = [
        aio.run(upstreams.replica_pick(target, request_id=f"req_{i}")).candidates[0].url
        for i in range(4)
    ]
    assert picks == [engine.url, second_engine.url, engine.url, second_engine.url]


# --- lifecycle ----------------------------------------------------------------------------------


def test_an_upstream_deployment_is_ready_once_a_replica_answers(
    operator, engine, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        model = services.model_deploy(
            actor=Actor(user=operator),
            name="llama",
            backend="openai-compatible",
            upstream_urls=[f"http://127.0.0.1:{free_port()}", engine.url],
            upstream_model="test-upstream-model",
        )
    model.refresh_from_db()
    assert model.state == "ready", model.failure_reason
    note = ModelEvent.objects.filter(model=model).last().note
    assert f"1 of 2 upstream replica(s) answering ({engine.url}" in note


def test_an_upstream_deployment_nobody_answers_for_fails_with_the_reasons(
    operator, settings, django_capture_on_commit_callbacks
):
    settings.NEBULA_UPSTREAM_LOAD_TIMEOUT = 1
    url = f"http://127.0.0.1:{free_port()}"
    with django_capture_on_commit_callbacks(execute=True):
        model = services.model_deploy(
            actor=Actor(user=operator),
            name="nobody",
            backend="openai-compatible",
            upstream_urls=[url],
        )
    model.refresh_from_db()
    assert model.state == "failed"
    assert model.failure_reason.startswith("No upstream replica answered within 1 s.")
    assert f"{url}: could not connect" in model.failure_reason
