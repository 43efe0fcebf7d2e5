"""The official `openai` client against live daphne + Celery workers: base_url and key only.."""

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest

from tests.support.openai_schema import validate

HELLO = [{"role": "user", "content": "Hello GPU, how do you serve models?"}]


@pytest.fixture
def setup(live, alice, make_key, ready_model):
    ready_model("nebula-7b")
    _, secret = make_key(alice, rpm_limit=10_000)
    return secret


def sse(response):
    """The data lines of an SSE response, parsed; the last one is '[DONE]'."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "" or line.startswith(":"), line  # comments are the only other lines
    return events


def test_a_completion_has_content_usage_and_the_published_shape(live, setup, openai_client):
    client = openai_client(setup)
    raw = client.chat.completions.with_raw_response.create(
        model="nebula-7b", messages=HELLO, max_tokens=40
    )
    completion = raw.parse()
    validate("CreateChatCompletionResponse", json.loads(raw.text))
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.model == "nebula-7b"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"


def test_a_stream_follows_openais_chunk_rules(live, setup):
    body = {
        "model": "nebula-7b",
        "messages": HELLO,
        "stream": True,
        "n": 2,
        "max_tokens": 30,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST",
        live.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {setup}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-ratelimit-remaining-requests"]
        assert response.headers["x-request-id"].startswith("req_")
        events = sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    *choice_chunks, usage_chunk = chunks
    assert all(c["usage"] is None for c in choice_chunks)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    for index in (0, 1):
        mine = [c["choices"][0] for c in choice_chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert [m["finish_reason"] for m in mine[:-1]] == [None] * (len(mine) - 1)
        assert mine[-1]["finish_reason"] in ("stop", "length")


def test_streamed_text_equals_non_streamed_text_for_the_same_seed(live, setup, openai_client):
    client = openai_client(setup)
    options = {"model": "nebula-7b", "messages": HELLO, "seed": 42, "max_tokens": 60}
    whole = client.chat.completions.create(**options)
    stream = client.chat.completions.create(stream=True, **options)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == whole.choices[0].message.content


def test_n_two_returns_two_different_choices(live, setup, openai_client):
    completion = openai_client(setup).chat.completions.create(
        model="nebula-7b", messages=HELLO, n=2, seed=1, max_tokens=20
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].message.content != completion.choices[1].message.content
    assert completion.usage.completion_tokens <= 40


def test_max_tokens_one_finishes_with_length(live, setup, openai_client):
    client = openai_client(setup)
    for limit in ({"max_tokens": 1}, {"max_completion_tokens": 1}):
        completion = client.chat.completions.create(model="nebula-7b", messages=HELLO, **limit)
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 1


def test_a_stop_sequence_ends_the_reply_before_it(live, setup, openai_client):
    client = openai_client(setup)
    full = client.chat.completions.create(model="nebula-7b", messages=HELLO, seed=5)
    text = full.choices[0].message.content
    stop = text.split()[3]  # a word we know comes up
    stopped = client.chat.completions.create(model="nebula-7b", messages=HELLO, seed=5, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].message.content
    assert text.startswith(stopped.choices[0].message.content)
    stream = client.chat.completions.create(
        model="nebula-7b", messages=HELLO, seed=5, stop=stop, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == stopped.choices[0].message.content


def test_the_async_client_works_streaming_and_not(live, setup):
    async def run():
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=setup, max_retries=0)
        whole = await client.chat.completions.create(model="nebula-7b", messages=HELLO, seed=9)
        stream = await client.chat.completions.create(
            model="nebula-7b", messages=HELLO, seed=9, stream=True
        )
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        models = await client.models.list()
        await client.close()
        return whole, "".join(parts), models

    whole, streamed, models = asyncio.run(run())
    assert whole.choices[0].message.content == streamed
    assert [m.id for m in models.data] == ["nebula-7b"]


def test_every_role_and_content_part_form_is_accepted(live, setup, openai_client):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is a GPU?"}], "name": "al"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        {"role": "user", "content": "Thanks!"},
    ]
    completion = openai_client(setup).chat.completions.create(
        model="nebula-7b",
        messages=messages,
        temperature=0.2,
        top_p=0.9,
        user="user-1",
    )
    assert completion.choices[0].message.content


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"frobnicate": True}, "frobnicate", "unknown_parameter"),
        ({"max_tokens": True}, "max_tokens", "invalid_type"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"temperature": "1"}, "temperature", "invalid_type"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
        (
            {"prediction": {"type": "content", "content": "x"}},
            "prediction",
            "unsupported_parameter",
        ),
        ({"logit_bias": {"1": 2}}, "logit_bias", "unsupported_parameter"),
    ],
)
def test_unknown_mistyped_and_unsupported_parameters_are_400s(
    live, setup, openai_client, extra, param, code
):
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client(setup).chat.completions.create(
            model="nebula-7b", messages=HELLO, extra_body=extra
        )
    error = _error_body(bad.value)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    validate("ErrorResponse", bad.value.response.json())


def test_models_list_and_retrieve_in_openais_format(live, alice, make_key, ready_model):
    ready_model("nebula-7b")
    ready_model("nebula-13b", params_billions=13)
    _, only_7b = make_key(alice, allowed_models=["nebula-7b"])
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=only_7b, max_retries=0)
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", json.loads(raw.text))
    assert [m.id for m in raw.parse().data] == ["nebula-7b"]
    assert client.models.retrieve("nebula-7b").id == "nebula-7b"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nebula-13b")


def _error_body(error):
    body = error.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_errors_map_to_the_clients_exception_classes(live, alice, make_key, ready_model):
    ready_model("nebula-7b")
    ready_model("nebula-13b", params_billions=13)
    _, secret = make_key(alice, rpm_limit=1000, allowed_models=["nebula-7b"])
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    create = client.chat.completions.create

    with pytest.raises(openai.BadRequestError) as bad:
        create(model="nebula-7b", messages=HELLO, temperature=3)
    assert _error_body(bad.value)["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as empty:
        create(model="nebula-7b", messages=[])
    assert _error_body(empty.value)["param"] == "messages"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=live.url + "/v1", api_key="nb_wrong", max_retries=0
        ).chat.completions.create(model="nebula-7b", messages=HELLO)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        create(model="nebula-13b", messages=HELLO)
    assert _error_body(denied.value)["code"] == "model_not_allowed"
    with pytest.raises(openai.NotFoundError) as missing:
        create(model="nebula-404", messages=HELLO)
    assert _error_body(missing.value)["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "nebula-7b", "messages": HELLO, "top_p": 1.5}, "top_p"),
        ({"model": "nebula-7b", "messages": HELLO, "n": 0}, "n"),
        ({"model": "nebula-7b", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (
            {"model": "nebula-7b", "messages": HELLO, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ({"model": "nebula-7b"}, "messages"),
        ({"messages": HELLO}, "model"),
        (
            {"model": "nebula-7b", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        ({"model": "nebula-7b", "messages": HELLO, "max_tokens": 100_000}, "messages"),
    ],
)
def test_invalid_bodies_get_400_naming_the_parameter(live, setup, body, param):
    response = httpx.post(
        live.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {setup}"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    validate("ErrorResponse", response.json())


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b"", b"\xff\xfe\x00"])
def test_bodies_that_are_not_json_objects_get_400(live, setup, raw):
    response = httpx.post(
        live.url + "/v1/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {setup}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_rate_limited_requests_raise_rate_limit_error_with_retry_after(
    live, alice, make_key, ready_model, openai_client
):
    ready_model("nebula-7b")
    _, secret = make_key(alice, rpm_limit=2)
    client = openai_client(secret)
    for _ in range(2):
        client.chat.completions.create(model="nebula-7b", messages=HELLO, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="nebula-7b", messages=HELLO, max_tokens=1)
    assert _error_body(limited.value)["code"] == "rate_limit_exceeded"
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining"] == "0"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="nebula-7b", messages=HELLO, stream=True)


# A 20B model on two L4s decodes a token in ~95 ms; at the stack's 0.1 time scale, ~10 ms.
SLOW = {"params_billions": 20, "gpu_type": "L4", "gpus_per_replica": 2}


def test_a_full_fleet_answers_503_after_the_queue_timeout(live, alice, make_key, ready_model):
    ready_model("slow-one", max_concurrent_seqs=1, **SLOW)
    _, secret = make_key(alice, rpm_limit=100)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0, timeout=60)
    hog = threading.Thread(
        target=client.chat.completions.create,
        kwargs={
            "model": "slow-one",
            "messages": HELLO,
            "max_tokens": 1000,
            "extra_body": {"ignore_eos": True},
        },
    )
    hog.start()
    time.sleep(0.5)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model="slow-one", messages=HELLO, max_tokens=5)
    assert unavailable.value.status_code == 503
    assert _error_body(unavailable.value)["code"] == "queue_timeout"
    assert 4 <= time.monotonic() - started < 9  # the stack's NEBULA_QUEUE_TIMEOUT is 5 s
    hog.join()


def test_a_client_disconnect_frees_the_gpu_slot(live, alice, make_key, ready_model):
    from telemetry.ledger import ledger_flush
    from telemetry.models import UsageRecord

    ready_model("slow-one", max_concurrent_seqs=1, **SLOW)
    _, secret = make_key(alice, rpm_limit=100)
    headers = {"Authorization": f"Bearer {secret}"}
    body = {
        "model": "slow-one",
        "messages": HELLO,
        "stream": True,
        "max_tokens": 2000,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", live.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any('"content"' in line for line in received)
    # The stream would run ~20 s; with the client gone, the capacity-1 model is free again.
    started = time.monotonic()
    second = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    completion = second.chat.completions.create(model="slow-one", messages=HELLO, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert time.monotonic() - started < 3
    ledger_flush()
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.finish_reason == "cancelled" and record.status == 499
    assert 0 < record.completion_tokens < 200


def test_the_request_id_header_names_the_usage_record(live, setup, openai_client):
    from telemetry.ledger import ledger_flush
    from telemetry.models import UsageRecord

    raw = openai_client(setup).chat.completions.with_raw_response.create(
        model="nebula-7b", messages=HELLO, max_tokens=3
    )
    ledger_flush()
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert record.status == 200 and record.completion_tokens == raw.parse().usage.completion_tokens
