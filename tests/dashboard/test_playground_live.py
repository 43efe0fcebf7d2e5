"""The playground consumer against real workers: it streams, stops, and is billed like /v1."""

import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from inference.consumers import PlaygroundConsumer
from telemetry.ledger import ledger_flush
from telemetry.models import RefusalTally, UsageRecord

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
SLOW = {"params_billions": 20, "gpu_type": "L4", "gpus_per_replica": 2}  # ~10 ms a token here


@pytest.fixture(autouse=True)
def _in_memory_layer():
    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        yield


async def _await(coroutine):
    return await coroutine


def run(coroutine):
    return async_to_sync(_await)(coroutine)


def chat(key, model, **extra):
    return {
        "type": "chat",
        "key": key.pk,
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about GPUs"}],
        **extra,
    }


async def playground(user):
    communicator = WebsocketCommunicator(PlaygroundConsumer.as_asgi(), "/ws/playground/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


def test_the_playground_streams_a_reply_and_bills_it_like_the_api(
    live, alice, make_key, ready_model
):
    ready_model("slow-20b", **SLOW)
    key, _ = make_key(alice)

    async def scenario():
        communicator = await playground(alice)
        await communicator.send_json_to(chat(key, "slow-20b", max_tokens=40, ignore_eos=True))
        started = await communicator.receive_json_from(timeout=10)
        assert started["type"] == "started"
        deltas, arrivals = [], []
        while True:
            message = await communicator.receive_json_from(timeout=10)
            if message["type"] != "delta":
                break
            deltas.append(message)
            arrivals.append(time.monotonic())
        assert message["type"] == "done", message
        assert message["usage"]["completion_tokens"] == 40
        assert message["finish_reason"] == "length"
        assert deltas[0]["ttft_ms"] > 0
        assert len(deltas) >= 5 and arrivals[-1] - arrivals[0] > 0.1  # token by token
        await communicator.disconnect()
        return started["request_id"], "".join(d["text"] for d in deltas)

    request_id, text = run(scenario())
    assert text
    ledger_flush()
    record = UsageRecord.objects.get(request_id=request_id)
    assert (record.client, record.status, record.api_key_id) == ("playground", 200, key.pk)
    assert record.completion_tokens == 40 and record.endpoint == "/v1/chat/completions"


def test_stop_ends_the_job_and_it_is_recorded_as_cancelled(live, alice, make_key, ready_model):
    ready_model("slow-20b", **SLOW)
    key, _ = make_key(alice)

    async def scenario():
        communicator = await playground(alice)
        await communicator.send_json_to(chat(key, "slow-20b", max_tokens=3000, ignore_eos=True))
        started = await communicator.receive_json_from(timeout=10)
        assert (await communicator.receive_json_from(timeout=10))["type"] == "delta"
        await communicator.send_json_to({"type": "stop"})
        while (message := await communicator.receive_json_from(timeout=10))["type"] == "delta":
            pass
        assert message == {"type": "stopped", "request_id": started["request_id"]}
        stopped_at = time.monotonic()
        await communicator.disconnect()
        return started["request_id"], stopped_at

    request_id, stopped_at = run(scenario())
    # The worker notices at its next token and records the request; far sooner than 3000 tokens.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ledger_flush()
        record = UsageRecord.objects.filter(request_id=request_id).first()
        if record is not None:
            break
        time.sleep(0.1)
    assert record is not None
    assert time.monotonic() - stopped_at < 5
    assert (record.finish_reason, record.status, record.client) == ("cancelled", 499, "playground")
    assert 0 < record.completion_tokens < 3000


def test_the_playground_shares_the_keys_rate_limit(live, alice, make_key, ready_model):
    ready_model()
    key, _ = make_key(alice, rpm_limit=1)

    async def scenario():
        communicator = await playground(alice)
        await communicator.send_json_to(chat(key, "nebula-7b", max_tokens=3))
        while (await communicator.receive_json_from(timeout=10))["type"] != "done":
            pass
        await communicator.send_json_to(chat(key, "nebula-7b", max_tokens=3))
        error = await communicator.receive_json_from(timeout=10)
        await communicator.disconnect()
        return error

    error = run(scenario())
    assert error["type"] == "error"
    assert error["code"] == "rate_limit_exceeded"
    assert "requests per min (RPM): Limit 1, Used 1" in error["message"]
    ledger_flush()
    statuses = sorted(UsageRecord.objects.filter(api_key=key).values_list("status", flat=True))
    assert statuses == [200]
    # Refusals over the limit are counted, not recorded one by one (telemetry.refusals).
    assert [(t.status, t.count) for t in RefusalTally.objects.filter(api_key=key)] == [(429, 1)]
