"""Whoever records a job settles its budget reservation, once: the web side for jobs that never
ran or whose worker died (here, against real Redis), the worker for jobs that ran (live)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest

from billing.budgets import spend_key
from billing.lua import hold_key
from billing.services import budget_set, price_set
from billing.units import to_units
from inference import completion as completion_module
from inference.completion import MAX_ATTEMPTS, Completion, WorkerFailed
from inference.gateway import RequestContext
from inference.jobs import job_key
from infra.redis_client import get_redis
from keys.access import SYSTEM
from telemetry.ledger import ledger_flush
from telemetry.models import UsageRecord
from tests.support.jobs import make_job

PROMPT_UNITS, COMPLETION_UNITS = 10_000, 30_000  # 1 and 3 per million tokens


class _Hub:
    def close(self, request_id: str) -> None:
        pass


def _reserved(redis_client, job, *, spent=100):
    """A spend key with `spent` plus the job's reservation, and the job's hold, as admission
    leaves them."""
    key = f"nebula:budget:test:{job['id']}"
    reserve = job["prompt_tokens"] * PROMPT_UNITS + job["max_tokens"] * COMPLETION_UNITS
    redis_client.set(key, spent + reserve)
    redis_client.hset(
        hold_key(job["id"]),
        mapping={"r": reserve, "pp": PROMPT_UNITS, "cp": COMPLETION_UNITS, "keys": key},
    )
    return key


def _completion(job):
    ctx = RequestContext(request_id=job["id"], endpoint="/v1/chat/completions")
    admitted = SimpleNamespace(admission=SimpleNamespace(headers=dict))
    return Completion(ctx, _Hub(), asyncio.Queue(), job, admitted, caller=None)


def test_a_job_cancelled_before_it_ran_gives_back_its_whole_reservation(redis_client):
    job = make_job()
    key = _reserved(redis_client, job)
    redis_client.hset(job_key(job["id"]), mapping={"state": "waiting"})
    asyncio.run(_completion(job).cancel())
    assert int(redis_client.get(key)) == 100
    assert not redis_client.exists(hold_key(job["id"]))


def test_a_job_lost_with_its_worker_costs_what_it_had_made(redis_client):
    job = make_job()
    key = _reserved(redis_client, job)
    redis_client.hset(
        job_key(job["id"]), mapping={"state": "running", "worker": "w1/run1", "tokens": 5}
    )
    completion = _completion(job)
    completion.attempts = MAX_ATTEMPTS  # no more resends: the web side records it

    async def lose() -> None:
        with pytest.raises(WorkerFailed):
            await completion._worker_lost("w1/run1")

    asyncio.run(lose())
    assert int(redis_client.get(key)) == 100 + 10 * PROMPT_UNITS + 5 * COMPLETION_UNITS


def test_a_resent_job_keeps_its_reservation(redis_client, monkeypatch):
    monkeypatch.setattr(completion_module, "QUEUE", f"nebula:test-queue:{job_key('x')}")
    job = make_job()
    key = _reserved(redis_client, job)
    before = int(redis_client.get(key))
    redis_client.hset(job_key(job["id"]), mapping={"state": "running", "worker": "w1/run1"})
    asyncio.run(_completion(job)._worker_lost("w1/run1"))
    assert int(redis_client.get(key)) == before
    assert redis_client.exists(hold_key(job["id"]))


def test_jobs_that_ran_leave_exactly_their_recorded_cost_in_the_budget(
    live, alice, make_key, ready_model
):
    ready_model("nebula-7b", replicas=2, max_concurrent_seqs=16)
    key, secret = make_key(alice, rpm_limit=10_000)
    price_set(actor=SYSTEM, model="nebula-7b", prompt_per_million="1", completion_per_million="3")
    budget = budget_set(actor=SYSTEM, scope="key", target=key, amount="1000", period="month")

    def ask(index: int) -> httpx.Response:
        return httpx.post(
            live.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={
                "model": "nebula-7b",
                "messages": [{"role": "user", "content": f"say something short {index}"}],
                "max_tokens": 400,  # reserved; most replies stop well before
                "stream": index % 2 == 0,
            },
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(r.status_code == 200 for r in pool.map(ask, range(8)))
    ledger_flush()
    records = UsageRecord.objects.filter(api_key=key)
    assert records.count() == 8
    assert any(r.completion_tokens < 400 for r in records)
    recorded = sum((r.cost for r in records), Decimal(0))
    spent = int(get_redis().get(spend_key(budget.pk, "month", datetime.now(UTC))))
    assert spent == to_units(recorded)
