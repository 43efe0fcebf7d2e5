"""The admission script's rate limiting, against the real test Redis."""

import asyncio
import itertools
import time

import pytest

from inference.admission import admit
from infra.epoch import EPOCH_KEY
from infra.redis_client import get_async_redis
from keys.ratelimit import format_duration, rpm_key, tpm_key, tpm_settle

_ids = itertools.count(10_000_000 + int(time.time()) % 1_000_000 * 10)


@pytest.fixture
def key_id(redis_client):
    key = next(_ids)
    redis_client.delete(rpm_key(key), tpm_key(key))
    redis_client.set(EPOCH_KEY, "e1")
    return key


def _admit_many(count, **options):
    async def run():
        client = get_async_redis()
        return await asyncio.gather(
            *(admit(client, expected_epoch="e1", **options) for _ in range(count))
        )

    return asyncio.run(run())


def test_exactly_the_limit_passes_when_fifty_arrive_at_once(key_id):
    results = _admit_many(50, key_id=key_id, rpm_limit=10)
    assert sum(r.status == "ok" for r in results) == 10
    assert sum(r.status == "limited" for r in results) == 40


def test_headers_count_down_and_tell_when_to_retry(key_id):
    results = [_admit_many(1, key_id=key_id, rpm_limit=10)[0] for _ in range(11)]
    now = time.time()
    first, tenth, eleventh = results[0], results[9], results[10]
    assert first.headers()["X-RateLimit-Limit"] == "10"
    assert [int(r.headers()["X-RateLimit-Remaining"]) for r in results[:10]] == list(
        range(9, -1, -1)
    )
    assert tenth.status == "ok"
    limited = eleventh.headers()
    assert eleventh.status == "limited"
    assert limited["X-RateLimit-Remaining"] == "0"
    # One request is earned back every 6 s; the whole allowance within a minute.
    assert 5 <= int(limited["Retry-After"]) <= 6
    assert now + 55 <= int(limited["X-RateLimit-Reset"]) <= now + 62
    assert limited["x-ratelimit-limit-requests"] == "10"
    assert limited["x-ratelimit-reset-requests"].endswith("s")


def test_a_request_passes_again_once_the_retry_time_has_passed(key_id, redis_client):
    _admit_many(10, key_id=key_id, rpm_limit=600)  # 600/min: one back every 100 ms
    assert _admit_many(1, key_id=key_id, rpm_limit=600)[0].status == "ok"
    _admit_many(600, key_id=key_id, rpm_limit=600)
    # The retry time of a refusal after the burst is what holds: on a slow machine the burst
    # outlasts 100 ms, and a request after an early refusal may take the place it promised.
    limited = _admit_many(1, key_id=key_id, rpm_limit=600)[0]
    while limited.status != "limited":
        limited = _admit_many(1, key_id=key_id, rpm_limit=600)[0]
    time.sleep(int(limited.retry_after_ms) / 1000 + 0.05)
    assert _admit_many(1, key_id=key_id, rpm_limit=600)[0].status == "ok"


def test_token_limit_and_request_limit_are_charged_together_or_not_at_all(key_id, redis_client):
    ok = _admit_many(
        1,
        key_id=key_id,
        rpm_limit=10,
        tpm_limit=100,
        token_cost=60,
        message=b"x",
        queue=f"test-queue-{key_id}",
    )[0]
    assert ok.status == "ok"
    assert ok.tpm_remaining == 40
    assert ok.headers()["x-ratelimit-remaining-tokens"] == "40"
    denied = _admit_many(
        1,
        key_id=key_id,
        rpm_limit=10,
        tpm_limit=100,
        token_cost=60,
        message=b"y",
        queue=f"test-queue-{key_id}",
    )[0]
    assert denied.status == "limited"
    # The refused request did not use up a request, and nothing was enqueued for it.
    assert denied.rpm_remaining == 9
    assert redis_client.lrange(f"test-queue-{key_id}", 0, -1) == [b"x"]


def test_unused_reserved_tokens_are_given_back(key_id, redis_client):
    _admit_many(
        1,
        key_id=key_id,
        rpm_limit=10,
        tpm_limit=100,
        token_cost=90,
        message=b"x",
        queue=f"test-queue-{key_id}",
    )
    tpm_settle(redis_client, key_id=key_id, tpm_limit=100, reserved=90, used=20)
    again = _admit_many(
        1,
        key_id=key_id,
        rpm_limit=10,
        tpm_limit=100,
        token_cost=70,
        message=b"x",
        queue=f"test-queue-{key_id}",
    )[0]
    assert again.status == "ok"


def test_a_stale_epoch_is_refused_without_charging(key_id):
    async def run():
        return await admit(get_async_redis(), key_id=key_id, expected_epoch="old", rpm_limit=1)

    stale = asyncio.run(run())
    assert (stale.status, stale.epoch) == ("stale", "e1")
    assert _admit_many(1, key_id=key_id, rpm_limit=1)[0].status == "ok"


def test_no_live_worker_refuses_without_charging_or_enqueueing(key_id, redis_client):
    queue = f"test-queue-{key_id}"
    result = _admit_many(
        1,
        key_id=key_id,
        rpm_limit=1,
        worker_ttl_ms=2000,
        workers_key=f"no-workers-{key_id}",
        queue=queue,
        message=b"job",
    )[0]
    assert result.status == "no_workers"
    assert redis_client.llen(queue) == 0
    assert _admit_many(1, key_id=key_id, rpm_limit=1)[0].status == "ok"


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (120, "120ms"), (6000, "6s"), (1500, "1.5s"), (60000, "1m0s"), (90500, "1m30.5s")],
)
def test_durations_use_openais_format(ms, text):
    assert format_duration(ms) == text
