"""The /v1/embeddings request as parsed: OpenAI's input shapes, strict types, unknown fields."""

import json

import pytest

from inference.embedding_schemas import EmbeddingRequest, parse_embedding_request
from inference.embeddings import _token_inputs
from infra.errors import InvalidRequest
from models_registry.embedding_models import ALL_MINILM_L6_V2
from tests.support.openai_schema import SPEC, validate


def parse(**body):
    return parse_embedding_request(json.dumps({"model": "m", **body}).encode())


@pytest.mark.parametrize(
    ("given", "inputs"),
    [
        ("hello", ["hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),  # an array of token ids is one input
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_every_openai_input_shape_is_a_list_of_inputs(given, inputs):
    assert parse(input=given).inputs() == inputs


def test_optional_fields_are_read():
    request = parse(input="x", encoding_format="base64", dimensions=8, user="user-1")
    assert request.base64 and request.dimensions == 8 and request.user == "user-1"
    assert not parse(input="x").base64


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "x", "frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({"input": "x", "dimensions": 8.0}, "dimensions", "invalid_type"),
        ({"input": "x", "dimensions": True}, "dimensions", "invalid_type"),
        ({"input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
        ({"input": ["a", 1]}, "input", "invalid_type"),
        ({"input": [1.5]}, "input", "invalid_type"),
        ({"input": [[]]}, "input[0]", "invalid_value"),
        ({"input": [[1], []]}, "input[1]", "invalid_value"),
        ({"input": "x", "model": 5}, "model", "invalid_type"),
        ({"input": None}, "input", "invalid_type"),
    ],
)
def test_a_bad_field_is_a_400_naming_it(body, param, code):
    with pytest.raises(InvalidRequest) as refused:
        parse(**body)
    assert (refused.value.param, refused.value.code) == (param, code)


def test_a_missing_input_and_a_non_object_body_are_refused():
    with pytest.raises(InvalidRequest) as missing:
        parse_embedding_request(b'{"model": "m"}')
    assert missing.value.param == "input" and missing.value.code == "missing_required_parameter"
    with pytest.raises(InvalidRequest) as listed:
        parse_embedding_request(b"[]")
    assert listed.value.code == "invalid_json"


def test_the_request_takes_exactly_openais_fields_and_its_examples():
    from inference.embedding_schemas import EmbeddingRequest

    published = json.loads(SPEC.read_text())["components"]["schemas"]["CreateEmbeddingRequest"]
    assert set(EmbeddingRequest.model_fields) == set(published["properties"])
    assert set(published["required"]) == {
        name for name, field in EmbeddingRequest.model_fields.items() if field.is_required()
    }
    for given in ("text", ["a", "b"], [1, 2], [[1, 2], [3]]):
        body = {"model": "m", "input": given, "encoding_format": "base64", "dimensions": 8}
        validate("CreateEmbeddingRequest", body)  # OpenAI's schema accepts it, and so do we
        parse_embedding_request(json.dumps(body).encode())


def test_the_openapi_description_documents_the_endpoint(client, db):
    schema = json.loads(client.get("/api/schema/", HTTP_ACCEPT="application/json").content)
    operation = schema["paths"]["/v1/embeddings"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EmbeddingRequest"}
    described = schema["components"]["schemas"]["EmbeddingRequest"]
    assert set(described["properties"]) == set(EmbeddingRequest.model_fields)
    assert described["additionalProperties"] is False
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/EmbeddingList"}


@pytest.mark.parametrize(
    ("given", "param"),
    [
        ("word " * 300, "input"),
        (["word " * 300], "input[0]"),
        ([7] * 300, "input"),
        ([[7], [7] * 300], "input[1]"),
    ],
)
def test_an_input_longer_than_the_model_reads_is_refused_naming_it(given, param):
    with pytest.raises(InvalidRequest) as refused:
        _token_inputs(ALL_MINILM_L6_V2, parse(input=given))
    assert (refused.value.param, refused.value.code) == (param, "context_length_exceeded")
    assert "300 tokens" in refused.value.message


def test_the_inputs_may_hold_300000_tokens_in_all():
    inputs = _token_inputs(ALL_MINILM_L6_V2, parse(input=[[7] * 250] * 1200))
    assert sum(map(len, inputs)) == 300_000
    with pytest.raises(InvalidRequest) as refused:
        _token_inputs(ALL_MINILM_L6_V2, parse(input=[[7] * 250] * 1201))
    assert refused.value.code == "max_tokens_per_request"
