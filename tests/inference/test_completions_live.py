"""`/v1/completions` (legacy text completions) against the live stack, through the official
`openai` client sync and async, and raw HTTP where the wire format is the point."""

import asyncio
import json

import httpx
import openai
import pytest

from inference.engine import count_tokens
from telemetry.ledger import ledger_flush
from telemetry.models import UsageRecord
from tests.support.openai_schema import validate

PROMPT = "Once upon a time, a GPU"


@pytest.fixture
def setup(live, alice, make_key, ready_model):
    ready_model("nebula-7b")
    _, secret = make_key(alice, rpm_limit=10_000)
    return secret


def post(live, secret, body):
    return httpx.post(
        live.url + "/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def stream_events(live, secret, body):
    with httpx.stream(
        "POST",
        live.url + "/v1/completions",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200, response.read()
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_a_completion_has_text_usage_and_the_published_shape(live, setup, openai_client):
    raw = openai_client(setup).completions.with_raw_response.create(
        model="nebula-7b", prompt=PROMPT, max_tokens=20, seed=3
    )
    validate("CreateCompletionResponse", json.loads(raw.text))
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    choice = completion.choices[0]
    assert choice.text and choice.finish_reason in ("stop", "length") and choice.index == 0
    usage = completion.usage
    assert usage.prompt_tokens == count_tokens(PROMPT) and 0 < usage.completion_tokens <= 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    ledger_flush()
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert record.endpoint == "/v1/completions" and record.status == 200
    assert record.completion_tokens == usage.completion_tokens


def test_max_tokens_defaults_to_sixteen_as_openais_does(live, setup, openai_client):
    client = openai_client(setup)
    replies = [
        client.completions.create(model="nebula-7b", prompt=PROMPT, seed=seed) for seed in range(4)
    ]
    assert {reply.usage.completion_tokens for reply in replies} == {16}


def test_several_prompts_get_n_choices_each_in_prompt_order(live, setup, openai_client):
    prompts = ["The first prompt about memory", "The second prompt about networks"]
    completion = openai_client(setup).completions.create(
        model="nebula-7b",
        prompt=prompts,
        n=2,
        max_tokens=40,
        echo=True,
        seed=1,
    )
    texts = [choice.text for choice in completion.choices]
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert texts[0].startswith("The first prompt") and texts[1].startswith("The first prompt")
    assert texts[2].startswith("The second prompt") and texts[3].startswith("The second")
    assert texts[0] != texts[1]
    assert completion.usage.prompt_tokens == sum(map(count_tokens, prompts))


def test_a_prompt_of_token_ids_is_counted_as_its_ids(live, setup, openai_client):
    client = openai_client(setup)
    one = client.completions.create(model="nebula-7b", prompt=[1, 2, 3, 4], max_tokens=5)
    assert one.usage.prompt_tokens == 4 and len(one.choices) == 1
    two = client.completions.create(model="nebula-7b", prompt=[[1, 2], [3]], max_tokens=5)
    assert two.usage.prompt_tokens == 3 and len(two.choices) == 2


def test_a_stop_sequence_ends_the_text_before_it(live, setup, openai_client):
    client = openai_client(setup)
    whole = client.completions.create(model="nebula-7b", prompt=PROMPT, max_tokens=60, seed=5)
    word = whole.choices[0].text.split()[3]
    cut = client.completions.create(
        model="nebula-7b", prompt=PROMPT, max_tokens=60, seed=5, stop=[word]
    )
    assert word not in cut.choices[0].text and cut.choices[0].finish_reason == "stop"
    assert whole.choices[0].text.startswith(cut.choices[0].text)


def test_the_stream_follows_openais_chunk_rules_and_equals_the_whole(live, setup, openai_client):
    body = {"model": "nebula-7b", "prompt": PROMPT, "max_tokens": 25, "seed": 8, "echo": True}
    whole = openai_client(setup).completions.create(**body)
    chunks = stream_events(live, setup, {**body, "stream_options": {"include_usage": True}})
    *text_chunks, usage_chunk = chunks
    for chunk in chunks:
        validate("CreateCompletionResponse", chunk)
        assert chunk["object"] == "text_completion"
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert text_chunks[0]["choices"][0]["text"] == PROMPT  # echo comes first
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == whole.choices[0].text
    finishes = [c["choices"][0]["finish_reason"] for c in text_chunks]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] == (
        whole.usage.total_tokens
    )


def test_the_client_streams_sync_and_async(live, setup, openai_client):
    body = {"model": "nebula-7b", "prompt": PROMPT, "max_tokens": 20, "seed": 2}
    streamed = "".join(
        chunk.choices[0].text
        for chunk in openai_client(setup).completions.create(**body, stream=True)
    )

    async def run():
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=setup, max_retries=0)
        whole = await client.completions.create(**body)
        stream = await client.completions.create(**body, stream=True)
        parts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
        await client.close()
        return whole, "".join(parts)

    whole, async_streamed = asyncio.run(run())
    assert streamed == async_streamed == whole.choices[0].text


