"""/v1/embeddings with a real model (all-MiniLM-L6-v2) on live daphne + Celery workers, through
the official `openai` client, sync and async. Each worker process loads the model once, on its
first embedding job; the tests after the first reuse it."""

import asyncio
import base64
import json
import math
import struct
import time

import httpx
import openai
import pytest

from tests.support.openai_schema import validate

MODEL = "all-minilm-l6-v2"
SIMILAR = ("A man is playing a guitar on stage.", "Someone performs a song with a guitar.")
UNRELATED = "The quarterly tax report is due on Friday."


@pytest.fixture
def embedder(live, alice, make_key, ready_model):
    """A ready embedding deployment and a key for it; the secret."""
    ready_model(MODEL, kind="embedding", params_billions=None)
    _, secret = make_key(alice, rpm_limit=10_000)
    return secret


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def norm(vector):
    return math.sqrt(sum(x * x for x in vector))


def post(live, secret, body):
    return httpx.post(
        live.url + "/v1/embeddings",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=120,
    )


def test_similar_sentences_are_closer_than_unrelated_ones(live, embedder, openai_client):
    from inference.embedding_tokens import tokenize_texts
    from models_registry.embedding_models import ALL_MINILM_L6_V2

    client = openai_client(embedder)
    raw = client.embeddings.with_raw_response.create(
        model=MODEL, input=[*SIMILAR, UNRELATED], encoding_format="float"
    )
    validate("CreateEmbeddingResponse", json.loads(raw.text))
    response = raw.parse()
    assert response.object == "list" and response.model == MODEL
    assert [item.index for item in response.data] == [0, 1, 2]
    first, second, unrelated = (item.embedding for item in response.data)
    assert len(first) == 384 and abs(norm(first) - 1) < 1e-5
    assert cosine(first, second) > 0.5 > cosine(first, unrelated) + 0.3
    assert cosine(first, second) > cosine(second, unrelated) + 0.3
    # Usage is the model's own tokenizer's count (without [CLS]/[SEP]), not an estimate.
    counted = sum(len(ids) for ids in tokenize_texts(ALL_MINILM_L6_V2, [*SIMILAR, UNRELATED]))
    assert response.usage.prompt_tokens == response.usage.total_tokens == counted
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"


def test_base64_decodes_to_the_same_vector_as_float(live, embedder, openai_client):
    floats = post(live, embedder, {"model": MODEL, "input": SIMILAR[0]}).json()
    encoded = post(
        live, embedder, {"model": MODEL, "input": SIMILAR[0], "encoding_format": "base64"}
    ).json()
    validate("CreateEmbeddingResponse", floats)
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert len(raw) == 384 * 4
    decoded = list(struct.unpack("<384f", raw))  # little-endian float32, as OpenAI's
    assert decoded == floats["data"][0]["embedding"]
    # The official client asks for base64 when it is not told otherwise, and decodes it.
    default = openai_client(embedder).embeddings.create(model=MODEL, input=SIMILAR[0])
    assert default.data[0].embedding == pytest.approx(decoded, abs=1e-7)


def test_dimensions_gives_unit_vectors_of_that_length(live, embedder, openai_client):
    client = openai_client(embedder)
    full = client.embeddings.create(model=MODEL, input=SIMILAR[0]).data[0].embedding
    short = client.embeddings.create(model=MODEL, input=SIMILAR[0], dimensions=64)
    vector = short.data[0].embedding
    assert len(vector) == 64 and abs(norm(vector) - 1) < 1e-5
    # Truncated, then renormalized: the same direction as the full vector's first 64.
    head = full[:64]
    assert [x / norm(head) for x in head] == pytest.approx(vector, abs=1e-5)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MODEL, input="x", dimensions=385)
    assert refused.value.body["param"] == "dimensions"
    assert "384" in refused.value.body["message"]


