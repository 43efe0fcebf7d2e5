"""Redis crashes (kill -9, coming back empty) or hangs (SIGSTOP) under the private fault stack.

Issue 5's promise is tested here: while Redis is unreachable the API answers 503 with a clear
error, neither hanging nor letting requests through unchecked; /health names Redis; service
resumes by itself once Redis is back, with no process restarted.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from dashboard.consumers import CLOSE_REDIS_LOST
from telemetry.ledger import ledger_flush
from telemetry.models import UsageRecord
from tests.reliability.conftest import SLOW, running_supervised, supervised_test
from tests.support.clients import ChatCall
from tests.support.faults import RedisServer, wait_until

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Hello GPU, how do you serve models?"}]
CHAT = {"model": "nebula-7b", "messages": HELLO, "max_tokens": 5}


def _timed(call: ChatCall) -> float:
    started = time.monotonic()
    call.go().result(timeout=30)
    return time.monotonic() - started


def _assert_redis_unavailable(call: ChatCall) -> None:
    call.assert_well_formed()
    assert call.status == 503, (call.status, call.json, call.events)
    error = call.json["error"]
    assert error["code"] == "redis_unavailable" and error["type"] == "server_error"
    assert "Redis" in error["message"]


@pytest.fixture
def serving(faults, alice, operator, make_key, ready_model):
    ready_model("nebula-7b")
    ready_model("slow-one", max_concurrent_seqs=4, **SLOW)
    _, secret = make_key(alice, rpm_limit=1000)
    _, admin = make_key(operator, is_admin=True)
    for url in faults.urls:  # warm every web process's caches and reply channel
        assert ChatCall(url, secret, CHAT).go().result().status == 200
    return secret, admin


def test_while_redis_is_down_the_api_answers_503_and_recovers_by_itself(faults, serving):
    secret, admin = serving
    pids = faults.pids()
    faults.redis.kill()

    outage = []
    for url in faults.urls:
        for body in (CHAT, {**CHAT, "stream": True}):
            call = ChatCall(url, secret, body)
            assert _timed(call) < 3  # fails fast, does not hang
            _assert_redis_unavailable(call)
            outage.append(call)
        models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})
        assert models.status_code == 503
        assert models.json()["error"]["code"] == "redis_unavailable"
    health = httpx.get(faults.url + "/health", timeout=10)
    assert health.status_code == 503
    body = health.json()
    assert "redis" in body["failing"] and not body["checks"]["redis"]["ok"]
    assert body["checks"]["database"]["ok"]
    # What does not need Redis keeps working.
    keys = httpx.get(faults.url + "/apikeys", headers={"Authorization": f"Bearer {admin}"})
    assert keys.status_code == 200

    faults.redis.start()  # empty: no persistence, as after a crash

    def serves_again() -> bool:
        return all(ChatCall(url, secret, CHAT).go().result().status == 200 for url in faults.urls)

    wait_until(serves_again, timeout=15, interval=0.5)
    stream = ChatCall(faults.url, secret, {**CHAT, "stream": True}).go().result()
    assert stream.status == 200 and stream.events[-1] == "[DONE]" and not stream.errors
    assert httpx.get(faults.url + "/health").status_code == 200
    assert faults.pids() == pids and all(p.alive() for p in faults.stack.webs + faults.workers)

    # The refusals during the outage were recorded all the same (straight to the database).
    ledger_flush()
    records = UsageRecord.objects.filter(request_id__in=[c.request_id for c in outage])
    assert sorted((r.status, r.error_code) for r in records) == [(503, "redis_unavailable")] * 4


def test_a_stream_under_way_when_redis_dies_ends_with_an_error(faults, serving):
    secret, _ = serving
    call = ChatCall(
        faults.url,
        secret,
        {
            "model": "slow-one",
            "messages": HELLO,
            "stream": True,
            "max_tokens": 3000,
            "ignore_eos": True,
        },
    ).go()
    wait_until(lambda: call.content_chunks >= 3, timeout=20)
    killed_at = time.monotonic()
    faults.redis.kill()
    call.result(timeout=20)
    call.assert_well_formed()
    assert call.errors and call.errors[0]["code"] in ("stream_broken", "redis_unavailable")
    assert call.finished_at - killed_at < 5

    faults.redis.start()
    ledger_flush()
    [record] = UsageRecord.objects.filter(request_id=call.request_id)
    assert record.status == 503 and record.finish_reason == "error"


def test_a_hung_redis_gets_503_within_the_timeout_not_a_hang(faults, serving):
    secret, _ = serving
    in_flight = ChatCall(
        faults.url,
        secret,
        {
            "model": "slow-one",
            "messages": HELLO,
            "stream": True,
            "max_tokens": 3000,
            "ignore_eos": True,
        },
    ).go()
    wait_until(lambda: in_flight.content_chunks >= 3, timeout=20)
    faults.redis.pause()
    try:
        hung_at = time.monotonic()
        for url in faults.urls:
            call = ChatCall(url, secret, CHAT)
            assert _timed(call) < 5  # NEBULA_REDIS_TIMEOUT is 1 s on this stack
            _assert_redis_unavailable(call)
        started = time.monotonic()
        health = httpx.get(faults.url + "/health", timeout=10)
        assert time.monotonic() - started < 3
        assert health.status_code == 503 and "redis" in health.json()["failing"]
        # The stream under way gives up too, once Redis has been silent as long as a worker
        # would be given (NEBULA_WORKER_TTL, 1.5 s here).
        in_flight.result(timeout=15)
        in_flight.assert_well_formed()
        assert in_flight.errors[0]["code"] == "redis_unavailable"
        assert in_flight.finished_at - hung_at < 8
    finally:
        faults.redis.resume()
    wait_until(lambda: ChatCall(faults.url, secret, CHAT).go().result().status == 200, timeout=10)
    ledger_flush()
    [record] = UsageRecord.objects.filter(request_id=in_flight.request_id)
    assert record.status == 503


def _playground(url: str, cookie: str) -> ClientConnection:
    """The chat playground's websocket on a web process, as the logged-in page opens it."""
    return connect(
        url.replace("http://", "ws://") + "/ws/playground/",
        additional_headers={"Cookie": cookie, "Origin": url},
        open_timeout=5,
    )


