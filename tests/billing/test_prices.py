"""Prices: set by operators (audited), kept as a history, and every usage record priced once,
exactly, at the price in effect when it was made."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.prices import price_tables_forget
from billing.services import price_set
from keys.access import SYSTEM
from telemetry.events import usage_event
from telemetry.ledger import usage_write_batch
from telemetry.models import AuditEvent, UsageRecord

pytestmark = pytest.mark.django_db


def _post(client, path, body):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def _record(request_id, *, at, prompt=0, completion=0, model="nebula-7b", key=None):
    usage_write_batch(
        [
            usage_event(
                request_id=request_id,
                key_id=key.pk if key else None,
                key_prefix=key.prefix if key else "",
                model=model,
                endpoint="/v1/chat/completions",
                status=200,
                prompt_tokens=prompt,
                completion_tokens=completion,
                created_at=at.timestamp(),
            )
        ]
    )
    return UsageRecord.objects.get(request_id=request_id)


def test_an_operator_sets_a_price_and_the_audit_log_says_so(client, operator):
    client.force_login(operator)
    response = _post(
        client,
        "/prices",
        {"model": "nebula-7b", "prompt_per_million": "0.15", "completion_per_million": "0.6"},
    )
    assert response.status_code == 201, response.content
    assert response.json()["prompt_per_million"] == "0.15"
    assert response.json()["completion_per_million"] == "0.6"
    event = AuditEvent.objects.get(action="price.set")
    assert event.actor == operator
    assert event.after["model"] == "nebula-7b"
    listed = client.get("/models/nebula-7b/prices").json()["data"]
    assert [p["prompt_per_million"] for p in listed] == ["0.15"]


def test_a_user_sees_prices_but_cannot_set_them(client, alice):
    price_set(actor=SYSTEM, model="nebula-7b", prompt_per_million="1", completion_per_million="2")
    client.force_login(alice)
    assert client.get("/prices").json()["data"][0]["model"] == "nebula-7b"
    response = _post(
        client,
        "/models/nebula-7b/prices",
        {"prompt_per_million": "0", "completion_per_million": "0"},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_permissions"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt_per_million", 0.15),  # a float is not money
        ("prompt_per_million", "0.00001"),  # finer than a ten-billionth of a unit per token
        ("completion_per_million", "-1"),
        ("completion_per_million", "NaN"),
    ],
)
def test_a_price_that_is_not_exact_money_is_a_400_naming_the_field(client, operator, field, value):
    client.force_login(operator)
    body = {"model": "nebula-7b", "prompt_per_million": "1", "completion_per_million": "1"}
    body[field] = value
    response = _post(client, "/prices", body)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == field


def test_a_price_change_applies_from_its_time_on(make_key, alice):
    key, _ = make_key(alice)
    change = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    price_set(
        actor=SYSTEM,
        model="nebula-7b",
        prompt_per_million="1",
        completion_per_million="2",
        effective_from=change - timedelta(days=30),
    )
    price_set(
        actor=SYSTEM,
        model="nebula-7b",
        prompt_per_million="10",
        completion_per_million="20",
        effective_from=change,
    )
    price_tables_forget()
    before = _record("before", at=change - timedelta(microseconds=1), prompt=1000, key=key)
    at = _record("at", at=change, prompt=1000, key=key)
    earliest = _record("unpriced", at=change - timedelta(days=31), prompt=1000, key=key)
    assert before.cost == Decimal("0.001")
    assert at.cost == Decimal("0.01")
    assert earliest.cost == 0  # before the model had any price


def test_a_record_costs_exactly_its_tokens_at_the_price(make_key, alice):
    key, _ = make_key(alice)
    price_set(
        actor=SYSTEM,
        model="nebula-7b",
        prompt_per_million="0.0001",
        completion_per_million="12345.6789",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )
    price_tables_forget()
    record = _record(
        "exact", at=datetime(2026, 2, 1, tzinfo=UTC), prompt=3, completion=7_777_777, key=key
    )
    expected = (3 * Decimal("0.0001") + 7_777_777 * Decimal("12345.6789")) / 10**6
    assert record.cost == expected  # 96021.9373978056, to the last decimal
    assert str(record.cost) == "96021.9373978056"


def test_a_model_nobody_priced_is_free(make_key, alice):
    key, _ = make_key(alice)
    record = _record("free", at=datetime(2026, 2, 1, tzinfo=UTC), prompt=500, key=key)
    assert record.cost == 0


def test_metrics_show_spend_per_key_user_and_model_to_whom_may_see_it(client, make_key, alice, bob):
    price_set(
        actor=SYSTEM,
        model="nebula-7b",
        prompt_per_million="2",
        completion_per_million="4",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )
    price_tables_forget()
    key, _ = make_key(alice, name="alice's")
    other, _ = make_key(bob, name="bob's")
    now = datetime.now(UTC)
    _record("a1", at=now - timedelta(minutes=5), prompt=1000, completion=500, key=key)
    _record("b1", at=now - timedelta(minutes=5), prompt=1_000_000, key=other)
    client.force_login(alice)
    spend = client.get("/metrics?window=1h").json()["spend"]
    assert spend["total"] == "0.0040000000"
    assert spend["keys"] == [
        {
            "key": {"id": key.pk, "name": "alice's", "prefix": key.prefix},
            "cost": "0.0040000000",
            "requests": 1,
        }
    ]
    assert spend["users"] == [{"user": "alice", "cost": "0.0040000000", "requests": 1}]
    assert spend["models"] == [{"model": "nebula-7b", "cost": "0.0040000000", "requests": 1}]
    client.force_login(bob)
    assert client.get("/metrics?window=1h").json()["spend"]["total"] == "2.0000000000"
