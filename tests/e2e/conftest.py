"""Browser tests: Playwright driving Debian's Chromium against the live stack.

One browser for the whole session; each test gets fresh browser contexts (cookies, storage).
Playwright's sync API keeps an asyncio loop running on the main thread, so while the browser is
open Django would take every ORM call in the test for an async one: we tell it not to worry
(DJANGO_ALLOW_ASYNC_UNSAFE, as pytest-django documents for Playwright), and browser tests run
last (tests/conftest.py) so no other test runs with that loop around. Work that itself needs an
event loop (the usage ledger broadcasts to dashboards) runs on a thread: `in_thread`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("NEBULA_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
LAPTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        # Red, not skipped: a run without a browser has not proven the dashboard.
        pytest.fail(f"no Chromium at {CHROMIUM}: `make browser-deps` installs it")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            yield chromium
            chromium.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def in_thread(work: Callable[[], Any]) -> Any:
    """Run `work` on a fresh thread (no event loop there) and return its result."""
    from django.db import connections

    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as error:  # re-raised below, on the test's thread
            result["error"] = error
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def flush_ledger() -> None:
    """Move usage records into the database now, announcing them to open overview pages."""
    from telemetry.ledger import ledger_flush

    in_thread(ledger_flush)


@pytest.fixture
def open_page(browser: Any, live: Any) -> Iterator[Callable[..., Any]]:
    """`open_page(user, password, viewport=LAPTOP, url=None) -> page`, logged in."""
    contexts: list[Any] = []

    def open_(
        user: Any = None, password: str = "", *, viewport: dict = LAPTOP, url: str | None = None
    ) -> Any:
        context = browser.new_context(viewport=viewport, base_url=url or live.url)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        if user is not None:
            page.goto("/accounts/login/")
            page.get_by_label("Username").fill(user.get_username())
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url("**/dashboard/")
        return page

    yield open_
    for context in contexts:
        for page in context.pages:
            assert not getattr(page, "errors", []), f"JavaScript errors: {page.errors}"
        context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page, after checking it fits its screen's width (tables scroll inside)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"]
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= width, f"{name} is {overflow}px wide on a {width}px screen"
    path = SCREENSHOTS / f"{name}-{'phone' if width < 600 else 'laptop'}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