def test_logprobs_give_each_tokens_figures_and_offsets_in_the_body_and_the_stream(
    live, setup, openai_client
):
    body = {"model": "nebula-7b", "prompt": PROMPT, "max_tokens": 12, "seed": 5, "logprobs": 3}
    raw = openai_client(setup).completions.with_raw_response.create(**body)
    whole = json.loads(raw.text)
    validate("CreateCompletionResponse", whole)
    choice = whole["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert len(logprobs["tokens"]) == whole["usage"]["completion_tokens"]
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    assert all(len(top) <= 3 for top in logprobs["top_logprobs"])
    assert any(top for top in logprobs["top_logprobs"])
    starts = [len("".join(logprobs["tokens"][:i])) for i in range(len(logprobs["tokens"]))]
    assert logprobs["text_offset"] == starts

    chunks = stream_events(live, setup, body)
    for chunk in chunks:
        validate("CreateCompletionResponse", chunk)
    pieces = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    streamed = [lp for piece in pieces for lp in piece["logprobs"]["tokens"]]
    assert streamed == logprobs["tokens"]  # the same seed: the same tokens and figures
    offsets = [o for piece in pieces for o in piece["logprobs"]["text_offset"]]
    assert offsets == logprobs["text_offset"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"suffix": "the end"}, "suffix", "unsupported_parameter"),
        ({"logprobs": 2, "echo": True}, "logprobs", "unsupported_parameter"),
        ({"best_of": 3}, "best_of", "unsupported_parameter"),
        ({"presence_penalty": 1}, "presence_penalty", "unsupported_parameter"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        ({"frobnicate": True}, "frobnicate", "unknown_parameter"),
        ({"max_tokens": "5"}, "max_tokens", "invalid_type"),
        ({"max_tokens": True}, "max_tokens", "invalid_type"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"logprobs": 9}, "logprobs", "invalid_value"),
        ({"prompt": [1, 2], "echo": True}, "echo", "unsupported_parameter"),
        ({"prompt": []}, "prompt", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"max_tokens": 100_000}, "prompt", "context_length_exceeded"),
    ],
)
def test_what_is_not_supported_or_malformed_is_a_400_naming_it(live, setup, body, param, code):
    response = post(live, setup, {"model": "nebula-7b", "prompt": PROMPT, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    validate("ErrorResponse", response.json())
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    ledger_flush()
    record = UsageRecord.objects.get(request_id=response.headers["x-request-id"])
    assert record.endpoint == "/v1/completions" and record.status == 400


def test_best_of_equal_to_n_is_accepted(live, setup):
    response = post(live, setup, {"model": "nebula-7b", "prompt": PROMPT, "best_of": 2, "n": 2})
    assert response.status_code == 200 and len(response.json()["choices"]) == 2


def test_an_unknown_model_and_a_bad_key_are_refused_as_for_chat(live, setup, openai_client):
    with pytest.raises(openai.NotFoundError):
        openai_client(setup).completions.create(model="nope", prompt=PROMPT)
    with pytest.raises(openai.AuthenticationError):
        openai_client("nb_wrong").completions.create(model="nebula-7b", prompt=PROMPT)
