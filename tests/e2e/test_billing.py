"""Spend and budgets in a real browser: an operator prices a model and caps a team; a member of
the team sees the budget filling up, and its alert, on phone and laptop."""

import httpx
import pytest
from playwright.sync_api import expect

from billing.models import Budget
from keys.access import SYSTEM
from keys.services import team_create, team_member_add
from models_registry.models import ModelPrice
from tests.e2e.conftest import LAPTOP, PHONE, flush_ledger, screenshot

pytestmark = pytest.mark.browser

OPERATOR_PASSWORD = "operator-pass-123"
CAROL_PASSWORD = "carol-pass-123"


@pytest.fixture
def carol(django_user_model):
    return django_user_model.objects.create_user("carol", password=CAROL_PASSWORD)


def test_an_operator_prices_a_model_and_a_team_member_watches_its_budget(
    open_page, live, operator, alice, carol, make_key, ready_model
):
    ready_model("nebula-7b")
    team = team_create(actor=SYSTEM, name="research", admin=alice)
    team_member_add(actor=SYSTEM, team=team, user="carol")
    key, secret = make_key(alice, name="team key", team=team, rpm_limit=1000)

    page = open_page(operator, OPERATOR_PASSWORD)
    page.goto("/dashboard/billing/")
    page.get_by_label("Model", exact=True).fill("nebula-7b")
    page.get_by_label("Prompt, per million tokens").fill("2000")
    page.get_by_label("Completion, per million tokens").fill("4000")
    page.get_by_role("button", name="Set price").click()
    expect(page.get_by_role("status").first).to_contain_text("nebula-7b costs 2000")
    assert ModelPrice.objects.get().prompt_per_million == 2000
    page.get_by_label("Applies to").select_option("team")
    page.get_by_label("Key id, username or team id").fill(str(team.pk))
    page.get_by_label("Amount").fill("1")
    page.get_by_role("button", name="Set budget").click()
    expect(page.get_by_role("status").first).to_contain_text("Budget set: team research")
    assert Budget.objects.get(team=team).amount == 1

    # Spend 80%+ of it: each request costs (prompt × 2000 + 100 × 4000) / 10⁶.
    for _ in range(2):
        response = httpx.post(
            live.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={
                "model": "nebula-7b",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 100,
                "ignore_eos": True,
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
    flush_ledger()

    for viewport in (LAPTOP, PHONE):
        member = open_page(carol, CAROL_PASSWORD, viewport=viewport)
        expect(member.locator("[data-budget-alert]")).to_contain_text("team research")
        member.goto("/dashboard/billing/")
        expect(member.locator("[data-spend-team]")).to_contain_text("research")
        expect(member.locator("[data-budget-row]")).to_contain_text("of 1 per month")
        assert member.get_by_role("button", name="Set budget").count() == 0
        screenshot(member, "billing")
        member.goto(f"/dashboard/keys/{key.pk}/")
        expect(member.locator("[data-key-budget]")).to_contain_text("team research")
        screenshot(member, "key-budget")
