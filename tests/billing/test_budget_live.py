"""Budgets on the live stack: daphne, Redis, Celery workers and the ledger, for real."""

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx

from billing.services import budget_set, price_set
from keys.access import SYSTEM
from telemetry.ledger import ledger_flush
from telemetry.models import UsageRecord

MAX_TOKENS = 20


def _ask(url: str, secret: str, index: int) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={
            "model": "nebula-7b",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": MAX_TOKENS,
            "ignore_eos": True,
        },
        timeout=60,
    )


def test_two_hundred_concurrent_requests_spend_at_most_a_budget_that_allows_ten(
    live, alice, make_key, ready_model
):
    ready_model("nebula-7b", replicas=4, max_concurrent_seqs=64)
    key, secret = make_key(alice, rpm_limit=10_000)
    price_set(
        actor=SYSTEM,
        model="nebula-7b",
        prompt_per_million="3.1234",
        completion_per_million="15.0007",
    )
    # What one request costs (and reserves: `ignore_eos` makes it use all of max_tokens).
    probe = _ask(live.url, secret, -1)
    assert probe.status_code == 200, probe.text
    prompt_tokens = probe.json()["usage"]["prompt_tokens"]
    one = (Decimal(prompt_tokens) * Decimal("3.1234") + MAX_TOKENS * Decimal("15.0007")) / 10**6
    ledger_flush()  # the budget's spend so far is rebuilt from the records in the database
    budget_set(actor=SYSTEM, scope="key", target=key, amount=str(11 * one), period="day")

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(lambda i: _ask(live.url, secret, i), range(200)))

    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(accepted) == 10  # the probe spent the eleventh
    assert len(refused) == 190
    error = refused[0].json()["error"]
    assert error["type"] == "insufficient_quota"
    assert error["code"] == "insufficient_quota"
    assert error["param"] is None
    assert f"key {key.name} ({key.prefix}…)" in error["message"]
    assert "is left, and this request could cost up to" in error["message"]
    ledger_flush()
    spent = sum(r.cost for r in UsageRecord.objects.filter(api_key=key, status=200))
    assert UsageRecord.objects.filter(api_key=key, status=200).count() == 11
    assert spent == 11 * one  # exactly the budget, to the last unit
