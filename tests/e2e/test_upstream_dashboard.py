"""Connecting an engine from the dashboard, in a real browser against the live stack: the
deployment goes ready once the engine answers, and its replica's health changes on screen."""

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import PHONE, screenshot

pytestmark = pytest.mark.browser

OPERATOR_PASSWORD = "operator-pass-123"
SECRET = "sk-e2e-engine-key-5150"


def test_an_operator_connects_an_engine_and_watches_its_health(open_page, operator, engine):
    engine.control(require_key=SECRET)
    page = open_page(operator, OPERATOR_PASSWORD)
    page.goto("/dashboard/models/")
    page.get_by_text("Connect an engine").click()
    page.get_by_label("Deployment", exact=True).fill("e2e-engine")
    page.get_by_label("Model at the engine").fill("test-upstream-model")
    page.get_by_label("Engine API key").fill(SECRET)
    page.get_by_label("Engine URLs").fill(engine.url)
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.get_by_role("status").first).to_contain_text("Connecting e2e-engine")
    assert SECRET not in page.content()
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    page.evaluate("window.__sameDocument = true")

    row = page.locator("tr", has_text="e2e-engine")
    expect(row.locator(".badge")).to_have_text("ready", timeout=20_000)
    replica = row.locator(".replica")
    expect(replica).to_have_attribute("data-health", "healthy", timeout=10_000)
    expect(replica).to_contain_text(engine.url)
    expect(row.get_by_role("button", name="Scale")).to_be_hidden()  # replicas are its URLs
    screenshot(page, "models-engine")

    engine.control(health_status=503)  # the workers' prober sees it go down...
    expect(replica).to_have_attribute("data-health", "down", timeout=15_000)
    expect(replica).to_contain_text("/health answered 503")
    engine.control(health_status=200)  # ...and come back
    expect(replica).to_have_attribute("data-health", "healthy", timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True  # all without a reload
    assert SECRET not in page.content()

    phone = open_page(operator, OPERATOR_PASSWORD, viewport=PHONE)
    phone.goto("/dashboard/models/")
    expect(phone.locator("tr", has_text="e2e-engine").locator(".replica")).to_be_visible()
    screenshot(phone, "models-engine")