def test_token_id_inputs_embed_like_their_text(live, embedder, openai_client):
    from inference.embedding_tokens import tokenize_texts
    from models_registry.embedding_models import ALL_MINILM_L6_V2

    ids = tokenize_texts(ALL_MINILM_L6_V2, list(SIMILAR))
    client = openai_client(embedder)
    texts = client.embeddings.create(model=MODEL, input=list(SIMILAR))
    one = client.embeddings.create(model=MODEL, input=ids[0])  # an array of token ids
    many = client.embeddings.create(model=MODEL, input=ids)  # an array of token arrays
    assert one.data[0].embedding == pytest.approx(texts.data[0].embedding, abs=1e-6)
    for got, want in zip(many.data, texts.data, strict=True):
        assert got.embedding == pytest.approx(want.embedding, abs=1e-6)
    assert one.usage.prompt_tokens == len(ids[0])
    bad = post(live, embedder, {"model": MODEL, "input": [[101, 99_999]]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input[0]"


def test_the_async_client_embeds_concurrently(live, embedder):
    async def main():
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=embedder, max_retries=0)
        try:
            return await asyncio.gather(
                *(client.embeddings.create(model=MODEL, input=text) for text in SIMILAR)
            )
        finally:
            await client.close()

    first, second = asyncio.run(main())
    assert cosine(first.data[0].embedding, second.data[0].embedding) > 0.5


def test_an_embedding_model_is_listed_and_refuses_chat(live, embedder, openai_client, ready_model):
    ready_model("nebula-7b")
    client = openai_client(embedder)
    assert MODEL in [model.id for model in client.models.list()]
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert chat.value.body["param"] == "model"
    assert "embedding model" in chat.value.body["message"]
    with pytest.raises(openai.BadRequestError) as embed:
        client.embeddings.create(model="nebula-7b", input="hi")
    assert embed.value.body["code"] == "model_not_supported"
    assert "chat model" in embed.value.body["message"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "hi", "frobnicate": True}, "frobnicate", "unknown_parameter"),
        ({"input": ""}, "input", "invalid_value"),
        ({"input": []}, "input", "invalid_value"),
        ({"input": ["ok", ""]}, "input[1]", "invalid_value"),
        ({"input": ["x"] * 2049}, "input", "too_many_inputs"),
        ({"input": "word " * 300}, "input", "context_length_exceeded"),
        ({"input": ["short", "word " * 300]}, "input[1]", "context_length_exceeded"),
        ({"input": "hi", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
        ({"input": "hi", "dimensions": "8"}, "dimensions", "invalid_type"),
        ({"input": [True]}, "input", "invalid_type"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(live, embedder, body, param, code):
    response = post(live, embedder, {"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    validate("ErrorResponse", response.json())
    assert (error["param"], error["code"]) == (param, code), error
    if code == "context_length_exceeded":
        # Refused with the figures, never truncated in silence.
        assert "300 tokens" in error["message"] and "254" in error["message"]


def test_an_input_at_the_models_length_is_embedded(live, embedder):
    from inference.embedding_tokens import tokenize_texts
    from models_registry.embedding_models import ALL_MINILM_L6_V2

    text = "word " * 254
    assert len(tokenize_texts(ALL_MINILM_L6_V2, [text])[0]) == 254
    response = post(live, embedder, {"model": MODEL, "input": text, "user": "user-1234"})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 254


def test_the_most_inputs_openai_allows_come_back_in_order(live, embedder):
    words = ["cat", "dog", "car", "tree"]
    body = {"model": MODEL, "input": [words[i % 4] for i in range(2048)]}
    response = post(live, embedder, {**body, "encoding_format": "base64"})
    assert response.status_code == 200, response.text[:500]
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(2048))
    # Equal inputs, equal vectors, wherever they sit in the batch.
    assert {item["embedding"] for item in data[0::4]} == {data[0]["embedding"]}
    assert data[1]["embedding"] != data[0]["embedding"]


def test_rate_limits_apply_to_embeddings(live, alice, make_key, ready_model):
    ready_model(MODEL, kind="embedding", params_billions=None)
    _, by_requests = make_key(alice, rpm_limit=2)
    assert post(live, by_requests, {"model": MODEL, "input": "one"}).status_code == 200
    assert post(live, by_requests, {"model": MODEL, "input": "two"}).status_code == 200
    limited = post(live, by_requests, {"model": MODEL, "input": "three"})
    assert limited.status_code == 429 and limited.headers["retry-after"]
    # A token limit counts the inputs' tokens: 20 tokens against a limit of 10.
    _, by_tokens = make_key(alice, name="tpm", rpm_limit=100, tpm_limit=10)
    too_many = post(live, by_tokens, {"model": MODEL, "input": "word " * 20})
    assert too_many.status_code == 429
    assert "tokens per min" in too_many.json()["error"]["message"]
    assert post(live, by_tokens, {"model": MODEL, "input": "word " * 6}).status_code == 200


def test_an_embedding_request_writes_one_usage_record(live, embedder):
    from telemetry.ledger import ledger_flush
    from telemetry.models import UsageRecord

    response = post(live, embedder, {"model": MODEL, "input": list(SIMILAR)})
    assert response.status_code == 200
    refused = post(live, embedder, {"model": MODEL, "input": ""})
    assert refused.status_code == 400
    ledger_flush()
    record = UsageRecord.objects.get(request_id=response.headers["x-request-id"])
    assert record.endpoint == "/v1/embeddings" and record.model == MODEL
    assert record.status == 200 and record.completion_tokens == 0
    assert record.prompt_tokens == response.json()["usage"]["prompt_tokens"] > 0
    failed = UsageRecord.objects.get(request_id=refused.headers["x-request-id"])
    assert failed.status == 400 and failed.endpoint == "/v1/embeddings"


def test_an_embedding_deployment_goes_through_its_lifecycle(live, operator, make_key):
    _, admin_key = make_key(operator, is_admin=True)
    auth = {"Authorization": f"Bearer {admin_key}"}
    body = {"name": MODEL, "kind": "embedding", "gpu_type": "L4"}
    created = httpx.post(live.url + "/models", json=body, headers=auth)
    assert created.status_code == 201, created.text
    deployed = created.json()
    assert deployed["kind"] == "embedding" and deployed["parameters"] == 22_713_216
    assert deployed["context_length"] == 256
    for _ in range(100):
        state = httpx.get(live.url + f"/models/{MODEL}", headers=auth).json()["state"]
        if state == "ready":
            break
        time.sleep(0.1)
    assert state == "ready"
    response = post(live, admin_key, {"model": MODEL, "input": "ready to embed"})
    assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 384
