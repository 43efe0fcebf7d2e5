"""The dashboard in a real browser, against two daphne processes and two Celery workers."""

import contextlib
import time

import openai
import pytest
from playwright.sync_api import expect

from keys.models import ApiKey
from models_registry.models import DeployedModel
from telemetry.models import UsageRecord
from tests.e2e.conftest import LAPTOP, PHONE, flush_ledger, screenshot
from tests.support.stack import Stack, free_port

pytestmark = pytest.mark.browser

ALICE_PASSWORD = "alice-pass-123"
BOB_PASSWORD = "bob-pass-123"
OPERATOR_PASSWORD = "operator-pass-123"
HELLO = [{"role": "user", "content": "Hello GPU"}]
# 20B parameters on two L4s decodes a token every ~10 ms at the stack's time scale: slow enough
# to watch the reply grow.
SLOW = {"params_billions": 20, "gpu_type": "L4", "gpus_per_replica": 2}


def watch_reply(page):
    """Record (time, length) of the streaming reply every time it changes, in the page."""
    page.evaluate(
        """() => {
          window.__growth = [];
          const log = document.querySelector('[data-chat-log]');
          new MutationObserver(() => {
            const reply = log.querySelector('.msg-assistant:last-of-type');
            if (reply) window.__growth.push([performance.now(), reply.textContent.length]);
          }).observe(log, {subtree: true, childList: true, characterData: true});
        }"""
    )


def send_chat(page, text, *, max_tokens, ignore_eos=True):
    page.get_by_label("Max tokens", exact=True).fill(str(max_tokens))
    if ignore_eos:
        page.get_by_label("Generate all max tokens").check()
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def test_logging_in_shows_errors_in_place_then_lands_on_the_overview(open_page, alice):
    page = open_page()
    page.goto("/dashboard/keys/")
    expect(page).to_have_url("/accounts/login/?next=/dashboard/keys/")
    screenshot(page, "login")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("correct username and password")
    expect(page.get_by_label("Username")).to_have_value("alice")
    page.get_by_label("Password").fill(ALICE_PASSWORD)
    page.get_by_label("Password").press("Enter")  # the keyboard is enough
    expect(page).to_have_url("/dashboard/keys/")
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()


def test_a_new_key_shows_its_secret_once_and_revoking_asks_first(open_page, live, alice):
    page = open_page(alice, ALICE_PASSWORD)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto("/dashboard/keys/")
    page.get_by_label("Name").fill("e2e-billing")
    page.get_by_role("button", name="Create key").click()

    secret = page.locator("#new-secret").input_value()
    assert secret.startswith("nb_")
    expect(page.get_by_text("you won't see this again")).to_be_visible()
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("[data-copy-label]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    screenshot(page, "keys-created")
    # It works against the API.
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    client.models.list()

    page.goto("/dashboard/keys/")
    assert secret not in page.content()
    row = page.locator("tr", has_text="e2e-billing")
    expect(row.locator(".badge")).to_have_text("active")

    row.get_by_role("link", name="Revoke").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Revoke “e2e-billing”?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert ApiKey.objects.get(name="e2e-billing").state == "active"

    row.get_by_role("link", name="Revoke").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke key").click()
    expect(page.get_by_role("status").first).to_contain_text("Revoked “e2e-billing”")
    expect(page.locator("tr", has_text="e2e-billing").locator(".badge")).to_have_text("revoked")
    assert ApiKey.objects.get(name="e2e-billing").state == "revoked"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_deployment_badge_reaches_ready_without_reloading(open_page, operator):
    page = open_page(operator, OPERATOR_PASSWORD)
    page.goto("/dashboard/models/")
    page.get_by_text("New deployment").click()
    page.get_by_label("Name").fill("e2e-13b")
    page.get_by_label("Size (billions of parameters)").fill("13")
    page.get_by_label("GPU type").select_option("A100-80GB")
    expect(page.locator("[data-fit]")).to_contain_text("Fits")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.get_by_role("status").first).to_contain_text("Deploying e2e-13b")
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")

    page.evaluate("window.__sameDocument = true")
    badge = page.locator("tr", has_text="e2e-13b").locator(".badge")
    seen = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen.add(badge.inner_text())
        if "ready" in seen:
            break
        time.sleep(0.05)
    assert "ready" in seen, seen
    assert seen & {"pending", "loading"}, seen  # it moved through its lifecycle on screen
    assert page.evaluate("window.__sameDocument") is True  # no reload
    expect(
        page.locator("tr", has_text="e2e-13b").get_by_role("button", name="Scale")
    ).to_be_visible()
    assert DeployedModel.objects.get(name="e2e-13b").state == "ready"


