"""Deployments of kind `embedding`: named after a model Nebula has the files of, sized as that
model, served by the workers; deployed through /models and the dashboard like chat models."""

import json

import pytest

from models_registry.embedding_models import ALL_MINILM_L6_V2
from models_registry.models import DeployedModel

pytestmark = pytest.mark.django_db

EMBEDDING = {"name": "all-minilm-l6-v2", "kind": "embedding", "gpu_type": "L4"}


def _post(client, body):
    return client.post("/models", data=json.dumps(body), content_type="application/json")


def test_an_embedding_model_deploys_with_its_real_size_and_length(client, operator):
    client.force_login(operator)
    response = _post(client, EMBEDDING)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "embedding" and body["state"] == "pending"
    assert body["parameters"] == ALL_MINILM_L6_V2.parameters
    assert body["context_length"] == ALL_MINILM_L6_V2.max_seq_length == 256
    # A chat model stays a chat model when it does not say.
    chat = _post(client, {"name": "nebula-7b", "params_billions": 7, "gpu_type": "L4"})
    assert chat.json()["kind"] == "chat"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"name": "my-embedder"}, "name"),  # no such model's files
        ({"kind": "vision"}, "kind"),
        ({"backend": "openai-compatible", "upstream_urls": ["http://10.0.0.5:8000"]}, "backend"),
        ({"context_length": 512}, "context_length"),  # longer than the model reads
        ({"params_billions": 7}, "params_billions"),  # the model's size is its own
    ],
)
def test_an_embedding_deployment_the_model_cannot_be_is_refused(client, operator, change, param):
    client.force_login(operator)
    response = _post(client, {**EMBEDDING, **change})
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param
    assert not DeployedModel.objects.exists()


def test_an_operator_deploys_an_embedding_model_from_the_dashboard(client, operator):
    client.force_login(operator)
    response = client.post(
        "/dashboard/models/",
        {
            "name": "all-minilm-l6-v2",
            "kind": "embedding",
            "gpu_type": "L4",
            "replicas": "1",
            "gpus_per_replica": "1",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    model = DeployedModel.objects.get(name="all-minilm-l6-v2")
    assert (model.kind, model.parameters, model.context_length) == ("embedding", 22_713_216, 256)
    page = client.get("/dashboard/models/").content.decode()
    assert "embeddings" in page  # the fleet row says what it serves


def test_the_playground_offers_chat_models_only(client, alice, make_key, ready_model):
    ready_model("nebula-7b")
    ready_model("all-minilm-l6-v2", kind="embedding", params_billions=None)
    make_key(alice)
    client.force_login(alice)
    page = client.get("/dashboard/chat/").content.decode()
    assert "nebula-7b" in page and "all-minilm-l6-v2" not in page
