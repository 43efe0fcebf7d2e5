"""The OpenAI-compatible endpoints in Nebula's OpenAPI description (/api/schema/).

`/v1/*` are plain async views on the lean handler, not DRF views, so drf-spectacular cannot see
them; this postprocessing hook adds them. The request body is described by the same pydantic
model that validates it (`inference.schemas.ChatCompletionRequest`), so the description cannot
drift from what the server accepts. Responses follow OpenAI's published shapes.

Every operation, DRF's included, also documents Nebula's one error format, so a client (or a
fuzzer) can check any error body against it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from inference.embedding_schemas import MAX_INPUTS, EmbeddingRequest
from inference.schemas import ChatCompletionRequest
from inference.text_schemas import CompletionRequest
from keys.auth import API_KEY_SCHEME

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_USAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": {"type": "object"},
        "completion_tokens_details": {"type": "object"},
    },
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
}

_FUNCTION_CALL: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
    "required": ["name", "arguments"],
}
_TOOL_CALL: dict[str, Any] = {
    "type": "object",
    "description": "A call the model made; `arguments` is JSON text valid for the function.",
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": _FUNCTION_CALL,
    },
    "required": ["id", "type", "function"],
}

_FINISH_REASON: dict[str, Any] = {
    "enum": ["stop", "length", "tool_calls", "content_filter", "function_call", None]
}

_TOKEN: dict[str, Any] = {
    "token": {"type": "string"},
    "logprob": {"type": "number", "maximum": 0},
    "bytes": {"type": ["array", "null"], "items": {"type": "integer"}},
}

RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "OpenAIError": {
        "type": "object",
        "description": "Every error Nebula returns, on every endpoint, has this shape (OpenAI's).",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
                "required": ["message", "type", "param", "code"],
                "additionalProperties": False,
            }
        },
        "required": ["error"],
        "additionalProperties": False,
    },
    "ChatCompletionTokenLogprob": {
        "type": "object",
        "description": (
            "A token of the reply with the simulated sampler's log probability (`bytes`: its "
            "UTF-8 bytes) and up to `top_logprobs` alternatives, most likely first."
        ),
        "properties": {
            **_TOKEN,
            "top_logprobs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": _TOKEN,
                    "required": ["token", "logprob", "bytes"],
                },
            },
        },
        "required": ["token", "logprob", "bytes", "top_logprobs"],
    },
    "ChoiceLogprobs": {
        "type": "object",
        "description": "With `logprobs: true`: the logprobs of this choice's (or chunk's) tokens.",
        "properties": {
            "content": _nullable({"type": "array", "items": _ref("ChatCompletionTokenLogprob")}),
            "refusal": {"type": "null"},
        },
        "required": ["content", "refusal"],
    },
    "ChatCompletion": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": {"type": "string"},
            "service_tier": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": ["string", "null"]},
                                "refusal": {"type": ["string", "null"]},
                                "annotations": {"type": "array"},
                                "tool_calls": {"type": "array", "items": _TOOL_CALL},
                                "function_call": _FUNCTION_CALL,
                            },
                            "required": ["role", "content"],
                        },
                        "logprobs": _nullable(_ref("ChoiceLogprobs")),
                        "finish_reason": _FINISH_REASON,
                    },
                    "required": ["index", "message", "finish_reason"],
                },
            },
            "usage": _USAGE,
        },
        "required": ["id", "object", "created", "model", "choices", "usage"],
    },
    "ChatCompletionChunk": {
        "type": "object",
        "description": (
            "One `data:` line of the server-sent event stream (`stream: true`). The stream "
            "ends with `data: [DONE]`; an error after the stream started arrives as one "
            "`data:` line holding an OpenAIError, then `data: [DONE]`."
        ),
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion.chunk"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "delta": {"type": "object"},
                        "logprobs": _nullable(_ref("ChoiceLogprobs")),
                        "finish_reason": _FINISH_REASON,
                    },
                    "required": ["index", "delta", "finish_reason"],
                },
            },
            "usage": _nullable(_USAGE),
        },
        "required": ["id", "object", "created", "model", "choices"],
    },
    "TextCompletion": {
        "type": "object",
        "description": (
            "A legacy text completion (`POST /v1/completions`). Its stream's `data:` lines have "
            "the same shape, with `text` deltas; with `stream_options.include_usage` the last "
            "one has no choices and the usage."
        ),
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "index": {"type": "integer"},
                        "logprobs": _nullable(
                            {
                                "type": "object",
                                "description": "With `logprobs`: per token, its text, its "
                                "logprob, its `logprobs` most likely alternatives, and where "
                                "it starts in the choice's text.",
                                "properties": {
                                    "tokens": {"type": "array", "items": {"type": "string"}},
                                    "token_logprobs": {
                                        "type": "array",
                                        "items": {"type": "number"},
                                    },
                                    "top_logprobs": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "additionalProperties": {"type": "number"},
                                        },
                                    },
                                    "text_offset": {
                                        "type": "array",
                                        "items": {"type": "integer"},
                                    },
                                },
                                "required": [
                                    "tokens",
                                    "token_logprobs",
                                    "top_logprobs",
                                    "text_offset",
                                ],
                            }
                        ),
                        "finish_reason": {"enum": ["stop", "length", None]},
                    },
                    "required": ["text", "index", "logprobs", "finish_reason"],
                },
            },
            "usage": _USAGE,
        },
        "required": ["id", "object", "created", "model", "choices"],
    },
    "Embedding": {
        "type": "object",
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer"},
            "embedding": {
                "anyOf": [
                    {"type": "array", "items": {"type": "number"}},
                    {
                        "type": "string",
                        "contentEncoding": "base64",
                        "description": "encoding_format base64: little-endian float32s.",
                    },
                ]
            },
        },
        "required": ["object", "index", "embedding"],
    },
    "EmbeddingList": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Embedding")},
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "properties": {
                    "prompt_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                },
                "required": ["prompt_tokens", "total_tokens"],
            },
        },
        "required": ["object", "data", "model", "usage"],
    },
    "Model": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
        "required": ["id", "object", "created", "owned_by"],
    },
    "ModelList": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Model")},
        },
        "required": ["object", "data"],
    },
}

# One server-sent event of a stream: a chunk, an error (after the stream started), or [DONE].
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [_ref("ChatCompletionChunk"), _ref("OpenAIError")]},
                },
            ]
        }
    },
    "required": ["data"],
}

_TEXT_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [_ref("TextCompletion"), _ref("OpenAIError")]},
                },
            ]
        }
    },
    "required": ["data"],
}

_RATE_LIMIT_HEADERS = {
    name: {"schema": {"type": "string"}, "description": description}
    for name, description in {
        "x-request-id": "The request's id; its usage record carries the same id.",
        "X-RateLimit-Limit": "Requests per minute allowed for this key.",
        "X-RateLimit-Remaining": "Requests this key could make right now.",
        "X-RateLimit-Reset": "Unix time (seconds) when the allowance is full again.",
    }.items()
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("OpenAIError")}},
    }


_ERRORS: dict[str, dict[str, Any]] = {
    "401": _error("Missing, malformed, unknown, revoked or expired API key."),
    "429": _error("Rate limit reached; see Retry-After."),
    "503": _error("Redis, the workers or the GPU fleet cannot serve the request right now."),
    "default": _error("Any other error, in the same format."),
}

_SECURITY: list[dict[str, list[str]]] = [{"ApiKeyAuth": []}]


def _paths() -> dict[str, Any]:
    models_ops = {
        "get": {
            "operationId": "v1_models_list",
            "summary": "Ready models this key may use (OpenAI's `GET /v1/models`).",
            "tags": ["openai"],
            "security": _SECURITY,
            "responses": {
                "200": {
                    "description": "",
                    "headers": _RATE_LIMIT_HEADERS,
                    "content": {"application/json": {"schema": _ref("ModelList")}},
                },
                **_ERRORS,
            },
        }
    }
    model_ops = {
        "get": {
            "operationId": "v1_models_retrieve",
            "summary": "One model (OpenAI's `GET /v1/models/{model}`).",
            "tags": ["openai"],
            "security": _SECURITY,
            "parameters": [
                {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "",
                    "headers": _RATE_LIMIT_HEADERS,
                    "content": {"application/json": {"schema": _ref("Model")}},
                },
                "404": _error("No such ready model, or this key may not use it."),
                **_ERRORS,
            },
        }
    }
    chat_ops = {
        "post": {
            "operationId": "v1_chat_completions_create",
            "summary": "Create a chat completion (OpenAI's `POST /v1/chat/completions`).",
            "description": (
                "Streams server-sent events when `stream` is true. Size limits: the body at "
                f"most {settings.NEBULA_MAX_BODY_BYTES} bytes (413), at most "
                f"{settings.NEBULA_MAX_MESSAGES} messages of at most "
                f"{settings.NEBULA_MAX_MESSAGE_CHARS} characters each, and the prompt plus "
                "`max_tokens` within the model's context (400)."
            ),
            "tags": ["openai"],
            "security": _SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}},
            },
            "responses": {
                "200": {
                    "description": "The completion, or its event stream.",
                    "headers": _RATE_LIMIT_HEADERS,
                    "content": {
                        "application/json": {"schema": _ref("ChatCompletion")},
                        "text/event-stream": {"schema": _SSE_EVENT},
                    },
                },
                "400": _error("Invalid body: the `param` names the offending field."),
                "403": _error("This key may not use the model."),
                "404": _error("No such ready model."),
                "413": _error("The body is too large."),
                "415": _error("The body is not JSON."),
                **_ERRORS,
            },
        }
    }
    text_ops = {
        "post": {
            "operationId": "v1_completions_create",
            "summary": "Create a text completion (OpenAI's legacy `POST /v1/completions`).",
            "description": (
                "`prompt` as a string, strings, token ids or arrays of them; `n` choices per "
                "prompt, in prompt order. Streams server-sent events when `stream` is true. "
                "Unknown fields and wrongly typed values are a 400; so are `suffix`, "
                "`logprobs`, `best_of` other than `n`, non-zero penalties and a `logit_bias`, "
                "which Nebula's models do not support."
            ),
            "tags": ["openai"],
            "security": _SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("CompletionRequest")}},
            },
            "responses": {
                "200": {
                    "description": "The completion, or its event stream.",
                    "headers": _RATE_LIMIT_HEADERS,
                    "content": {
                        "application/json": {"schema": _ref("TextCompletion")},
                        "text/event-stream": {"schema": _TEXT_SSE_EVENT},
                    },
                },
                "400": _error("Invalid or unsupported body: the `param` names the field."),
                "403": _error("This key may not use the model."),
                "404": _error("No such ready model."),
                "413": _error("The body is too large."),
                "415": _error("The body is not JSON."),
                **_ERRORS,
            },
        }
    }
    embedding_ops = {
        "post": {
            "operationId": "v1_embeddings_create",
            "summary": "Create embeddings (OpenAI's `POST /v1/embeddings`), on a real model.",
            "description": (
                "The model must be a deployment of kind `embedding`. `input` is a string, an "
                "array of strings, an array of token ids or an array of token-id arrays (ids of "
                f"the model's own tokenizer); at most {MAX_INPUTS} inputs, each within the "
                "model's sequence length (refused, never truncated), 300,000 tokens in all. "
                "`dimensions` truncates and renormalizes, up to the model's native size."
            ),
            "tags": ["openai"],
            "security": _SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("EmbeddingRequest")}},
            },
            "responses": {
                "200": {
                    "description": "One vector per input, in order.",
                    "headers": _RATE_LIMIT_HEADERS,
                    "content": {"application/json": {"schema": _ref("EmbeddingList")}},
                },
                "400": _error(
                    "Invalid body, an input too long, too many inputs, or a chat model: the "
                    "`param` names the offending field."
                ),
                "403": _error("This key may not use the model."),
                "404": _error("No such ready model."),
                "413": _error("The body is too large."),
                "415": _error("The body is not JSON."),
                **_ERRORS,
            },
        }
    }
    return {
        "/v1/chat/completions": chat_ops,
        "/v1/completions": text_ops,
        "/v1/embeddings": embedding_ops,
        "/v1/models": models_ops,
        "/v1/models/{model_id}": model_ops,
    }


def request_schemas() -> dict[str, Any]:
    """The requests as validated, and the models they refer to, as schema components."""
    components: dict[str, Any] = {}
    for model in (ChatCompletionRequest, CompletionRequest, EmbeddingRequest):
        schema = model.model_json_schema(ref_template=_REF)
        for name, definition in schema.pop("$defs", {}).items():
            if components.setdefault(name, definition) != definition:
                raise ValueError(f"OpenAPI component {name} is defined twice")
        components[model.__name__] = schema
    return components


def add_openai_paths(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS['POSTPROCESSING_HOOKS'])."""
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in {**request_schemas(), **RESPONSE_SCHEMAS}.items():
        if name in schemas and schemas[name] != schema:
            raise ValueError(f"OpenAPI component {name} is defined twice")
        schemas[name] = schema
    components.setdefault("securitySchemes", {}).setdefault("ApiKeyAuth", API_KEY_SCHEME)
    # The management API's errors have the same shape as the OpenAI API's.
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("default", _ERRORS["default"])
    result["paths"] = {**_paths(), **result.get("paths", {})}
    return result