def test_an_embedding_model_deployed_from_the_dashboard_serves_embeddings(
    open_page, live, operator, make_key
):
    page = open_page(operator, OPERATOR_PASSWORD)
    page.goto("/dashboard/models/")
    page.get_by_text("New deployment").click()
    page.get_by_label("Name").fill("all-minilm-l6-v2")
    page.get_by_label("Serves").select_option("embedding")
    page.get_by_label("GPU type").select_option("L4")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.get_by_role("status").first).to_contain_text("Deploying all-minilm-l6-v2")
    row = page.locator("tr", has_text="all-minilm-l6-v2")
    expect(row).to_contain_text("embeddings")  # what it serves, in the fleet
    expect(row.locator(".badge")).to_have_text("ready", timeout=20_000)
    expect(row.locator('[data-f="context"]')).to_have_text("256")  # the model's own length
    _, secret = make_key(operator, name="e2e-embed")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    response = client.embeddings.create(model="all-minilm-l6-v2", input="deployed by hand")
    assert len(response.data[0].embedding) == 384


def test_deploy_errors_show_in_place_and_keep_what_was_typed(open_page, operator):
    page = open_page(operator, OPERATOR_PASSWORD)
    page.goto("/dashboard/models/")
    page.get_by_text("New deployment").click()
    page.get_by_label("Name").fill("bad name!")
    page.get_by_label("Size (billions of parameters)").fill("70")
    page.get_by_label("Replicas", exact=True).fill("0")
    page.get_by_role("button", name="Deploy", exact=True).click()
    name = page.get_by_label("Name")
    expect(name).to_have_value("bad name!")
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".field", has=name)).to_contain_text("A model name is 1-64 letters")
    expect(page.get_by_label("Size (billions of parameters)")).to_have_value("70")


def test_chat_tokens_arrive_one_after_another(open_page, alice, make_key, ready_model):
    ready_model("slow-20b", **SLOW)
    make_key(alice, name="playground")
    page = open_page(alice, ALICE_PASSWORD)
    page.goto("/dashboard/chat/")
    page.get_by_label("Model").select_option("slow-20b")
    watch_reply(page)
    send_chat(page, "Tell me about GPUs", max_tokens=120)
    expect(page.locator('[data-stat="state"]')).to_have_text("done (max tokens)", timeout=20_000)

    growth = page.evaluate("window.__growth")
    lengths = [length for _, length in growth]
    distinct = sorted(set(lengths))
    assert len(distinct) >= 5, growth  # the text grew in many steps, not all at once
    assert lengths == sorted(lengths)
    first_text = next(t for t, length in growth if length > 0)
    assert growth[-1][0] - first_text > 300  # over time (120 tokens × ~10 ms)
    expect(page.locator('[data-stat="tokens"]')).to_contain_text("120 out")
    expect(page.locator('[data-stat="ttft"]')).to_contain_text("ms")
    screenshot(page, "chat")


def test_stop_mid_stream_ends_the_job_and_records_it_cancelled(
    open_page, alice, make_key, ready_model
):
    ready_model("slow-20b", **SLOW)
    key, _ = make_key(alice, name="playground")
    page = open_page(alice, ALICE_PASSWORD)
    page.goto("/dashboard/chat/")
    page.get_by_label("Model").select_option("slow-20b")
    send_chat(page, "Keep going", max_tokens=3000)
    reply = page.locator(".msg-assistant").last
    expect(reply).not_to_have_text("", timeout=10_000)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator('[data-stat="state"]')).to_have_text("stopped")
    stopped = reply.inner_text()
    time.sleep(0.5)
    assert reply.inner_text() == stopped  # nothing more arrives
    expect(page.get_by_role("button", name="Send")).to_be_visible()

    deadline = time.monotonic() + 10
    record = None
    while record is None and time.monotonic() < deadline:
        flush_ledger()
        record = UsageRecord.objects.filter(api_key=key, client="playground").first()
    assert record is not None
    assert (record.finish_reason, record.status) == ("cancelled", 499)
    assert 0 < record.completion_tokens < 3000


def test_the_overview_request_count_rises_after_an_openai_request(
    open_page, live, alice, make_key, ready_model
):
    ready_model()
    _, secret = make_key(alice)
    page = open_page(alice, ALICE_PASSWORD)
    requests = page.locator('[data-o="requests"]')
    expect(requests).to_have_text("0")
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")

    # Through the other web process: the page hears about it over the channel layer.
    client = openai.OpenAI(base_url=live.urls[1] + "/v1", api_key=secret, max_retries=0)
    client.chat.completions.create(model="nebula-7b", messages=HELLO, max_tokens=5)
    flush_ledger()
    expect(requests).to_have_text("1", timeout=5_000)
    expect(page.locator('[data-o="tokens"]')).not_to_have_text("0")
    assert page.url.endswith("/dashboard/")


