"""Operators set prices and budgets in Django's admin, through the same services (and audit)."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from billing.models import Budget
from models_registry.models import ModelPrice
from telemetry.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="root-pass-123")
    client.force_login(root)
    return client


def _add_price(admin_client, **overrides):
    body = {
        "model_name": "nebula-7b",
        "prompt_per_million": "0.5",
        "completion_per_million": "1.5",
        "effective_from_0": "2026-01-01",
        "effective_from_1": "00:00:00",
        **overrides,
    }
    return admin_client.post("/admin/models_registry/modelprice/add/", body)


def test_a_price_added_in_the_admin_is_audited_and_cannot_be_edited(admin_client):
    response = _add_price(admin_client)
    assert response.status_code == 302, response.content.decode()[:2000]
    price = ModelPrice.objects.get()
    assert str(price.prompt_per_million.normalize()) == "0.5"
    assert AuditEvent.objects.filter(action="price.set", actor__username="root").exists()
    page = admin_client.get(f"/admin/models_registry/modelprice/{price.pk}/change/")
    assert b'name="prompt_per_million"' not in page.content  # read only: add a new price


def test_a_price_finer_than_the_ledger_counts_is_refused_on_the_form(admin_client):
    response = _add_price(admin_client, prompt_per_million="0.00001")
    assert response.status_code == 200
    assert b"at most 4 decimals" in response.content
    assert not ModelPrice.objects.exists()


def test_a_budget_added_in_the_admin_is_audited(admin_client, alice, make_key):
    key, _ = make_key(alice)
    response = admin_client.post(
        "/admin/billing/budget/add/",
        {"scope": "key", "api_key": key.pk, "amount": "12.5", "period": "day"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    budget = Budget.objects.get()
    assert budget.api_key == key and budget.operator_set
    assert AuditEvent.objects.filter(action="budget.set", actor__username="root").exists()
    listing = admin_client.get("/admin/billing/budget/").content.decode()
    assert "0 (0%)" in listing


def test_management_commands_set_prices_and_budgets_through_the_services(alice, make_key):
    out = StringIO()
    call_command("setprice", "nebula-7b", "0.15", "0.6", stdout=out)
    assert "nebula-7b: 0.15 per million prompt tokens" in out.getvalue()
    key, _ = make_key(alice)
    call_command("setbudget", "25", "--key", str(key.pk), "--period", "day", stdout=out)
    assert Budget.objects.get(api_key=key).amount == 25
    assert AuditEvent.objects.filter(action="budget.set", actor_label="system").exists()
    with pytest.raises(CommandError, match="at most 4 decimals"):
        call_command("setprice", "nebula-7b", "0.123456", "1")
