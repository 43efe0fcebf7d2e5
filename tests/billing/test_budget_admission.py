"""The budget fragment of the admission script and its settlement, against the real test Redis."""

import asyncio
import itertools
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from billing.budgets import (
    BudgetCharge,
    BudgetLimit,
    budget_refusal,
    budget_settle,
    budgets_warm,
    spend_key,
)
from billing.lua import hold_key
from billing.prices import Price, price_tables_forget
from billing.services import budget_set, price_set
from billing.units import to_units
from inference.admission import admit
from infra.epoch import EPOCH_KEY
from infra.redis_client import get_async_redis
from keys.access import SYSTEM
from keys.ratelimit import rpm_key
from telemetry.events import usage_event
from telemetry.ledger import usage_write_batch

_ids = itertools.count(20_000_000 + int(time.time()) % 1_000_000 * 10)
PRICE = Price(Decimal("1"), Decimal("3"))  # per million: 10,000 and 30,000 units a token


def _charge(request_id, budgets, *, prompt=100, completion=100):
    now = datetime.now(UTC)
    return BudgetCharge(
        request_id=request_id,
        budgets=budgets,
        spend_keys=tuple(spend_key(b.id, b.period, now) for b in budgets),
        reserve_units=prompt * PRICE.prompt_units + completion * PRICE.completion_units,
        price=PRICE,
        at=now,
    )


def _budget(amount_units, *, period="day"):
    return BudgetLimit(
        id=next(_ids), scope="key", label="key test", amount_units=amount_units, period=period
    )


async def _admit(client, key_id, charge):
    return await admit(
        client,
        key_id=key_id,
        expected_epoch="e1",
        rpm_limit=100_000,
        budget_keys=charge.script_keys(),
        budget_args=charge.script_args(),
    )


async def _admit_now(key_id, charge):
    return await _admit(get_async_redis(), key_id, charge)


@pytest.fixture
def key_id(redis_client):
    key = next(_ids)
    redis_client.delete(rpm_key(key))
    redis_client.set(EPOCH_KEY, "e1")
    return key


def test_two_hundred_threads_at_once_get_exactly_what_the_budget_allows(key_id, redis_client):
    one = 100 * PRICE.prompt_units + 100 * PRICE.completion_units
    budget = _budget(10 * one + one - 1)  # ten fit, an eleventh does not (by one unit)
    redis_client.set(spend_key(budget.id, budget.period, datetime.now(UTC)), 0)
    barrier = threading.Barrier(200)
    results: list[str] = []

    def one_request(index: int) -> None:
        async def run() -> str:
            client = aioredis.Redis(connection_pool=None, **_connection(redis_client))
            try:
                charge = _charge(f"req-{key_id}-{index}", (budget,))
                barrier.wait()
                return (await _admit(client, key_id, charge)).status
            finally:
                await client.aclose()

        results.append(asyncio.run(run()))

    threads = [threading.Thread(target=one_request, args=(i,)) for i in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("ok") == 10
    assert results.count("over_budget") == 190
    spent = int(redis_client.get(spend_key(budget.id, budget.period, datetime.now(UTC))))
    assert spent == 10 * one


def _connection(sync_client):
    kwargs = sync_client.connection_pool.connection_kwargs
    return {key: kwargs[key] for key in ("host", "port", "db", "password") if key in kwargs}


def test_a_finished_request_gives_back_what_it_did_not_use_once(key_id, redis_client):
    budget = _budget(10**12)
    key = spend_key(budget.id, budget.period, datetime.now(UTC))
    redis_client.set(key, 5)
    charge = _charge(f"settle-{key_id}", (budget,), prompt=100, completion=100)
    assert asyncio.run(_admit_now(key_id, charge)).status == "ok"
    assert int(redis_client.get(key)) == 5 + charge.reserve_units
    assert redis_client.exists(hold_key(charge.request_id))
    for _ in range(2):  # whoever settles second finds nothing left to settle
        budget_settle(redis_client, request_id=charge.request_id, prompt_tokens=100, completion=7)
    assert int(redis_client.get(key)) == 5 + 100 * PRICE.prompt_units + 7 * PRICE.completion_units
    assert not redis_client.exists(hold_key(charge.request_id))


def test_a_spend_key_nobody_knows_is_rebuilt_from_the_database_first(
    key_id, redis_client, transactional_db, alice, make_key
):
    api_key, _ = make_key(alice)
    model = budget_set(actor=SYSTEM, scope="key", target=api_key, amount="1", period="month")
    price_set(actor=SYSTEM, model="m", prompt_per_million="1", completion_per_million="1")
    price_tables_forget()
    usage_write_batch(
        [
            usage_event(
                request_id=f"old-{key_id}",
                key_id=api_key.pk,
                key_prefix=api_key.prefix,
                model="m",
                endpoint="/v1/chat/completions",
                status=200,
                prompt_tokens=250_000,  # 0.25 spent this month already
            )
        ]
    )
    budget = BudgetLimit(
        id=model.pk, scope="key", label="key", amount_units=to_units(Decimal(1)), period="month"
    )
    charge = _charge(f"cold-{key_id}", (budget,))
    redis_client.set(EPOCH_KEY, "e1")  # setting the budget and price moved it

    async def run():
        client = get_async_redis()
        first = await _admit(client, key_id, charge)
        assert first.status == "budget_cold" and first.budgets_cold == (1,)
        await budgets_warm(client, charge, list(first.budgets_cold))
        return await _admit(client, key_id, charge)

    assert asyncio.run(run()).status == "ok"
    key = charge.spend_keys[0]
    assert int(redis_client.get(key)) == to_units(Decimal("0.25")) + charge.reserve_units
    assert 0 < redis_client.pttl(key) <= 32 * 86_400_000  # gone when the month ends


def test_over_budget_is_openais_insufficient_quota_429(key_id, redis_client):
    budget = _budget(to_units(Decimal("0.001")), period="total")
    redis_client.set(spend_key(budget.id, "total", datetime.now(UTC)), to_units(Decimal("0.0009")))
    charge = _charge(f"over-{key_id}", (budget,))
    admission = asyncio.run(_admit_now(key_id, charge))
    assert admission.status == "over_budget"
    error = budget_refusal(charge, index=admission.budget_index, spent_units=admission.budget_spent)
    assert error.status == 429
    assert error.type == "insufficient_quota" and error.code == "insufficient_quota"
    assert "0.001 in total" in error.message
    assert "0.0009 is spent" in error.message
    assert "0.0001 is left" in error.message
    assert "could cost up to 0.0004" in error.message
    # The refusal counted against the request limit, and reserved nothing.
    assert redis_client.exists(rpm_key(key_id))
    assert not redis_client.exists(hold_key(charge.request_id))
