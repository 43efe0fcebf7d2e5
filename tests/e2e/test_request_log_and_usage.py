"""The request log page as an operator and as a team member, its CSV export, and the usage page
at 1440 px and on a 375 px phone: every card inside the screen and its content inside the card,
chart axes with dates past 24 hours."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest
from django.utils import timezone
from playwright.sync_api import expect

from keys.access import SYSTEM
from keys.services import team_create, team_member_add
from telemetry.models import UsageRecord
from tests.e2e.conftest import LAPTOP, flush_ledger, screenshot

pytestmark = pytest.mark.browser

OPERATOR_PASSWORD = "operator-pass-123"
CAROL_PASSWORD = "carol-pass-123"
ALICE_PASSWORD = "alice-pass-123"
PHONE_375 = {"width": 375, "height": 812}
HELLO = [{"role": "user", "content": "Hello GPU"}]


def _records(key: Any, count: int, *, status: int = 200, model: str = "nebula-7b", **extra: Any):
    now = timezone.now()
    UsageRecord.objects.bulk_create(
        UsageRecord(
            request_id=f"req_e2e_{key.pk}_{status}_{index}_{model}",
            api_key=key,
            key_prefix=key.prefix,
            model=model,
            endpoint="/v1/chat/completions",
            status=status,
            worker="gpu-e2e/1",
            prompt_tokens=12,
            completion_tokens=30 if status < 400 else 0,
            queue_ms=2.0,
            ttft_ms=15.0,
            latency_ms=120.0,
            cost=Decimal("0.000042"),
            created_at=now - timedelta(minutes=5, seconds=index),
            **extra,
        )
        for index in range(count)
    )


@pytest.fixture
def world(live, operator, alice, bob, django_user_model, make_key, ready_model):
    """Team ml (alice its admin, carol a member) with a key; bob with a key of his own; real
    requests through the stack on both, and older rows written straight to the table."""
    carol = django_user_model.objects.create_user("carol", password=CAROL_PASSWORD)
    team = team_create(actor=SYSTEM, name="ml", admin=alice)
    team_member_add(actor=SYSTEM, team=team, user=carol)
    ready_model()
    team_key, team_secret = make_key(alice, name="ml-prod", team=team, rpm_limit=100)
    bob_key, bob_secret = make_key(bob, name="bobs-secret-project", rpm_limit=100)
    for secret in (team_secret, bob_secret):
        client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
        client.chat.completions.create(model="nebula-7b", messages=HELLO, max_tokens=5)
    flush_ledger()
    _records(team_key, 55)
    _records(team_key, 4, status=503)
    _records(bob_key, 6, status=429, model="bob-model")
    return {"carol": carol, "team_key": team_key, "bob_key": bob_key}


def _shown(page: Any) -> list[str]:
    return page.locator("[data-request]").evaluate_all(
        "rows => rows.map(row => row.dataset.request)"
    )


def test_an_operator_walks_the_request_log_filters_pages_and_exports(open_page, world, operator):
    page = open_page(operator, OPERATOR_PASSWORD)
    page.get_by_role("link", name="Requests").click()
    expect(page.get_by_role("heading", name="Requests", exact=True)).to_be_visible()
    first = _shown(page)
    assert len(first) == 50
    expect(page.get_by_role("columnheader", name="Worker")).to_be_visible()
    live_row = page.locator("[data-request]").first  # the newest: a real request of the stack
    expect(live_row).to_contain_text("nebula-7b")
    screenshot(page, "requests")

    page.get_by_role("link", name="Older requests").click()
    older = _shown(page)
    assert set(first).isdisjoint(older) and len(first) + len(older) == 55 + 4 + 6 + 2

    page.get_by_role("link", name="Newest").click()
    page.get_by_label("Status").select_option("5xx")
    page.get_by_label("API key").select_option(str(world["team_key"].pk))
    page.get_by_role("button", name="Filter").click()
    failed = _shown(page)
    assert len(failed) == 4
    expect(page.locator("[data-status]")).to_have_text(["503"] * 4)

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    download = download_info.value
    exported = list(csv.DictReader(io.StringIO(download.path().read_text())))
    assert [row["request_id"] for row in exported] == failed
    assert {row["status"] for row in exported} == {"503"}
    assert {row["worker"] for row in exported} == {"gpu-e2e/1"}


def test_a_team_member_sees_only_the_teams_requests(open_page, world):
    for viewport in (LAPTOP, PHONE_375):
        page = open_page(world["carol"], CAROL_PASSWORD, viewport=viewport)
        page.goto("/dashboard/requests/")
        html = page.content()
        assert "bobs-secret-project" not in html and "bob-model" not in html
        assert world["bob_key"].prefix not in html
        assert "gpu-e2e/1" not in html  # workers are the operators' business
        expect(page.get_by_role("columnheader", name="Worker")).to_have_count(0)
        expect(page.locator("[data-request]").first).to_contain_text("ml-prod")
        screenshot(page, "requests-member")
    page.get_by_role("link", name="Older requests").click()
    assert len(_shown(page)) == 55 + 4 + 1 - 50
    # Asking for bob's key by its id shows nothing of it.
    page.goto(f"/dashboard/requests/?key={world['bob_key'].pk}")
    expect(page.locator("[data-request]")).to_have_count(0)
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    assert download_info.value.path().read_text().count("\n") == 1  # the header alone


# --- The usage page --------------------------------------------------------------------------

_FIT = """() => {
  const width = document.documentElement.clientWidth;
  const problems = [];
  for (const card of document.querySelectorAll("main .card")) {
    const box = card.getBoundingClientRect();
    if (box.left < -0.5 || box.right > width + 0.5) {
      problems.push(`card ${card.className} spans ${box.left}..${box.right} of ${width}`);
    }
    // Content wider than its card (tables scroll inside .table-wrap on purpose).
    const parts = ".kpi-value, .kpi-sub, .kpi-label, .card-head, svg";
    for (const child of card.querySelectorAll(parts)) {
      const inner = child.getBoundingClientRect();
      if (inner.right > box.right + 0.5 || inner.left < box.left - 0.5) {
        problems.push(`${child.className.baseVal ?? child.className} overflows its card`);
      }
      if (child.scrollWidth > child.clientWidth + 1 && child.tagName !== "svg") {
        problems.push(`${child.className} is cut: ${child.textContent.trim()}`);
      }
    }
  }
  // The usage tables fit their cards too: no scrolling sideways inside them.
  for (const wrap of document.querySelectorAll("main .table-wrap")) {
    if (wrap.scrollWidth > wrap.clientWidth + 1) {
      problems.push(`a table is ${wrap.scrollWidth}px wide in a ${wrap.clientWidth}px card`);
    }
  }
  // Axis labels inside their chart and clear of each other.
  for (const svg of document.querySelectorAll("main .chart svg")) {
    const frame = svg.getBoundingClientRect();
    const boxes = [...svg.querySelectorAll("text")].map((t) => t.getBoundingClientRect());
    for (const box of boxes) {
      if (box.left < frame.left - 0.5 || box.right > frame.right + 0.5) {
        problems.push("an axis label sticks out of its chart");
      }
    }
    const bottom = boxes.filter((b) => b.top > frame.top + frame.height * 0.8);
    bottom.sort((a, b) => a.left - b.left);
    for (let i = 1; i < bottom.length; i++) {
      if (bottom[i].left < bottom[i - 1].right) problems.push("axis labels overlap");
    }
  }
  return problems;
}"""


def _usage_world(alice: Any, make_key: Any) -> None:
    key, _ = make_key(alice, name="a-key-with-a-rather-long-name-for-a-phone")
    now = timezone.now()
    UsageRecord.objects.bulk_create(
        UsageRecord(
            request_id=f"req_usage_{index}",
            api_key=key,
            key_prefix=key.prefix,
            model="nebula-7b-instruct-long-name",
            endpoint="/v1/chat/completions",
            status=200 if index % 9 else 503,
            prompt_tokens=123_456,
            completion_tokens=654_321,
            latency_ms=1234.5,
            ttft_ms=234.5,
            created_at=now - timedelta(hours=index * 3),
        )
        for index in range(50)
    )


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE_375], ids=["1440", "375"])
def test_the_usage_page_fits_its_cards(open_page, live, alice, make_key, viewport):
    _usage_world(alice, make_key)
    page = open_page(alice, ALICE_PASSWORD, viewport=viewport)
    for window in ("24h", "7d", "30d"):
        page.goto(f"/dashboard/usage/?window={window}")
        page.wait_for_load_state("networkidle")
        expect(page.locator('[data-chart="timeline"] svg')).to_be_visible()
        assert page.evaluate(_FIT) == [], window
    screenshot(page, "usage-30d")


def _axis(page: Any, chart: str) -> list[str]:
    return page.locator(f'[data-chart="{chart}"] text.axis-x').evaluate_all(
        "labels => labels.map(label => label.textContent)"
    )


def test_chart_axes_show_dates_past_24_hours(open_page, live, alice, make_key):
    _usage_world(alice, make_key)
    page = open_page(alice, ALICE_PASSWORD)
    page.goto("/dashboard/usage/?window=24h")
    times = _axis(page, "timeline")
    # Times alone ("14:05", "02:05 PM"), no date, within one day.
    clock = [label.removesuffix(" AM").removesuffix(" PM") for label in times]
    assert len(times) == 3 and all(":" in label and len(label) <= 5 for label in clock), times
    for window in ("7d", "30d"):
        page.goto(f"/dashboard/usage/?window={window}")
        for chart in ("timeline", "tokens"):
            labels = _axis(page, chart)
            assert len(labels) >= 2, labels
            # "Nov 26": the month and the day.
            assert all(re.fullmatch(r"[A-Z][a-z]{2} \d{1,2}", label) for label in labels), labels
        # The bars' tooltips keep the time of day as well.
        page.locator('[data-chart="timeline"] .bar-hit').last.hover()
        expect(page.locator('[data-chart="timeline"] .chart-tip')).to_contain_text(":")
