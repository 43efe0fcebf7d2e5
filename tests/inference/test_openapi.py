"""/api/schema/ and /api/docs/: the OpenAPI description, /v1 included, and its Swagger UI."""

import json
import re

import pytest
from drf_spectacular.validation import validate_schema

from inference.schemas import ChatCompletionRequest

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
        "/models",
        "/models/{name}",
        "/metrics",
        "/metrics/prometheus",
        "/health",
    }


def test_the_chat_request_schema_is_the_validators_own(schema):
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    described = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert described["required"] == ["model", "messages"]
    assert set(described["properties"]) == set(ChatCompletionRequest.model_fields)
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


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
