"""Structured output and logprobs on the simulated engine (no Django, no Redis): the documents
it generates validate against their schema (checked with `jsonschema`), strict schemas outside
OpenAI's subset are refused naming the keyword, and every token's logprob is the sampler's."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, time
from typing import Literal

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openai.lib._pydantic import to_strict_json_schema

from inference.batching import Outbox
from inference.engine import Generation, GenerationRequest, generate_all
from inference.engine.structured import SchemaRefused, check_schema
from inference.engine.tokenizer import count_tokens


def obj(**properties):
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


class Step(pydantic.BaseModel):
    explanation: str
    output: int


class MathReasoning(pydantic.BaseModel):
    steps: list[Step]
    final_answer: str
    kind: Literal["proof", "sum"]
    note: str | None


TREE = {
    **obj(root={"$ref": "#/$defs/node"}),
    "$defs": {
        "node": obj(
            label={"type": "string"},
            children={"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
        )
    },
}
SCHEMAS = {
    "flat": obj(
        name={"type": "string"},
        age={"type": "integer", "minimum": 18, "maximum": 99},
        score={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        even={"type": "integer", "multipleOf": 2, "minimum": 3, "maximum": 9},
        active={"type": "boolean"},
        colour={"type": "string", "enum": ["red", "green", "blue"]},
        version={"const": "v1"},
    ),
    "nested": obj(
        tags={"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
        owner=obj(
            email={"type": "string", "format": "email"}, id={"type": "string", "format": "uuid"}
        ),
        when={"type": "string", "format": "date-time"},
        day={"type": "string", "format": "date"},
        ip={"type": "string", "format": "ipv4"},
        code={"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        maybe={"type": ["string", "null"]},
        either={"anyOf": [{"type": "integer"}, obj(x={"type": "number"})]},
    ),
    "recursive": TREE,
    "pydantic": to_strict_json_schema(MathReasoning),
}


def request(**overrides):
    options = {
        "model": "nebula-7b",
        "prompt_text": "user: Describe a user",
        "user_text": "Describe a user of GPU clouds",
        "prompt_tokens": 8,
        "context_length": 8192,
        "seed": 3,
        "temperature": 0.9,
    }
    options.update(overrides)
    return GenerationRequest(**options)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_strict_schemas_of_the_subset_are_accepted(name):
    check_schema(SCHEMAS[name], strict=True)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("seed", range(25))
def test_a_json_schema_reply_validates_against_its_schema(name, seed):
    schema = SCHEMAS[name]
    generation = generate_all(
        request(seed=seed, response_format="json_schema", json_schema=schema, n=2)
    )
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for text, reason in zip(generation.texts(), generation.finish_reasons(), strict=True):
        assert reason == "stop"
        validator.validate(json.loads(text))
    assert generation.completion_tokens == sum(count_tokens(t) for t in generation.texts())


def test_the_same_seed_gives_the_same_document_and_another_seed_another():
    def text(seed):
        options = {"response_format": "json_schema", "json_schema": SCHEMAS["flat"]}
        return generate_all(request(seed=seed, **options)).texts()[0]

    assert text(1) == text(1)
    assert len({text(seed) for seed in range(6)}) == 6


def test_json_object_mode_returns_one_json_object():
    for seed in range(10):
        generation = generate_all(request(seed=seed, response_format="json_object"))
        assert isinstance(json.loads(generation.texts()[0]), dict)


def test_a_document_cut_by_max_tokens_finishes_with_length():
    generation = generate_all(
        request(response_format="json_schema", json_schema=SCHEMAS["nested"], max_tokens=5)
    )
    assert generation.finish_reasons() == ["length"] and generation.completion_tokens == 5


def test_ignore_eos_and_min_tokens_pad_the_document_with_whitespace():
    options = {"response_format": "json_object"}
    plain = generate_all(request(**options))
    padded = generate_all(request(min_tokens=plain.completion_tokens + 10, **options))
    assert padded.completion_tokens == plain.completion_tokens + 10
    assert json.loads(padded.texts()[0]) == json.loads(plain.texts()[0])
    endless = generate_all(request(ignore_eos=True, max_tokens=300, **options))
    assert endless.finish_reasons() == ["length"] and endless.completion_tokens == 300
    assert json.loads(endless.texts()[0]) == json.loads(plain.texts()[0])


def test_the_document_streams_in_pieces():
    generation = Generation(request(response_format="json_schema", json_schema=SCHEMAS["flat"]))
    deltas = [text for step in generation.steps() for _, text in step.deltas]
    assert len(deltas) == generation.completion_tokens > 10
    json.loads("".join(deltas))


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        (obj(name={"type": "string", "minLength": 2}), "minLength"),
        (obj(name={"type": "string", "maxLength": 2}), "maxLength"),
        ({**obj(a={"type": "string"}), "patternProperties": {"^x": {}}}, "patternProperties"),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            "additionalProperties",
        ),
        ({**obj(a={"type": "string"}, b={"type": "string"}), "required": ["a"]}, "required"),
        (obj(a=obj(b={"type": "string"}) | {"additionalProperties": True}), "additionalProperties"),
        (obj(a={"allOf": [{"type": "string"}]}), "allOf"),
        (obj(a={"type": "array", "items": {"type": "string"}, "uniqueItems": True}), "uniqueItems"),
        (obj(a={"type": "string", "format": "credit-card"}), "format"),
        (obj(a={"$ref": "https://example.com/schema.json"}), "$ref"),
        ({"anyOf": [obj(a={"type": "string"})]}, "type"),
        ({"type": "array", "items": {"type": "string"}}, "type"),
        (obj(a={"type": "wizard"}), "type"),
    ],
)
def test_strict_schemas_outside_openais_subset_are_refused_naming_the_keyword(schema, keyword):
    with pytest.raises(SchemaRefused) as refused:
        check_schema(schema, strict=True)
    assert refused.value.keyword == keyword
    assert keyword in str(refused.value) or keyword == "type"


def test_without_strict_any_valid_json_schema_is_accepted():
    check_schema(obj(name={"type": "string", "minLength": 2}) | {"required": []}, strict=False)
    with pytest.raises(SchemaRefused):
        check_schema({"type": 12}, strict=False)


def test_too_deep_a_strict_schema_is_refused():
    schema = {"type": "string"}
    for _ in range(11):
        schema = obj(inner=schema)
    with pytest.raises(SchemaRefused) as refused:
        check_schema(schema, strict=True)
    assert "10 levels" in str(refused.value)


# --- logprobs ---------------------------------------------------------------------------------


def assert_well_formed(entries, top):
    for entry in entries:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode("utf-8"))
        assert entry["logprob"] <= 0
        alternatives = entry["top_logprobs"]
        assert len(alternatives) <= top
        figures = [a["logprob"] for a in alternatives]
        assert figures == sorted(figures, reverse=True)
        assert sum(math.exp(f) for f in figures) <= 1 + 1e-9
        for alternative in alternatives:
            assert alternative["bytes"] == list(alternative["token"].encode("utf-8"))
            if alternative["token"] == entry["token"]:
                assert alternative["logprob"] == entry["logprob"]
        if len(alternatives) == top and top:
            # The sampled token is among the top ones, or less likely than all of them.
            assert entry["token"] in {a["token"] for a in alternatives} or (
                entry["logprob"] <= figures[-1]
            )


@pytest.mark.parametrize("top", [0, 1, 5, 20])
def test_every_token_has_the_samplers_logprob_and_its_alternatives(top):
    generation = generate_all(request(logprobs=True, top_logprobs=top, n=2, max_tokens=120))
    for text, entries in zip(generation.texts(), generation.logprobs(), strict=True):
        assert "".join(entry["token"] for entry in entries) == text
        assert_well_formed(entries, top)
    assert sum(len(e) for e in generation.logprobs()) == generation.completion_tokens
    # The sampler had choices: not every token was certain.
    assert any(entry["logprob"] < 0 for entry in generation.logprobs()[0])


def test_logprobs_do_not_change_the_text():
    assert generate_all(request(logprobs=True)).texts() == generate_all(request()).texts()
    assert generate_all(request()).logprobs() == [None]


def test_a_lower_temperature_makes_the_sampled_tokens_more_likely():
    def mean(temperature):
        entries = generate_all(
            request(logprobs=True, temperature=temperature, max_tokens=200, ignore_eos=True)
        ).logprobs()[0]
        return sum(entry["logprob"] for entry in entries) / len(entries)

    assert mean(0.3) > mean(1.5)


def test_json_documents_have_logprobs_too():
    generation = generate_all(
        request(
            response_format="json_schema",
            json_schema=SCHEMAS["flat"],
            logprobs=True,
            top_logprobs=3,
        )
    )
    entries = generation.logprobs()[0]
    assert "".join(entry["token"] for entry in entries) == generation.texts()[0]
    assert_well_formed(entries, 3)
    colour = next(
        e for e in entries if e["token"] in {'"red', '"green', '"blue', "red", "green", "blue"}
    )
    assert math.isclose(colour["logprob"], math.log(1 / 3))


def test_a_stop_sequence_drops_the_logprobs_of_what_it_cut():
    full = generate_all(request(logprobs=True)).texts()[0]
    stop = full.split()[5]
    generation = generate_all(request(logprobs=True, stop=(stop,)))
    text = generation.texts()[0]
    assert stop not in text
    tokens = "".join(entry["token"] for entry in generation.logprobs()[0])
    assert tokens.startswith(text) and len(tokens) < len(text) + len(stop) + 8


def test_the_outbox_merges_each_choices_logprobs_in_order():
    generation = Generation(request(logprobs=True, top_logprobs=2, n=2, max_tokens=30))
    outbox = Outbox()
    for step in generation.steps():
        outbox.add(step, 0.0)
    merged = dict(outbox.logprobs)
    for index in (0, 1):
        assert merged[index] == generation.logprobs()[index]
        assert "".join(e["token"] for e in merged[index]) == dict(outbox.deltas)[index]
    outbox.clear()
    assert outbox.logprobs == []


# --- any schema of the subset ------------------------------------------------------------------

_names = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
_leaves = st.one_of(
    st.just({"type": "string"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.sampled_from(
        sorted(
            ["date-time", "date", "time", "email", "uuid", "ipv4", "ipv6", "hostname", "duration"]
        )
    ).map(lambda f: {"type": "string", "format": f}),
    st.sampled_from([r"^[a-z]{2,5}$", r"^\d{3}-\d{2}$", r"^(yes|no)$"]).map(
        lambda p: {"type": "string", "pattern": p}
    ),
    st.lists(st.text(max_size=5) | st.integers(-5, 5), min_size=1, max_size=4, unique=True).map(
        lambda values: {"enum": values}
    ),
    st.tuples(st.integers(-50, 50), st.integers(0, 50)).map(
        lambda b: {"type": "integer", "minimum": b[0], "maximum": b[0] + b[1]}
    ),
    st.tuples(st.integers(-50, 50), st.integers(1, 50)).map(
        lambda b: {"type": "number", "exclusiveMinimum": b[0], "exclusiveMaximum": b[0] + b[1]}
    ),
    st.integers(1, 7).map(
        lambda m: {"type": "integer", "multipleOf": m, "minimum": 0, "maximum": 60}
    ),
)


def _compound(children):
    return st.one_of(
        st.dictionaries(_names, children, max_size=4).map(lambda props: obj(**props)),
        st.tuples(children, st.integers(0, 2), st.integers(0, 2)).map(
            lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[1] + t[2]}
        ),
        st.lists(children, min_size=1, max_size=3).map(lambda branches: {"anyOf": branches}),
    )


strict_schemas = st.dictionaries(
    _names, st.recursive(_leaves, _compound, max_leaves=12), max_size=5
).map(lambda props: obj(**props))


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(schema=strict_schemas, seed=st.integers(0, 2**32))
def test_any_schema_of_the_subset_gets_a_valid_document(schema, seed):
    check_schema(schema, strict=True)
    generation = generate_all(
        request(seed=seed, response_format="json_schema", json_schema=schema, logprobs=True)
    )
    assert generation.finish_reasons() == ["stop"]
    text = generation.texts()[0]
    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(
        json.loads(text)
    )
    assert "".join(entry["token"] for entry in generation.logprobs()[0]) == text
    assert generation.completion_tokens == count_tokens(text)


def test_dates_and_times_are_iso_8601():
    schema = obj(
        when={"type": "string", "format": "date-time"},
        day={"type": "string", "format": "date"},
        at={"type": "string", "format": "time"},
    )
    for seed in range(10):
        document = json.loads(
            generate_all(
                request(seed=seed, response_format="json_schema", json_schema=schema)
            ).texts()[0]
        )
        datetime.fromisoformat(document["when"])
        date.fromisoformat(document["day"])
        time.fromisoformat(document["at"])


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        (obj(a={"$ref": "#/$defs/missing"}), "$ref"),
        (
            {
                **obj(a={"$ref": "#/$defs/loop"}),
                "$defs": {"loop": obj(again={"$ref": "#/$defs/loop"})},
            },
            "$ref",
        ),
        ({**obj(a={"$ref": "#"})}, "$ref"),
        (obj(a={"type": "string", "pattern": "^(?=a)b$"}), "pattern"),
    ],
)
def test_strict_schemas_the_generator_cannot_follow_are_refused(schema, keyword):
    with pytest.raises(SchemaRefused) as refused:
        check_schema(schema, strict=True)
    assert refused.value.keyword == keyword
