"""Spend, prices and budgets on the dashboard, for an operator, a key's owner and a stranger."""

from datetime import UTC, datetime

import pytest

from billing.budgets import spend_key
from billing.models import Budget
from billing.services import budget_set, price_set
from billing.units import to_units
from infra.redis_client import get_redis
from keys.access import SYSTEM
from models_registry.models import ModelPrice

pytestmark = pytest.mark.django_db


def test_an_operator_sets_a_price_from_the_models_page(client, operator):
    client.force_login(operator)
    page = client.get("/dashboard/models/").content.decode()
    assert "data-prices" in page and "every request is free" in page
    response = client.post(
        "/dashboard/billing/prices/",
        {
            "model": "nebula-7b",
            "prompt_per_million": "0.25",
            "completion_per_million": "1",
            "next": "/dashboard/models/",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/dashboard/models/"
    assert ModelPrice.objects.get().model_name == "nebula-7b"
    page = client.get("/dashboard/models/").content.decode()
    assert 'data-price="nebula-7b"' in page and "0.25" in page


def test_a_price_with_too_many_decimals_is_shown_next_to_its_field(client, operator):
    client.force_login(operator)
    response = client.post(
        "/dashboard/billing/prices/",
        {"model": "nebula-7b", "prompt_per_million": "0.123456", "completion_per_million": "1"},
    )
    assert response.status_code == 400
    assert "at most 4 decimals" in response.content.decode()


def test_a_user_sees_prices_but_may_not_set_them(client, alice):
    price_set(actor=SYSTEM, model="nebula-7b", prompt_per_million="1", completion_per_million="1")
    client.force_login(alice)
    page = client.get("/dashboard/billing/").content.decode()
    assert 'data-price="nebula-7b"' in page
    assert "Set price" not in page
    refused = client.post(
        "/dashboard/billing/prices/",
        {"model": "nebula-7b", "prompt_per_million": "0", "completion_per_million": "0"},
    )
    assert refused.status_code == 403
    assert ModelPrice.objects.count() == 1


def test_an_owner_caps_their_key_from_its_page_and_a_stranger_cannot(client, alice, bob, make_key):
    key, _ = make_key(alice, name="laptop")
    client.force_login(alice)
    assert "No budget of its own" in client.get(f"/dashboard/keys/{key.pk}/").content.decode()
    response = client.post(f"/dashboard/keys/{key.pk}/budget/", {"amount": "20", "period": "day"})
    assert response.status_code == 302
    budget = Budget.objects.get(api_key=key)
    assert budget.amount == 20 and budget.period == "day" and not budget.operator_set
    page = client.get(f"/dashboard/keys/{key.pk}/").content.decode()
    assert f'data-budget="{budget.pk}"' in page and "0 of 20 per day" in page
    client.force_login(bob)
    assert client.post(f"/dashboard/keys/{key.pk}/budget/", {"amount": ""}).status_code == 404
    assert Budget.objects.filter(api_key=key).exists()
    client.force_login(alice)
    client.post(f"/dashboard/keys/{key.pk}/budget/", {"amount": "", "period": "day"})
    assert not Budget.objects.filter(api_key=key).exists()


def test_a_budget_past_its_soft_limit_is_flagged_on_the_overview(client, alice, bob, make_key):
    key, _ = make_key(alice)
    budget = budget_set(actor=SYSTEM, scope="key", target=key, amount="10", period="month")
    now = datetime.now(UTC)
    get_redis().set(spend_key(budget.pk, "month", now), to_units(budget.amount) * 79 // 100)
    client.force_login(alice)
    assert "data-budget-alert" not in client.get("/dashboard/").content.decode()
    get_redis().set(spend_key(budget.pk, "month", now), to_units(budget.amount) * 81 // 100)
    page = client.get("/dashboard/").content.decode()
    assert f'data-budget-alert="{budget.pk}"' in page and "8.1 of 10" in page
    client.force_login(bob)  # not his key: nothing to see
    assert "data-budget-alert" not in client.get("/dashboard/").content.decode()


def test_the_spend_page_shows_what_the_viewer_may_see(client, operator, alice, bob, make_key):
    make_key(alice, name="alice's key")
    budget_set(actor=SYSTEM, scope="user", target=bob, amount="5")
    client.force_login(alice)
    page = client.get("/dashboard/billing/?window=7d").content.decode()
    assert "No budget applies to your keys" in page
    client.force_login(operator)
    page = client.get("/dashboard/billing/").content.decode()
    assert "user bob" in page and "Set budget" in page
    response = client.post(
        "/dashboard/billing/budgets/",
        {"scope": "user", "target": "alice", "amount": "3", "period": "total"},
    )
    assert response.status_code == 302
    assert Budget.objects.get(user=alice).period == "total"
