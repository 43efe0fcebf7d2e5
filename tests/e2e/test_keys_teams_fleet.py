"""The pages of round two in a real browser: editing and rotating keys, teams as an operator and
as a member, creating a key and reloading, and the fleet explaining itself."""

import re
import time

import openai
import pytest
from playwright.sync_api import expect

from keys.access import SYSTEM
from keys.models import ApiKey, Team
from keys.services import team_create, team_member_add
from models_registry.models import DeployedModel
from tests.e2e.conftest import LAPTOP, PHONE, screenshot

pytestmark = pytest.mark.browser

ALICE_PASSWORD = "alice-pass-123"
OPERATOR_PASSWORD = "operator-pass-123"
CAROL_PASSWORD = "carol-pass-123"


@pytest.fixture
def carol(django_user_model):
    return django_user_model.objects.create_user("carol", password=CAROL_PASSWORD)


def test_reloading_the_page_after_creating_a_key_creates_no_second_key(open_page, live, alice):
    page = open_page(alice, ALICE_PASSWORD)
    page.goto("/dashboard/keys/")
    page.get_by_label("Name").fill("e2e-reload")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").input_value()
    assert secret.startswith("nb_")
    assert "reveal=" in page.url  # the page after the redirect, not the POST's answer

    page.reload()
    expect(page.locator("[data-secret-gone]")).to_contain_text("cannot be shown again")
    assert secret not in page.content()
    assert ApiKey.objects.filter(name="e2e-reload").count() == 1
    page.go_back()
    page.go_forward()
    assert ApiKey.objects.filter(name="e2e-reload").count() == 1
    openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0).models.list()


def test_an_operator_raises_a_limit_and_rotates_a_key(open_page, live, operator, alice, make_key):
    key, old = make_key(alice, name="demo key")
    page = open_page(operator, OPERATOR_PASSWORD)
    page.goto("/dashboard/keys/")
    page.locator("tr", has_text="demo key").get_by_role("link", name="Edit").click()
    expect(page.get_by_role("heading", name="demo key")).to_be_visible()
    page.get_by_label("Requests per minute").fill("600")
    page.get_by_label("Allowed models").fill("nebula-7b")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status").first).to_contain_text("Saved “demo key”")
    expect(page.get_by_label("Requests per minute")).to_have_value("600")
    key.refresh_from_db()
    assert (key.rpm_limit, key.allowed_models) == (600, ["nebula-7b"])
    screenshot(page, "key-edit")

    page.get_by_label("The old secret stops working").select_option("3600")
    page.get_by_role("button", name="Rotate secret").click()
    new = page.locator("#new-secret").input_value()
    assert new.startswith("nb_") and new != old
    expect(page.get_by_text("The new secret of “demo key”")).to_be_visible()
    expect(page.locator("[data-previous]")).to_contain_text("works until")
    screenshot(page, "key-rotated")
    # Both secrets work during the grace period.
    for secret in (old, new):
        openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0).models.list()
    page.reload()
    assert new not in page.content()


def test_a_user_sees_why_they_cannot_widen_what_an_operator_set(open_page, alice, make_key):
    key, _ = make_key(alice, name="restricted", allowed_models=["nebula-7b"], rpm_limit=5)
    for viewport in (LAPTOP, PHONE):
        page = open_page(alice, ALICE_PASSWORD, viewport=viewport)
        page.goto(f"/dashboard/keys/{key.pk}/")
        expect(page.locator("[data-ceilings]")).to_contain_text("never raise them past 5")
        page.get_by_label("Allowed models").fill("")
        page.get_by_role("button", name="Save changes").click()
        field = page.get_by_label("Allowed models")
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(page.locator(".field", has=field)).to_contain_text("narrow that list")
        screenshot(page, "key-refused")
    key.refresh_from_db()
    assert key.allowed_models == ["nebula-7b"]


