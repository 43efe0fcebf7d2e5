"""/api/schema/ and /api/docs/: the OpenAPI description, /v1 included, and its Swagger UI."""

import json
import re

import pytest
from drf_spectacular.validation import validate_schema
from openapi_schema_validator import OAS31Validator

from inference.engine import GenerationRequest, generate_all
from inference.responses import chat_completion
from inference.schemas import ChatCompletionRequest, parse_chat_request
from inference.text_schemas import CompletionRequest
from tests.support.openai_schema import validate

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content
    return json.loads(response.content)


def test_the_schema_is_valid_openapi_3_1(schema):
    assert schema["openapi"].startswith("3.1")
    validate_schema(schema)


def test_the_schema_is_served_as_yaml_by_default(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert response.content.startswith(b"openapi: 3.1")


def test_it_describes_every_endpoint_including_the_openai_ones(schema):
    assert set(schema["paths"]) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model_id}",
        "/apikeys",
        "/apikeys/{key_id}",
        "/apikeys/{key_id}/rotate",
        "/teams",
        "/teams/{team_id}",
        "/teams/{team_id}/members",
        "/teams/{team_id}/members/{username}",
        "/audit",
        "/requests",
        "/requests.csv",
        "/models",
        "/models/{name}",
        "/metrics",
        "/metrics/prometheus",
        "/health",
        "/prices",
        "/models/{name}/prices",
        "/budgets",
        "/budgets/{budget_id}",
    }


def test_the_chat_request_schema_is_the_validators_own(schema):
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    described = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert described["required"] == ["model", "messages"]
    assert set(described["properties"]) == set(ChatCompletionRequest.model_fields)
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


def test_the_text_completion_request_schema_is_the_validators_own(schema):
    text = schema["paths"]["/v1/completions"]["post"]
    body = text["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CompletionRequest"}
    described = schema["components"]["schemas"]["CompletionRequest"]
    assert described["required"] == ["model", "prompt"]
    assert described["additionalProperties"] is False
    assert set(described["properties"]) == set(CompletionRequest.model_fields)
    responses = text["responses"]["200"]["content"]
    whole = {"$ref": "#/components/schemas/TextCompletion"}
    assert responses["application/json"]["schema"] == whole


def test_every_operation_documents_the_error_format(schema):
    error = {"$ref": "#/components/schemas/OpenAIError"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            default = operation["responses"]["default"]
            assert default["content"]["application/json"]["schema"] == error, (path, method)


def test_api_keys_are_a_bearer_security_scheme(schema):
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/models"]["get"]["security"] == [{"ApiKeyAuth": []}]
    assert {"ApiKeyAuth": []} in schema["paths"]["/apikeys"]["get"]["security"]


def test_the_docs_page_serves_swagger_ui_pointing_at_the_schema(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "swagger-ui" in page and "/api/schema/" in page


def test_the_docs_page_loads_nothing_from_a_cdn(client):
    page = client.get("/api/docs/").content.decode()
    scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page)
    assert scripts, page
    assert all(url.startswith("/static/") for url in scripts), scripts
    for url in scripts:
        assert client.get(url).status_code == 200


ACCEPTED_BODIES = [
    {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "logprobs": True,
        "top_logprobs": 3,
    },
    {
        "model": "m",
        "messages": [{"role": "user", "content": "hi, in JSON"}],
        "response_format": {"type": "json_object"},
    },
    {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "x",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "required": ["a"],
                    "additionalProperties": False,
                },
            },
        },
        "stream": True,
        "stream_options": {"include_usage": True},
        "safety_identifier": "u1",
        "store": False,
        "modalities": ["text"],
    },
]


@pytest.mark.parametrize("body", ACCEPTED_BODIES)
def test_what_nebula_accepts_is_an_openai_request(body):
    """Nothing Nebula implements is its own invention: every body it takes is OpenAI's."""
    parse_chat_request(json.dumps(body).encode())
    validate("CreateChatCompletionRequest", body)


def test_the_chat_request_schema_forbids_unknown_fields(schema):
    described = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert described["additionalProperties"] is False
    assert "response_format" in described["properties"] and "logprobs" in described["properties"]


def _logprob_body():
    generation = generate_all(
        GenerationRequest(
            model="m",
            prompt_text="user: hi",
            user_text="How do GPUs serve models?",
            prompt_tokens=5,
            context_length=4096,
            seed=2,
            max_tokens=30,
            logprobs=True,
            top_logprobs=4,
        )
    )
    done = {
        "r": "req_1",
        "t": "done",
        "seq": 1,
        "usage": {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35},
        "finish": generation.finish_reasons(),
        "texts": generation.texts(),
        "logprobs": generation.logprobs(),
        "ttft_ms": 1.0,
        "queue_ms": 1.0,
    }
    return chat_completion("req_1", "m", done)


def test_a_completion_with_logprobs_is_what_both_schemas_describe(schema):
    body = _logprob_body()
    assert body["choices"][0]["logprobs"]["content"]
    validate("CreateChatCompletionResponse", body)  # OpenAI's
    ours = OAS31Validator(
        {"$ref": "#/components/schemas/ChatCompletion", "components": schema["components"]}
    )
    ours.validate(body)


def test_the_request_log_is_described_with_its_filters_and_csv(schema):
    listing = schema["paths"]["/requests"]["get"]
    names = {parameter["name"] for parameter in listing["parameters"]}
    assert {"key", "model", "status", "since", "until", "cursor", "limit"} <= names
    export = schema["paths"]["/requests.csv"]["get"]
    assert set(export["responses"]["200"]["content"]) == {"text/csv"}
