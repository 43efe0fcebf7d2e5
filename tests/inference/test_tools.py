"""Tool calling without the stack: the simulated model's decisions, its arguments against their
JSON Schemas, the stream's fragments, and the checks a request's tools and conversation get."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.batching import Outbox
from inference.engine import Generation, GenerationRequest, Step, ToolSpec, generate_all
from inference.engine.tools import arguments_for, plan_calls, unsupported_keyword
from inference.responses import chat_completion, tool_call_deltas
from inference.schemas import parse_chat_request
from inference.toolcalls import tools_check
from infra.errors import InvalidRequest

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"],
}
NEWS = {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}
FUNCTIONS = (
    ("get_weather", "The weather forecast in a city", WEATHER),
    ("get_news", "Headlines about a topic", NEWS),
    ("get_stock", "A share price", {"type": "object", "properties": {}}),
)


def spec(**overrides: Any) -> ToolSpec:
    return ToolSpec(**{"functions": FUNCTIONS, **overrides})


def calls(tool_spec: ToolSpec, seed: int = 0, text: str = "What is the weather in Paris?"):
    return plan_calls(tool_spec, rng=random.Random(seed), user_text=text)


# --- decisions ------------------------------------------------------------------------------


def test_tool_choice_none_never_calls():
    assert all(calls(spec(choice="none"), seed) == [] for seed in range(20))


def test_tool_choice_required_always_calls_even_when_nothing_is_relevant():
    assert all(calls(spec(choice="required"), seed, "hello there") for seed in range(20))


def test_a_named_function_is_called_alone():
    for seed in range(20):
        assert [c.name for c in calls(spec(choice="required", name="get_stock"), seed)] == [
            "get_stock"
        ]


def test_auto_calls_the_function_the_user_asks_about():
    for seed in range(20):
        made = calls(spec(), seed)
        assert made and made[0].name == "get_weather"


def test_auto_answers_in_text_after_a_tools_result():
    assert all(calls(spec(answered=True), seed) == [] for seed in range(20))


def test_auto_without_a_relevant_function_is_decided_by_the_seed():
    decisions = [bool(calls(spec(), seed, "hello there")) for seed in range(40)]
    assert decisions == [bool(calls(spec(), seed, "hello there")) for seed in range(40)]
    assert True in decisions and False in decisions


def test_parallel_calls_happen_and_false_allows_one_at_most():
    counts = {len(calls(spec(choice="required"), seed)) for seed in range(40)}
    assert max(counts) > 1
    assert {len(calls(spec(choice="required", parallel=False), seed)) for seed in range(40)} == {1}


def test_legacy_functions_make_one_call():
    assert {len(calls(spec(choice="required", legacy=True), seed)) for seed in range(40)} == {1}


def test_parallel_calls_are_distinct_functions_with_distinct_ids():
    for seed in range(40):
        made = calls(spec(choice="required"), seed)
        assert len({c.name for c in made}) == len(made) == len({c.id for c in made})


# --- arguments ------------------------------------------------------------------------------

SCHEMAS: list[dict[str, Any]] = [
    WEATHER,
    {"type": "object", "properties": {}, "additionalProperties": False},
    {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 9},
            "m": {"type": "integer", "minimum": -50, "maximum": -10, "multipleOf": 5},
            "x": {"type": "number", "minimum": 0.5, "maximum": 0.75},
            "y": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.25},
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
            "maybe": {"type": ["string", "null"], "maxLength": 3},
            "day": {"type": "string", "format": "date"},
            "mail": {"type": "string", "format": "email"},
            "id": {"type": "string", "format": "uuid"},
            "long": {"type": "string", "minLength": 30, "maxLength": 40},
            "fixed": {"const": "v1"},
        },
        "required": ["n", "m", "x", "y", "flag", "nothing", "maybe", "day", "long", "fixed"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"enum": ["a", "b", "c", "d"]},
                "minItems": 2,
                "maxItems": 3,
                "uniqueItems": True,
            },
            "points": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                    "required": ["x", "y"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["tags", "points"],
    },
    {
        "type": "object",
        "$defs": {"unit": {"type": "string", "enum": ["kg", "lb"]}},
        "properties": {
            "unit": {"$ref": "#/$defs/unit"},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 5}]},
            "one": {"oneOf": [{"type": "boolean"}, {"type": "null"}]},
            "both": {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "string"}}, "required": ["b"]},
                ]
            },
        },
        "required": ["unit", "either", "one", "both"],
    },
    {"type": "object", "minProperties": 2, "additionalProperties": {"type": "integer"}},
]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(schema=st.sampled_from(SCHEMAS), seed=st.integers(0, 2**32))
def test_generated_arguments_validate_against_their_schema(schema, seed):
    words = ["Paris", "weather"]
    value = arguments_for(schema, rng=random.Random(seed), words=words)
    jsonschema.validate(value, schema)


def test_the_same_seed_gives_the_same_arguments():
    first = [c.arguments for c in calls(spec(choice="required"), 7)]
    assert first == [c.arguments for c in calls(spec(choice="required"), 7)]
    assert all(json.loads(arguments) is not None for arguments in first)


def test_string_arguments_pick_up_the_users_topic():
    made = calls(spec(choice="required", name="get_weather"), 3)
    assert "Paris" in json.loads(made[0].arguments)["city"]


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x$"}}}, "pattern"),
        ({"type": "object", "properties": {"a": {"items": {"not": {}}}}}, "not"),
        ({"type": "object", "properties": {"a": {"$ref": "http://x/s.json"}}}, "$ref"),
        ({"type": "object", "anyOf": [{"if": {}}]}, "if"),
        (WEATHER, None),
    ],
)
def test_keywords_the_generator_cannot_satisfy_are_found(schema, keyword):
    assert unsupported_keyword(schema) == keyword


# --- the engine's stream --------------------------------------------------------------------


def request(**overrides: Any) -> GenerationRequest:
    options: dict[str, Any] = {
        "model": "nebula-7b",
        "prompt_text": "user: What is the weather in Paris?",
        "user_text": "What is the weather in Paris?",
        "prompt_tokens": 12,
        "context_length": 8192,
        "seed": 11,
        "tools": spec(choice="required"),
        "n": 2,
    }
    options.update(overrides)
    return GenerationRequest(**options)


def test_streamed_fragments_reassemble_into_the_calls_and_cost_their_tokens():
    run = Generation(request())
    outbox = Outbox()
    steps = list(run.steps())
    for step in steps:
        outbox.add(step, 0.0)
    assert run.finish_reasons() == ["tool_calls", "tool_calls"]
    assert run.texts() == ["", ""]
    for index, fragments in outbox.tool_calls:
        rebuilt: dict[int, dict[str, Any]] = {}
        for fragment in fragments:
            if "id" in fragment:
                assert fragment["function"]["arguments"] == ""
                rebuilt[fragment["index"]] = {
                    "id": fragment["id"],
                    "type": "function",
                    "function": dict(fragment["function"]),
                }
            else:
                rebuilt[fragment["index"]]["function"]["arguments"] += fragment["function"][
                    "arguments"
                ]
        assert list(rebuilt.values()) == run.tool_calls()[index]
    # One token per step for argument pieces; the completion counts them all.
    assert run.completion_tokens >= len(steps)


def test_the_outbox_keeps_a_calls_header_apart_and_merges_its_argument_pieces():
    outbox = Outbox()
    header = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    for fragment in (
        header,
        {"index": 0, "function": {"arguments": '{"a"'}},
        {"index": 0, "function": {"arguments": ": 1}"}},
    ):
        outbox.add(Step(deltas=(), tool_deltas=((0, fragment),)), 0.0)
    assert outbox.tool_calls == [(0, [header, {"index": 0, "function": {"arguments": '{"a": 1}'}}])]


def test_a_token_limit_cuts_the_call_short_with_length():
    run = generate_all(request(max_tokens=3, n=1))
    assert run.finish_reasons() == ["length"] and run.completion_tokens <= 3 + 2


def test_without_tools_the_text_is_what_it_was():
    assert (
        generate_all(request(tools=None)).texts()
        == generate_all(request(tools=spec(choice="none"))).texts()
    )


# --- rendering ------------------------------------------------------------------------------


def test_each_calls_first_delta_is_its_own_chunk():
    fragments = [
        {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": "{}"}},
        {"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": ""}},
    ]
    assert tool_call_deltas(fragments) == [
        {"tool_calls": [fragments[0]]},
        {"tool_calls": [fragments[1], fragments[2]]},
    ]
    assert tool_call_deltas(fragments[:2], legacy=True) == [
        {"function_call": {"name": "f", "arguments": ""}},
        {"function_call": {"arguments": "{}"}},
    ]


def test_the_legacy_api_gets_function_call_in_the_message():
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    done: Any = {
        "texts": [""],
        "tool_calls": [[call]],
        "finish": ["function_call"],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    message = chat_completion("req_1", "m", done, legacy_functions=True)["choices"][0]["message"]
    assert message["function_call"] == call["function"] and "tool_calls" not in message
    message = chat_completion("req_1", "m", done)["choices"][0]["message"]
    assert message["tool_calls"] == [call] and message["content"] is None


# --- the web side's checks ------------------------------------------------------------------

STRING = {"type": "string"}
CONTRADICTION = {"type": "string", "minLength": 5, "maxLength": 2}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
ASK = [{"role": "user", "content": "weather in Paris?"}]


def check(**body: Any):
    return tools_check(parse_chat_request(json.dumps({"model": "m", **body}).encode()))


def refusal(**body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        check(**body)
    assert caught.value.status == 400
    return caught.value


def test_a_request_without_tools_has_no_tool_job():
    assert check(messages=ASK) is None


def test_the_tool_job_carries_the_choice():
    job = check(
        messages=ASK,
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    assert job is not None
    assert (job["choice"], job["name"], job["parallel"], job["legacy"]) == (
        "auto",
        "get_weather",
        False,
        False,
    )
    assert job["functions"] == [{"name": "get_weather", "description": "", "parameters": WEATHER}]


def test_a_tool_message_must_answer_an_earlier_call():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answered = [
        *ASK,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    job = check(messages=answered, tools=[TOOL])
    assert job is not None and job["answered"]
    error = refusal(messages=[*ASK, {"role": "tool", "tool_call_id": "call_1", "content": "x"}])
    assert error.param == "messages[1]" and "call_1" in str(error)
    # An answer given before its call is no answer either.
    error = refusal(messages=[answered[0], answered[2], answered[1]])
    assert error.param == "messages[1]"


def test_a_function_message_needs_its_name_and_a_call():
    call = {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}
    assert refusal(messages=[*ASK, call, {"role": "function", "content": "x"}]).param == (
        "messages[2].name"
    )
    lone = {"role": "function", "name": "f", "content": "x"}
    assert refusal(messages=[*ASK, lone]).param == "messages[1]"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "auto"}, "tool_choice"),
        ({"tools": None, "parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"functions": [TOOL["function"]]}, "functions"),
        ({"tools": None, "function_call": "auto"}, "function_call"),
        ({"tools": [TOOL, TOOL]}, "tools[1].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": STRING}}]},
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"properties": {"a": {"pattern": "x"}}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "properties": {
                                    "a": {"type": "string", "minLength": 5, "maxLength": 2}
                                },
                                "required": ["a"],
                            },
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
        (
            {
                "functions": [TOOL["function"]],
                "tools": None,
                "function_call": {"name": "other"},
            },
            "function_call",
        ),
    ],
)
def test_tools_that_do_not_fit_are_a_400_naming_the_parameter(body, param):
    options = {"messages": ASK, "tools": [TOOL], **body}
    assert refusal(**{k: v for k, v in options.items() if v is not None}).param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": []}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "code", "function": {"name": "f"}}]}, "tools[0].type"),
        ({"tools": [TOOL], "tool_choice": "always"}, "tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {}}},
            "tool_choice.function.name",
        ),
        ({"tools": [TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tools": [TOOL], "parallel_tool_calls": 1}, "parallel_tool_calls"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
            "tools[0].function.parameters",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
            "messages[0].tool_calls[0].function",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ],
)
def test_badly_typed_tools_are_a_400_naming_the_field(body, param):
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(json.dumps({"model": "m", "messages": ASK, **body}).encode())
    assert caught.value.param == param
