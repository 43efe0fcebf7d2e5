"""The chat request validator under hypothesis: whatever the bytes, it returns a request that
the rest of the pipeline can carry (size checks, JSON for the job) or raises one OpenAI-style
400 naming the problem. Never any other exception, which would be a 500; and never a request
that kept a field it does not know or a value it had to coerce."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.schemas import ChatCompletionRequest, parse_chat_request
from inference.services import _check_size
from inference.toolcalls import tools_check
from infra.errors import InvalidRequest

CODES = {
    "invalid_json",
    "missing_required_parameter",
    "invalid_value",
    "invalid_type",
    "unknown_parameter",
    "unsupported_parameter",
    "invalid_json_schema",
}
SIZE_CODES = {"too_many_messages", "message_too_long", "unsupported_content"}
TOOL_CODES = {
    "invalid_value",
    "invalid_tool_call_id",
    "invalid_function_parameters",
    "unsupported_schema_keyword",
    "missing_required_parameter",
}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "x"])
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "refusal", "file", "input_audio", "?"])},
    optional={"text": json_values, "refusal": json_values, "image_url": json_values},
)
messages = st.fixed_dictionaries(
    {"role": roles | json_values},
    optional={
        "content": st.text(max_size=30) | st.lists(parts, max_size=3) | json_values,
        "name": json_values,
        "tool_call_id": json_values,
        "tool_calls": json_values,
    },
)
# Function parameters: any JSON, and schema-shaped objects built from real keywords.
schema_keywords = st.sampled_from(
    [
        "type",
        "properties",
        "required",
        "items",
        "enum",
        "$ref",
        "anyOf",
        "allOf",
        "oneOf",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "pattern",
        "const",
        "$defs",
    ]
)
schemas = st.recursive(
    st.fixed_dictionaries({}, optional={"type": st.sampled_from(["object", "string", "integer"])}),
    lambda children: st.dictionaries(schema_keywords, children | json_values, max_size=4),
    max_leaves=10,
)
functions = st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "g"]) | json_values},
    optional={"description": json_values, "parameters": schemas | json_values},
)
tools = st.fixed_dictionaries({"type": st.just("function") | json_values, "function": functions})
named = st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": st.just("f")})}
)
fields = {
    "max_tokens": json_values,
    "max_completion_tokens": json_values,
    "temperature": json_values,
    "top_p": json_values,
    "n": json_values,
    "stop": json_values | st.lists(st.text(max_size=5), max_size=6),
    "seed": json_values,
    "stream": json_values,
    "stream_options": json_values | st.fixed_dictionaries({"include_usage": json_values}),
    "user": json_values,
    "ignore_eos": json_values,
    "min_tokens": json_values,
    "tools": json_values | st.lists(tools, max_size=3),
    "tool_choice": json_values | st.sampled_from(["auto", "none", "required"]) | named,
    "parallel_tool_calls": json_values,
    "functions": json_values | st.lists(functions, max_size=2),
    "function_call": json_values | st.sampled_from(["auto", "none"]),
    "safety_identifier": json_values,
    # OpenAI's parameters Nebula refuses unless they ask for nothing, and one nobody knows.
    "store": json_values,
    "modalities": json_values | st.just(["text"]),
    "logit_bias": json_values,
    "audio": json_values,
    "frobnicate": json_values,
    "logprobs": json_values,
    "top_logprobs": json_values,
    "response_format": json_values
    | st.fixed_dictionaries(
        {
            "type": st.sampled_from(["text", "json_object", "json_schema", "?"]),
            "json_schema": st.fixed_dictionaries(
                {"name": st.sampled_from(["x", "bad name"]) | json_values},
                optional={"schema": json_values, "strict": json_values},
            ),
        }
    ),
}
requests = st.fixed_dictionaries(
    {"model": st.text(max_size=10) | json_values, "messages": st.lists(messages, max_size=4)},
    optional=fields,
)


def _carry(request: ChatCompletionRequest) -> None:
    """What the server does next with a request that validated."""
    refusal: InvalidRequest | None = None
    try:
        _check_size(request)
    except InvalidRequest as error:
        refusal = error
    assert refusal is None or refusal.code in SIZE_CODES
    tool_refusal: InvalidRequest | None = None
    try:
        orjson.dumps(tools_check(request))
    except InvalidRequest as error:
        tool_refusal = error
    assert tool_refusal is None or tool_refusal.code in TOOL_CODES, tool_refusal.body()
    # Every value must survive the trip to the worker as JSON.
    orjson.dumps(request.model_dump())
    # Nothing was coerced: a number is a number, a flag a flag.
    for name in ("max_tokens", "max_completion_tokens", "n", "seed", "min_tokens"):
        value = getattr(request, name)
        assert value is None or (isinstance(value, int) and not isinstance(value, bool))
    for name in ("stream", "ignore_eos"):
        assert getattr(request, name) in (None, True, False)
    assert request.token_limit is None or request.token_limit >= 1
    _ = request.stop_sequences, request.include_usage


def _check(body: bytes) -> None:
    refusal: InvalidRequest | None = None
    try:
        request = parse_chat_request(body)
    except InvalidRequest as error:
        refusal = error
    if refusal is None:
        _carry(request)
        return
    payload = refusal.body()["error"]
    assert refusal.status == 400
    assert payload["code"] in CODES, payload
    assert isinstance(payload["message"], str) and payload["message"]
    assert payload["param"] is None or isinstance(payload["param"], str)


@FUZZ
@given(requests)
def test_any_request_shaped_body_is_accepted_or_a_400(body: dict[str, Any]) -> None:
    _check(json.dumps(body).encode())


@FUZZ
@given(json_values)
def test_any_json_document_is_accepted_or_a_400(document: Any) -> None:
    _check(json.dumps(document).encode())


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_are_accepted_or_a_400(raw: bytes) -> None:
    _check(raw)
