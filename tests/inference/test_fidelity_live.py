"""Structured output and logprobs through the whole stack (daphne, Redis, Celery workers) with
the official `openai` client, sync and async: bodies and chunks conform to OpenAI's schema."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Literal

import httpx
import openai
import pydantic
import pytest
from jsonschema import Draft202012Validator

from tests.support.openai_schema import validate

QUESTION = [{"role": "user", "content": "Describe a GPU cluster as JSON."}]


class Step(pydantic.BaseModel):
    explanation: str
    output: int


class MathReasoning(pydantic.BaseModel):
    steps: list[Step]
    final_answer: str
    kind: Literal["proof", "sum"]
    note: str | None


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "role": {"type": "string", "enum": ["admin", "user"]},
    },
    "required": ["name", "age", "email", "tags", "role"],
    "additionalProperties": False,
}
PERSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "strict": True, "schema": PERSON},
}


@pytest.fixture
def secret(live, alice, make_key, ready_model):
    ready_model("nebula-7b")
    _, key = make_key(alice, rpm_limit=10_000)
    return key


def stream_events(live, secret, body):
    with httpx.stream(
        "POST",
        live.url + "/v1/chat/completions",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200, response.read()
        events = [
            json.loads(line[6:])
            for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    for event in events:
        validate("CreateChatCompletionStreamResponse", event)
    return events


def test_json_object_mode_returns_one_json_object(live, secret, openai_client):
    raw = openai_client(secret).chat.completions.with_raw_response.create(
        model="nebula-7b", messages=QUESTION, response_format={"type": "json_object"}, seed=4
    )
    validate("CreateChatCompletionResponse", json.loads(raw.text))
    completion = raw.parse()
    assert isinstance(json.loads(completion.choices[0].message.content), dict)
    assert completion.choices[0].finish_reason == "stop"


def test_a_strict_json_schema_reply_validates_and_streams_in_pieces(live, secret, openai_client):
    client = openai_client(secret)
    options = {"model": "nebula-7b", "messages": QUESTION, "response_format": PERSON_FORMAT}
    validator = Draft202012Validator(PERSON, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for seed in range(3):
        whole = client.chat.completions.create(seed=seed, **options)
        validator.validate(json.loads(whole.choices[0].message.content))
    events = stream_events(
        live, secret, {**options, "seed": 2, "stream_options": {"include_usage": True}}
    )
    pieces = [e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]]
    assert len([p for p in pieces if p]) > 5
    assert "".join(pieces) == whole.choices[0].message.content
    assert events[-1]["usage"]["completion_tokens"] == whole.usage.completion_tokens


def test_parse_with_a_pydantic_model_returns_the_parsed_object(live, secret, openai_client):
    client = openai_client(secret)
    completion = client.chat.completions.parse(
        model="nebula-7b", messages=QUESTION, response_format=MathReasoning, seed=1
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, MathReasoning) and parsed.kind in ("proof", "sum")
    assert all(isinstance(step, Step) for step in parsed.steps)
    beta = client.beta.chat.completions.parse(
        model="nebula-7b", messages=QUESTION, response_format=MathReasoning, seed=1
    )
    assert beta.choices[0].message.parsed == parsed


def test_the_async_client_parses_and_streams_structured_output(live, secret):
    async def run():
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
        parsed = await client.chat.completions.parse(
            model="nebula-7b", messages=QUESTION, response_format=MathReasoning, seed=8
        )
        stream = await client.chat.completions.create(
            model="nebula-7b", messages=QUESTION, response_format=PERSON_FORMAT, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return parsed, text

    parsed, text = asyncio.run(run())
    assert isinstance(parsed.choices[0].message.parsed, MathReasoning)
    Draft202012Validator(PERSON).validate(json.loads(text))


def test_a_schema_outside_openais_subset_is_a_400_naming_the_keyword(live, secret, openai_client):
    schema = {
        **PERSON,
        "properties": {**PERSON["properties"], "name": {"type": "string", "minLength": 1}},
    }
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client(secret).chat.completions.create(
            model="nebula-7b",
            messages=QUESTION,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "strict": True, "schema": schema},
            },
        )
    error = bad.value.response.json()["error"]
    assert error["param"] == "response_format.json_schema.schema"
    assert error["code"] == "invalid_json_schema" and "minLength" in error["message"]


def assert_logprobs(entries, top):
    for entry in entries:
        assert entry["bytes"] == list(entry["token"].encode("utf-8")) and entry["logprob"] <= 0
        figures = [alternative["logprob"] for alternative in entry["top_logprobs"]]
        assert len(figures) <= top and figures == sorted(figures, reverse=True)


def test_logprobs_in_the_body_are_the_reply_token_by_token(live, secret, openai_client):
    raw = openai_client(secret).chat.completions.with_raw_response.create(
        model="nebula-7b", messages=QUESTION, logprobs=True, top_logprobs=3, max_tokens=50, seed=5
    )
    body = json.loads(raw.text)
    validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"]
    assert_logprobs(entries, 3)
    assert any(len(e["top_logprobs"]) == 3 for e in entries)
    assert any(e["logprob"] < 0 for e in entries)
    completion = raw.parse()  # the client's own types read them
    assert math.isclose(completion.choices[0].logprobs.content[0].logprob, entries[0]["logprob"])


def test_logprobs_in_the_chunks_go_with_their_delta(live, secret):
    body = {
        "model": "nebula-7b",
        "messages": QUESTION,
        "logprobs": True,
        "top_logprobs": 2,
        "max_tokens": 40,
        "seed": 5,
        "n": 2,
        "stream_options": {"include_usage": True},
    }
    events = stream_events(live, secret, body)
    for index in (0, 1):
        chunks = [
            e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == index
        ]
        text = "".join(c["delta"].get("content") or "" for c in chunks)
        entries = [entry for c in chunks if c["logprobs"] for entry in c["logprobs"]["content"]]
        assert "".join(e["token"] for e in entries) == text
        for chunk in chunks:
            if chunk["delta"].get("content"):
                tokens = "".join(e["token"] for e in chunk["logprobs"]["content"])
                assert tokens == chunk["delta"]["content"]
        assert_logprobs(entries, 2)
    assert (
        sum(
            1
            for e in events
            if e["choices"] and e["choices"][0]["logprobs"]
            for _ in e["choices"][0]["logprobs"]["content"]
        )
        == events[-1]["usage"]["completion_tokens"]
    )


def test_without_logprobs_there_are_none(live, secret, openai_client):
    completion = openai_client(secret).chat.completions.create(
        model="nebula-7b", messages=QUESTION, max_tokens=5
    )
    assert completion.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_top_logprobs_needs_logprobs_and_at_most_twenty(live, secret, openai_client, extra, param):
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client(secret).chat.completions.create(
            model="nebula-7b", messages=QUESTION, extra_body=extra
        )
    assert bad.value.response.json()["error"]["param"] == param


def test_an_image_part_to_a_text_only_model_is_refused_clearly(live, secret, openai_client):
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client(secret).chat.completions.create(
            model="nebula-7b",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ],
        )
    error = bad.value.response.json()["error"]
    assert error["code"] == "unsupported_content" and error["param"] == "messages[0].content"
    assert "text only" in error["message"] and "image_url" in error["message"]
