"""Soak: a bounded mixed load on the default layout, `bin/run` (supervisord running the
Procfile's web process and worker) on a private Redis, while the worker is killed (supervisord
starts it again) and Redis crashes and restarts once. Every request must get a well-formed
answer, leave exactly one usage record, and the processes' memory must stay flat.

The load runs NEBULA_SOAK_SECONDS (20 in CI). The long form, a few minutes:

    NEBULA_SOAK_SECONDS=300 .venv/bin/pytest tests/reliability/test_soak_live.py

Redis runs with an append-only file fsynced on every write, as production Redis should: the
usage ledger is a Redis stream, so a Redis that loses its data on a crash loses the records
not yet moved to the database (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from telemetry.ledger import ledger_flush
from telemetry.models import RefusalTally, UsageRecord
from tests.reliability.conftest import (
    FAULT_ENV,
    SLOW,
    Supervised,
    running_supervised,
    supervised_test,
)
from tests.support.clients import ChatCall
from tests.support.faults import RedisServer, rss_kb, wait_until

SECONDS = float(os.environ.get("NEBULA_SOAK_SECONDS", "20"))
pytestmark = [pytest.mark.integration, pytest.mark.timeout(SECONDS * 2 + 180)]
CLIENTS = 8
HELLO = [{"role": "user", "content": "Tell me about GPUs."}]
# Memory a process may gain between the first third of the run and its end. Warm caches and
# allocator slack fit in it; a leak of a few KiB per request does not, over the long form.
RSS_GROWTH_KB = 40 * 1024


@pytest.fixture(scope="module")
def supervised_stack(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any
) -> Iterator[Supervised]:
    with running_supervised(
        RedisServer(persistent=True),
        django_db_blocker,
        tmp_path_factory.mktemp("soak"),
        {**FAULT_ENV, "NEBULA_WORKER_CONCURRENCY": "16"},
    ) as stack:
        yield stack


@pytest.fixture
def supervised(supervised_stack: Supervised, transactional_db: Any) -> Iterator[Supervised]:
    with supervised_test(supervised_stack):
        yield supervised_stack


@dataclass
class Tally:
    calls: list[ChatCall] = field(default_factory=list)
    # (request id, status) of clients that hung up after the first lines of a stream
    disconnected: list[tuple[str, int]] = field(default_factory=list)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _one_request(url: str, secret: str, rng: random.Random, tally: Tally) -> None:
    slow = rng.random() < 0.3
    body: dict[str, Any] = {
        "model": "slow-one" if slow else "nebula-7b",
        "messages": HELLO,
        "max_tokens": rng.choice([5, 20, 60]) if not slow else rng.choice([20, 100]),
        "stream": rng.random() < 0.5,
        "ignore_eos": True,
    }
    with tally.lock:
        tally.sent += 1
    if body["stream"] and slow and rng.random() < 0.3:
        # A client that reads the start of a stream and hangs up.
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        ) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines, None)
            with tally.lock:
                tally.disconnected.append((response.headers["x-request-id"], response.status_code))
        return
    call = ChatCall(url, secret, body, timeout=60)
    call.run()  # in this thread
    with tally.lock:
        tally.calls.append(call)


def _client(urls: list[str], secrets: list[str], seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        _one_request(rng.choice(urls), rng.choice(secrets), rng, tally)
        time.sleep(rng.random() * 0.05)


def _rss(stack: Supervised) -> dict[int, int]:
    pids = [stack.run.pid("web"), stack.run.pid("worker")]
    return {pid: rss_kb(pid) for pid in pids if pid}


def test_mixed_load_through_a_worker_kill_and_a_redis_crash(
    supervised, alice, bob, make_key, ready_model
):
    ready_model("nebula-7b", replicas=2, max_concurrent_seqs=16)
    ready_model("slow-one", max_concurrent_seqs=8, **SLOW)
    keys = [
        make_key(alice, name="busy", rpm_limit=100_000),
        make_key(bob, name="busy", rpm_limit=100_000),
        # Goes over its limit even when a busy machine makes the load light (90 requests in
        # 20 s, a quarter of them on this key, in one run of the suite).
        make_key(alice, name="small", rpm_limit=5),
        make_key(bob, name="tokens", rpm_limit=100_000, tpm_limit=3_000),  # and this one too
    ]
    secrets = [secret for _, secret in keys]
    tally = Tally()
    started = time.monotonic()
    until = started + SECONDS
    threads = [
        threading.Thread(target=_client, args=([supervised.run.url], secrets, seed, until, tally))
        for seed in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()

    time.sleep(SECONDS / 3)
    baseline = _rss(supervised)
    victim = supervised.run.pid("worker")
    os.kill(victim, signal.SIGKILL)  # supervisord starts it again
    time.sleep(SECONDS / 3)
    supervised.redis.kill()
    time.sleep(1)
    supervised.redis.start()

    for thread in threads:
        thread.join(SECONDS + 90)
        assert not thread.is_alive(), "a client got no answer"
    final = _rss(supervised)
    assert supervised.run.pid("worker") not in (0, victim), "the worker was not restarted"

    # Every answer is well formed, and the load did what it should.
    statuses = Counter()
    for call in tally.calls:
        call.assert_well_formed()
        statuses[call.status] += 1
    assert statuses[200] > 0 and statuses[429] > 0, statuses
    assert tally.sent == len(tally.calls) + len(tally.disconnected)

    # Exactly one record per request, and what it says matches what the client saw.
    wait_until(lambda: supervised.live_workers() == 1, timeout=30)
    ledger_flush(timeout=30)
    records = {
        r.request_id: r for r in UsageRecord.objects.filter(api_key__in=[k for k, _ in keys])
    }
    # Refusals over a key's limit are counted per minute, not recorded (telemetry.refusals);
    # every other request has its record.
    refused = [call for call in tally.calls if call.status == 429]
    refused_ids = {call.request_id for call in refused}
    refused_ids |= {rid for rid, status in tally.disconnected if status == 429}
    seen = {call.request_id: call for call in tally.calls} | dict(tally.disconnected)
    expected = set(seen) - refused_ids
    missing = {rid: getattr(seen[rid], "__dict__", seen[rid]) for rid in expected - set(records)}
    assert not missing, missing
    assert set(records) == expected, (len(records), len(expected))
    counted = RefusalTally.objects.filter(api_key__in=[k for k, _ in keys], status=429)
    # Redis crashed once: tallies not yet moved to the database went with it.
    assert 0 < sum(t.count for t in counted) <= len(refused_ids)
    for call in tally.calls:
        if call.status == 429:
            continue
        record = records[call.request_id]
        if call.events:
            finished_cleanly = not call.errors
            assert (record.status == 200) == finished_cleanly, (record.status, call.errors)
        else:
            assert record.status == call.status, (record.status, call.status, call.json)
    for request_id, status in tally.disconnected:
        if status == 429:
            continue
        # A refusal is a refusal; a stream cut short is cancelled, unless it was done already.
        assert records[request_id].status in ((200, 499) if status == 200 else (status,))

    # Memory stays flat in the processes that lived through it all.
    for pid, kb in final.items():
        if pid in baseline:
            assert kb - baseline[pid] < RSS_GROWTH_KB, (pid, baseline[pid], kb)
