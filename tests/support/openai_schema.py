"""Validating our responses against OpenAI's published OpenAPI schema (the chat subset).

The published file mixes OpenAPI 3.0 (`nullable: true`) with 3.1/JSON Schema (`type: "null"`);
we rewrite `nullable` into JSON Schema and validate with the 3.1 validator.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS31Validator

SPEC = Path(__file__).resolve().parents[1] / "data" / "openapi_chat_subset.json"


def _rewrite_nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_rewrite_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _rewrite_nullable(value) for key, value in node.items()}
    if node.pop("nullable", False):
        kind = node.get("type")
        if isinstance(kind, str):
            node["type"] = [kind, "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            return {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def _components() -> dict[str, Any]:
    return _rewrite_nullable(json.loads(SPEC.read_text())["components"])


@cache
def _validator(name: str) -> OAS31Validator:
    return OAS31Validator({"$ref": f"#/components/schemas/{name}", "components": _components()})


def validate(name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError if `instance` is not a valid `name`."""
    _validator(name).validate(instance)


@cache
def _raw_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = json.loads(SPEC.read_text())["components"]["schemas"]
    return schemas


def spec_request_fields() -> set[str]:
    """Every top-level field of OpenAI's CreateChatCompletionRequest, inherited ones included."""
    fields: set[str] = set()

    def collect(node: dict[str, Any]) -> None:
        if "$ref" in node:
            collect(_raw_schemas()[node["$ref"].rsplit("/", 1)[1]])
        for part in node.get("allOf", []):
            collect(part)
        fields.update(node.get("properties", {}))

    collect(_raw_schemas()["CreateChatCompletionRequest"])
    return fields
