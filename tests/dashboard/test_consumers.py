"""The dashboard's websocket consumers, driven with Channels' WebsocketCommunicator.

The channel layer is the in-memory one here (no cross-talk with other test runs), except where
a test needs a real Redis to lose.
"""

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.test import override_settings

from dashboard.consumers import CLOSE_NOT_AUTHENTICATED, CLOSE_REDIS_LOST
from inference.consumers import PlaygroundConsumer
from infra.channel_layers import CHANNELS_REDIS_BRPOP_TIMEOUT, redis_channel_layer
from models_registry import services as model_services
from models_registry.consumers import FleetConsumer
from models_registry.models import DeployedModel
from telemetry.consumers import OverviewConsumer
from telemetry.events import usage_event
from telemetry.ledger import usage_write_batch
from tests.support.proxy import TcpProxy

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
CONSUMERS = [
    (OverviewConsumer, "/ws/overview/"),
    (FleetConsumer, "/ws/fleet/"),
    (PlaygroundConsumer, "/ws/playground/"),
]


@pytest.fixture(autouse=True)
def _in_memory_layer():
    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        yield


async def _await(coroutine):
    return await coroutine


def run(coroutine):
    return async_to_sync(_await)(coroutine)


async def open_socket(consumer, path, user):
    communicator = WebsocketCommunicator(consumer.as_asgi(), path)
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def next_of(communicator, kind, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        message = await communicator.receive_json_from(
            timeout=max(deadline - time.monotonic(), 0.01)
        )
        if message["type"] == kind:
            return message


def usage_for(key, request_id, **fields):
    return usage_event(
        request_id=request_id,
        key_id=key.pk,
        key_prefix=key.prefix,
        model="nebula-7b",
        endpoint="/v1/chat/completions",
        status=200,
        prompt_tokens=10,
        completion_tokens=20,
        **fields,
    )


# --- Authentication and isolation ----------------------------------------------------------------


@pytest.mark.parametrize(("consumer", "path"), CONSUMERS)
def test_sockets_turn_away_anonymous_visitors(consumer, path, transactional_db):
    async def scenario():
        communicator = await open_socket(consumer, path, AnonymousUser())
        error = await communicator.receive_json_from()
        assert error["code"] == "not_authenticated"
        closed = await communicator.receive_output()
        assert closed == {"type": "websocket.close", "code": CLOSE_NOT_AUTHENTICATED}

    run(scenario())


def test_the_overview_socket_counts_only_the_users_own_traffic(
    alice, bob, make_key, transactional_db
):
    alices, _ = make_key(alice)
    bobs, _ = make_key(bob)
    usage_write_batch([usage_for(alices, f"a{i}") for i in range(3)] + [usage_for(bobs, "b0")])

    async def scenario():
        communicator = await open_socket(OverviewConsumer, "/ws/overview/", bob)
        report = (await next_of(communicator, "overview"))["report"]
        assert report["traffic"]["requests"] == 1
        assert report["workers"]["list"] == []  # hosts are for operators
        await communicator.disconnect()

    run(scenario())


def test_the_overview_socket_pushes_new_usage_as_it_is_recorded(alice, make_key, transactional_db):
    key, _ = make_key(alice)

    async def scenario():
        communicator = await open_socket(OverviewConsumer, "/ws/overview/", alice)
        first = (await next_of(communicator, "overview"))["report"]
        assert first["traffic"]["requests"] == 0
        # What the usage ledger does when it writes a batch: the socket recomputes and pushes.
        from channels.db import database_sync_to_async

        await database_sync_to_async(usage_write_batch)(
            [usage_for(key, "r1"), usage_for(key, "r2")]
        )
        pushed = (await next_of(communicator, "overview"))["report"]
        assert pushed["traffic"]["requests"] == 2
        assert pushed["traffic"]["tokens"] == 60
        await communicator.disconnect()

    run(scenario())


def test_the_fleet_socket_shows_users_only_ready_models_without_fleet_details(
    alice, operator, ready_model, transactional_db
):
    ready_model("nebula-7b")
    DeployedModel.objects.create(
        name="still-loading", parameters=7_000_000_000, gpu_type="L4", state="loading"
    )

    async def scenario():
        users = await open_socket(FleetConsumer, "/ws/fleet/", alice)
        operators = await open_socket(FleetConsumer, "/ws/fleet/", operator)
        seen = (await next_of(users, "fleet"))["models"]
        assert [m["name"] for m in seen] == ["nebula-7b"]
        assert not {"owner", "gpu_type", "replicas", "failure_reason"} & set(seen[0])
        fleet = (await next_of(operators, "fleet"))["models"]
        assert {m["name"] for m in fleet} == {"nebula-7b", "still-loading"}
        assert fleet[0]["gpu_type"]
        await users.disconnect()
        await operators.disconnect()

    run(scenario())


def test_the_fleet_socket_pushes_each_state_change(operator, transactional_db):
    model = DeployedModel.objects.create(
        name="nebula-13b", parameters=13_000_000_000, gpu_type="H100-80GB", state="pending"
    )

    async def scenario():
        from channels.db import database_sync_to_async

        communicator = await open_socket(FleetConsumer, "/ws/fleet/", operator)
        assert (await next_of(communicator, "fleet"))["models"][0]["state"] == "pending"
        for state in ("loading", "ready"):
            await database_sync_to_async(model_services.model_transition)(
                model_id=model.pk, to_state=state
            )
            pushed = (await next_of(communicator, "fleet"))["models"]
            assert pushed[0]["state"] == state
        await communicator.disconnect()

    run(scenario())


def test_a_user_is_not_told_about_deployments_they_cannot_see(alice, transactional_db):
    model = DeployedModel.objects.create(
        name="private-rollout", parameters=7_000_000_000, gpu_type="L4", state="pending"
    )

    async def scenario():
        from channels.db import database_sync_to_async

        communicator = await open_socket(FleetConsumer, "/ws/fleet/", alice)
        assert (await next_of(communicator, "fleet"))["models"] == []
        await database_sync_to_async(model_services.model_transition)(
            model_id=model.pk, to_state="loading"
        )
        pushed = await next_of(communicator, "fleet")
        assert "private-rollout" not in json.dumps(pushed)
        await communicator.disconnect()

    run(scenario())


# --- Bad input -----------------------------------------------------------------------------------


def test_bad_input_gets_a_clear_error_and_the_socket_stays_open(alice, make_key, transactional_db):
    key, _ = make_key(alice)
    chat = {"type": "chat", "key": key.pk, "model": "nebula-7b"}

    async def scenario():
        communicator = await open_socket(PlaygroundConsumer, "/ws/playground/", alice)
        cases = [
            ({"bytes_data": b"\x00\x01"}, "invalid_json", "binary"),
            ({"text_data": "{not json"}, "invalid_json", "not valid JSON"),
            ({"text_data": "[1, 2]"}, "invalid_message", '"type"'),
            ({"text_data": '{"type": "dance"}'}, "invalid_message", "Unknown message type"),
            ({"text_data": json.dumps({**chat, "key": "mine"})}, "missing_key", "API keys"),
            ({"text_data": json.dumps({**chat, "messages": []})}, "invalid_value", "messages"),
            (
                {
                    "text_data": json.dumps(
                        {**chat, "messages": [{"role": "user", "content": "hi"}], "temperature": 7}
                    )
                },
                "invalid_value",
                "temperature",
            ),
            (
                {
                    "text_data": json.dumps(
                        {
                            **chat,
                            "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": "many",
                        }
                    )
                },
                "invalid_type",
                "max_tokens",
            ),
        ]
        for frame, code, words in cases:
            await communicator.send_to(**frame)
            error = await communicator.receive_json_from(timeout=5)
            assert error["type"] == "error"
            assert error["code"] == code, error
            assert words in error["message"]
        # Still alive: a stop with nothing running is acknowledged.
        await communicator.send_json_to({"type": "stop"})
        assert (await communicator.receive_json_from())["type"] == "stopped"
        await communicator.disconnect()

    run(scenario())


def test_the_playground_refuses_someone_elses_key(
    alice, bob, make_key, ready_model, transactional_db
):
    ready_model()
    bobs, _ = make_key(bob)

    async def scenario():
        communicator = await open_socket(PlaygroundConsumer, "/ws/playground/", alice)
        await communicator.send_json_to(
            {
                "type": "chat",
                "key": bobs.pk,
                "model": "nebula-7b",
                "messages": [{"role": "user", "content": "hi"}],
            }
        )
        error = await communicator.receive_json_from(timeout=5)
        assert error["type"] == "error"
        assert error["code"] == "invalid_api_key"
        await communicator.disconnect()

    run(scenario())


# --- Losing Redis --------------------------------------------------------------------------------


def test_a_consumer_that_loses_redis_closes_cleanly(alice, transactional_db, caplog):
    from django.conf import settings

    redis_url = settings.REDIS_URL
    host_port, db = redis_url.removeprefix("redis://").rsplit("/", 1)
    host, port = host_port.split(":")
    proxy = TcpProxy((host, int(port)))
    layer = {
        "default": redis_channel_layer(
            f"redis://127.0.0.1:{proxy.port}/{db}", redis_timeout=1.0, prefix="dash-loss-test"
        )
    }

    async def scenario():
        communicator = await open_socket(FleetConsumer, "/ws/fleet/", alice)
        await next_of(communicator, "fleet")
        await asyncio.sleep(0.3)  # the consumer is now waiting on its channel in Redis
        proxy.cut()
        started = time.monotonic()
        while True:
            output = await communicator.receive_output(timeout=20)
            if output["type"] == "websocket.close":
                break
        assert output["code"] == CLOSE_REDIS_LOST
        return time.monotonic() - started

    try:
        with override_settings(CHANNEL_LAYERS=layer):
            took = run(scenario())
    finally:
        proxy.cut()
    assert took < 20
    assert "lost Redis; closing" in caplog.text
    assert "Traceback" not in caplog.text


def test_the_layer_config_knows_how_long_channels_redis_blocks_for_a_message():
    from channels_redis.core import RedisChannelLayer

    assert RedisChannelLayer.brpop_timeout == CHANNELS_REDIS_BRPOP_TIMEOUT


def test_a_quiet_socket_outlives_the_redis_timeout(alice, transactional_db):
    """A socket alone in its web process waits on its channel for seconds at a time; that
    wait is not Redis going silent, so the socket stays open and keeps answering."""
    from django.conf import settings

    layer = {
        "default": redis_channel_layer(
            settings.REDIS_URL, redis_timeout=0.3, prefix="dash-quiet-test"
        )
    }

    async def scenario():
        communicator = await open_socket(PlaygroundConsumer, "/ws/playground/", alice)
        assert await communicator.receive_nothing(timeout=1.5)  # five times the timeout
        await communicator.send_json_to({"type": "stop"})
        answer = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return answer

    with override_settings(CHANNEL_LAYERS=layer):
        assert run(scenario()) == {"type": "stopped", "request_id": None}


def test_usage_events_carry_no_data(alice, make_key, transactional_db):
    """What the ledger broadcasts says only "something changed": nobody's numbers travel."""
    from channels.layers import get_channel_layer

    from infra.events import OVERVIEW_GROUP

    key, _ = make_key(alice)
    layer = get_channel_layer()

    async def listen():
        await layer.group_add(OVERVIEW_GROUP, "spy")
        return await asyncio.wait_for(layer.receive("spy"), 5)

    async def scenario():
        from channels.db import database_sync_to_async

        listener = asyncio.ensure_future(listen())
        await asyncio.sleep(0.05)
        await database_sync_to_async(usage_write_batch)(
            [usage_for(key, "x1", created_at=time.time())]
        )
        return await listener

    assert run(scenario()) == {"type": "overview.changed"}


def test_logging_out_elsewhere_ends_the_socket(alice, transactional_db):
    from channels.auth import AuthMiddlewareStack
    from channels.layers import get_channel_layer
    from django.test import Client

    from infra.events import OVERVIEW_GROUP

    browser = Client()
    browser.force_login(alice)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()

    async def scenario():
        communicator = WebsocketCommunicator(
            AuthMiddlewareStack(OverviewConsumer.as_asgi()),
            "/ws/overview/",
            headers=[(b"cookie", cookie)],
        )
        connected, _ = await communicator.connect()
        assert connected
        await next_of(communicator, "overview")
        from channels.db import database_sync_to_async

        await database_sync_to_async(browser.logout)()  # in another tab, say
        await get_channel_layer().group_send(OVERVIEW_GROUP, {"type": "overview.changed"})
        error = await next_of(communicator, "error")
        assert error["code"] == "not_authenticated"
        closed = await communicator.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": CLOSE_NOT_AUTHENTICATED}

    run(scenario())


def test_an_event_broadcast_from_a_thread_running_an_event_loop_arrives():
    """Sync code may run on a thread that has a loop going (the browser tests' main thread
    does); its broadcasts still reach the group, over the real Redis layer."""
    from django.conf import settings

    from infra.events import broadcast

    layer = {"default": redis_channel_layer(settings.REDIS_URL, redis_timeout=2.0, prefix="bc")}

    async def scenario():
        from channels.layers import get_channel_layer

        channel_layer = get_channel_layer()
        channel = await channel_layer.new_channel()
        await channel_layer.group_add("broadcast-test", channel)
        broadcast("broadcast-test", {"type": "overview.changed"})  # sync, on this loop's thread
        try:
            return await asyncio.wait_for(channel_layer.receive(channel), timeout=5)
        finally:
            await channel_layer.group_discard("broadcast-test", channel)

    with override_settings(CHANNEL_LAYERS=layer):
        assert asyncio.run(scenario()) == {"type": "overview.changed"}