def test_a_second_user_sees_none_of_the_first_users_keys_or_usage(
    open_page, live, alice, bob, make_key, ready_model
):
    ready_model()
    alices, secret = make_key(alice, name="alices-private-key")
    make_key(bob, name="bobs-key")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="nebula-7b", messages=HELLO, max_tokens=5)
    flush_ledger()

    page = open_page(bob, BOB_PASSWORD)
    expect(page.locator('[data-o="requests"]')).to_have_text("0")
    for url in ("/dashboard/", "/dashboard/keys/", "/dashboard/usage/", "/dashboard/chat/"):
        page.goto(url)
        page.wait_for_load_state("networkidle")
        html = page.content()
        assert "alices-private-key" not in html, url
        assert alices.prefix not in html, url
    page.goto("/dashboard/usage/")
    expect(page.locator('[data-u="requests"]')).to_have_text("0")
    response = page.goto(f"/dashboard/keys/{alices.pk}/revoke/")
    assert response.status == 404
    response = page.goto(f"/dashboard/usage/?key={alices.pk}")
    assert response.status == 400

    mine = open_page(alice, ALICE_PASSWORD)
    expect(mine.locator('[data-o="requests"]')).to_have_text("3")
    mine.goto("/dashboard/keys/")
    expect(mine.get_by_text("alices-private-key")).to_be_visible()


def test_the_page_reconnects_when_its_server_comes_back(open_page, stack, alice):
    port = free_port()
    own = Stack(env=stack.env)  # a web process of this test's own, to stop and start
    own.start_web(port)
    try:
        page = open_page(alice, ALICE_PASSWORD, url=f"http://127.0.0.1:{port}")
        pill = page.locator("[data-live-status]")
        expect(pill).to_have_attribute("data-state", "live")
        own.webs[0].kill()
        expect(pill).to_have_attribute("data-state", "reconnecting")
        expect(pill).to_have_text("Reconnecting…")
        own.webs.clear()
        own.ports.clear()
        own.start_web(port)
        expect(pill).to_have_attribute("data-state", "live", timeout=15_000)
    finally:
        own.stop()


def test_every_page_at_laptop_and_phone_widths(
    open_page, live, operator, alice, make_key, ready_model
):
    """Screenshots for a person to look at (tests/artifacts/screenshots), on realistic data."""
    ready_model("nebula-7b", replicas=2, max_concurrent_seqs=16)
    ready_model("slow-20b", **SLOW)
    DeployedModel.objects.create(
        name="llama-70b",
        parameters=70_000_000_000,
        gpu_type="L4",
        state="failed",
        owner=operator,
        failure_reason="llama-70b does not fit: its bf16 weights need 140.0 GB, but 1 × NVIDIA "
        "L4 24GB (24 GB each) leave 21.6 GB usable after 10% headroom.",
    )
    _, secret = make_key(alice, name="production", rpm_limit=10)
    make_key(alice, name="staging", tpm_limit=20_000)
    old, _ = make_key(operator, name="ci-runner")
    old.revoked_at = old.created_at
    old.save()
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    for _ in range(6):
        client.chat.completions.create(model="nebula-7b", messages=HELLO, max_tokens=40)
    for _ in range(5):
        with contextlib.suppress(openai.RateLimitError):  # the last one is over the limit
            client.chat.completions.create(model="nebula-7b", messages=HELLO, max_tokens=5)
    flush_ledger()

    for viewport in (LAPTOP, PHONE):
        page = open_page(operator, OPERATOR_PASSWORD, viewport=viewport)
        expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
        screenshot(page, "overview")
        for name, url in [
            ("models", "/dashboard/models/"),
            ("keys", "/dashboard/keys/"),
            ("usage", "/dashboard/usage/"),
        ]:
            page.goto(url)
            page.wait_for_load_state("networkidle")
            screenshot(page, name)
        user = open_page(alice, ALICE_PASSWORD, viewport=viewport)
        screenshot(user, "overview-user")
        user.goto("/dashboard/chat/")
        send_chat(user, "What makes a GPU fast?", max_tokens=60, ignore_eos=False)
        expect(user.locator('[data-stat="state"]')).to_contain_text("done", timeout=15_000)
        screenshot(user, "chat-conversation")