def test_teams_walked_by_an_operator_a_team_admin_and_a_member(
    open_page, live, operator, alice, carol, bob
):
    ops = open_page(operator, OPERATOR_PASSWORD)
    ops.goto("/dashboard/teams/")
    expect(ops.locator("details#create")).to_have_attribute("open", "")  # no teams yet: open
    ops.get_by_label("Name").fill("research")
    ops.get_by_label("First admin").fill("alice")
    ops.get_by_role("button", name="Create team").click()
    expect(ops.get_by_role("heading", name="research")).to_be_visible()
    expect(ops.locator("tr[data-member='alice']")).to_contain_text("team admin")
    team = Team.objects.get(name="research")

    admin = open_page(alice, ALICE_PASSWORD)
    admin.goto(f"/dashboard/teams/{team.pk}/")
    admin.get_by_label("Username").fill("carol")
    admin.get_by_role("button", name="Add member").click()
    expect(admin.get_by_role("status").first).to_contain_text("Added carol")
    admin.get_by_role("link", name="New team key").click()
    expect(admin.get_by_label("Team")).to_have_value(str(team.pk))
    admin.get_by_label("Name").fill("research-prod")
    admin.get_by_role("button", name="Create key").click()
    secret = admin.locator("#new-secret").input_value()
    assert ApiKey.objects.get(name="research-prod").team == team
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    client.models.list()

    for viewport in (LAPTOP, PHONE):
        member = open_page(carol, CAROL_PASSWORD, viewport=viewport)
        member.goto("/dashboard/teams/")
        screenshot(member, "teams-member")
        member.get_by_role("link", name="research").click()
        expect(member.locator("tr", has_text="research-prod")).to_be_visible()
        expect(member.get_by_role("button", name="Add member")).to_have_count(0)
        expect(member.get_by_role("link", name="New team key")).to_have_count(0)
        screenshot(member, "team-member")
        member.locator("tr", has_text="research-prod").get_by_role("link", name="View").click()
        expect(member.get_by_role("button", name="Save changes")).to_have_count(0)
        expect(member.get_by_role("button", name="Rotate secret")).to_have_count(0)
        screenshot(member, "key-member")
        member.goto("/dashboard/models/")
        expect(member.get_by_role("heading", name="Available models")).to_be_visible()
        expect(member.get_by_text("Deploy a model")).to_have_count(0)
    for viewport in (LAPTOP, PHONE):
        page = open_page(operator, OPERATOR_PASSWORD, viewport=viewport)
        page.goto(f"/dashboard/teams/{team.pk}/")
        page.wait_for_load_state("networkidle")
        screenshot(page, "team-operator")
        page.goto("/dashboard/teams/")
        screenshot(page, "teams-operator")

    outsider = open_page(bob, "bob-pass-123")
    assert outsider.goto(f"/dashboard/teams/{team.pk}/").status == 404
    outsider.goto("/dashboard/keys/")
    assert "research-prod" not in outsider.content()


def test_a_team_admin_removes_a_member_who_then_sees_nothing(open_page, alice, carol, make_key):
    team = team_create(actor=SYSTEM, name="ml", admin=alice)
    team_member_add(actor=SYSTEM, team=team, user=carol)
    make_key(alice, name="ml-key", team=team)
    page = open_page(alice, ALICE_PASSWORD)
    page.goto(f"/dashboard/teams/{team.pk}/")
    row = page.locator("tr[data-member='carol']")
    row.get_by_label("Role of carol").select_option("admin")
    row.get_by_role("button", name="Change role").click()
    expect(page.locator("tr[data-member='carol']")).to_contain_text("team admin")
    page.locator("tr[data-member='carol']").get_by_role("button", name="Remove").click()
    expect(page.locator("tr[data-member='carol']")).to_have_count(0)
    member = open_page(carol, CAROL_PASSWORD)
    member.goto("/dashboard/keys/")
    assert "ml-key" not in member.content()


def test_the_fleet_shows_loading_progress_refuses_what_cannot_fit_and_deletes_failures(
    open_page, operator
):
    DeployedModel.objects.create(
        name="broken-7b", parameters=7_000_000_000, gpu_type="L4", state="failed",
        owner=operator, failure_reason="the upstream refused the connection",
    )  # fmt: skip
    page = open_page(operator, OPERATOR_PASSWORD)
    page.goto("/dashboard/models/")
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")

    page.get_by_text("New deployment").click()
    page.get_by_label("Name").fill("too-big")
    page.get_by_label("Size (billions of parameters)").fill("70")
    page.get_by_label("GPU type").select_option("L4")
    page.get_by_role("button", name="Deploy", exact=True).click()
    gpus = page.get_by_label("GPUs per replica")
    expect(page.locator(".field", has=gpus)).to_contain_text("need 140.0 GB")
    assert not DeployedModel.objects.filter(name="too-big").exists()

    # 70B on two H100s loads in ~7 s at the live stack's time scale: long enough to watch.
    page.get_by_label("Name").fill("e2e-70b")
    page.get_by_label("GPU type").select_option("H100-80GB")
    gpus.fill("2")
    page.get_by_role("button", name="Deploy", exact=True).click()
    row = page.locator("tr", has_text="e2e-70b")
    label = row.locator('[data-f="progress-label"]')
    expect(label).to_be_visible(timeout=10_000)
    screenshot(page, "models-loading")
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and row.locator(".badge").inner_text() != "ready":
        if label.is_visible():
            seen.append(label.inner_text())
        time.sleep(0.3)
    expect(row.locator(".badge")).to_have_text("ready")
    percents = [int(m[1]) for text in seen if (m := re.match(r"(\d+)% · (\d+) s left", text))]
    assert len(set(percents)) >= 3, seen  # it moved on screen, without a reload
    assert percents == sorted(percents), seen
    screenshot(page, "models-fleet")

    broken = page.locator("tr", has_text="broken-7b")
    expect(broken).to_contain_text("the upstream refused the connection")
    broken.get_by_role("link", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status").first).to_contain_text("Deleted broken-7b")
    expect(page.locator("tr", has_text="broken-7b")).to_have_count(0)
    assert not DeployedModel.objects.filter(name="broken-7b").exists()