def _answers_stop(socket: ClientConnection) -> bool:
    socket.send(json.dumps({"type": "stop"}))
    return json.loads(socket.recv(timeout=5)) == {"type": "stopped", "request_id": None}


def test_a_dashboard_socket_outlives_quiet_spells_and_is_closed_for_a_reconnect_when_redis_dies(
    faults, alice
):
    from django.test import Client

    browser = Client()
    browser.force_login(alice)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"

    with _playground(faults.url, cookie) as socket:
        # Alone in its web process, the socket waits on its channel in Redis: quiet for longer
        # than NEBULA_REDIS_TIMEOUT (1 s here) is not Redis going silent.
        time.sleep(2.5)
        assert _answers_stop(socket)

        faults.redis.kill()
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        # A close frame the page understands as "reconnect later", not a dropped connection.
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_REDIS_LOST

    faults.redis.start()

    def reconnects() -> bool:
        errors = (OSError, InvalidStatus, ConnectionClosed, TimeoutError)
        with contextlib.suppress(*errors), _playground(faults.url, cookie) as socket:
            return _answers_stop(socket)
        return False

    wait_until(reconnects, timeout=15, interval=0.5)


def _burst(urls: list[str], secret: str, seconds: float) -> list[ChatCall]:
    """Requests one after another from four threads per web process, for `seconds`."""
    calls: list[ChatCall] = []
    lock = threading.Lock()

    def client(url: str) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            call = ChatCall(url, secret, CHAT, timeout=30)
            call.run()
            with lock:
                calls.append(call)

    threads = [threading.Thread(target=client, args=(url,)) for url in urls for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return calls


# The product's own timings (settings.py defaults), where the fault stack's are much shorter:
# a heartbeat a second, dead after five.
DEFAULT_TIMINGS = {
    "NEBULA_WORKER_TTL": "5",
    "NEBULA_HEARTBEAT_INTERVAL": "1",
    "NEBULA_QUEUE_TIMEOUT": "30",
    "NEBULA_REDIS_TIMEOUT": "2",
}


@pytest.fixture
def make_run(django_db_setup, django_db_blocker, tmp_path, transactional_db):
    """bin/run with the default timings, on a private Redis without persistence."""
    with (
        running_supervised(RedisServer(), django_db_blocker, tmp_path, DEFAULT_TIMINGS) as stack,
        supervised_test(stack),
    ):
        yield stack


def test_requests_right_after_redis_returns_wait_for_the_workers(
    make_run, alice, make_key, ready_model
):
    """Redis crashes and comes back empty: the heartbeat registry is gone until the workers
    beat again (up to a heartbeat interval later). Requests in that gap must wait for them (the
    workers are alive; only their heartbeats were lost), not get 503 `no_workers_available`,
    as docs/RELIABILITY.md says."""
    ready_model("nebula-7b")
    _, secret = make_key(alice, rpm_limit=100_000)
    assert ChatCall(make_run.run.url, secret, CHAT).go().result().status == 200
    make_run.redis.kill()
    time.sleep(0.5)
    make_run.redis.start()
    calls = _burst([make_run.run.url], secret, seconds=3)
    outcomes = Counter(
        (call.status, (call.json or {}).get("error", {}).get("code")) for call in calls
    )
    assert outcomes and set(outcomes) == {(200, None)}, outcomes
    ledger_flush()
    records = UsageRecord.objects.filter(request_id__in=[call.request_id for call in calls])
    assert records.count() == len(calls)
