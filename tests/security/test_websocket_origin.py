"""The dashboard's websockets open only from pages of the site itself: the Origin's scheme,
host and port must be those the request was sent to (or one of CSRF_TRUSTED_ORIGINS). Any other
page on the same host (cookies do not keep ports apart) must be refused before the socket is
accepted."""

from __future__ import annotations

import pytest
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from infra.websocket_origin import origin_allowed

HOSTS = ["127.0.0.1", "localhost", "nebula.example.com"]


@pytest.mark.parametrize(
    ("origin", "host", "secure", "trusted", "allowed"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", False, [], True),
        ("http://127.0.0.1:9000", "127.0.0.1:8000", False, [], False),  # another port
        ("https://127.0.0.1:8000", "127.0.0.1:8000", False, [], False),  # another scheme
        ("http://localhost:8000", "127.0.0.1:8000", False, [], False),  # another host
        ("https://nebula.example.com", "nebula.example.com", True, [], True),
        ("https://nebula.example.com:443", "nebula.example.com", True, [], True),
        ("http://nebula.example.com", "nebula.example.com:80", False, [], True),
        ("http://nebula.example.com", "nebula.example.com", True, [], False),  # TLS page only
        ("http://evil.test:8000", "evil.test:8000", False, [], False),  # Host not allowed
        (None, "127.0.0.1:8000", False, [], False),  # no Origin: not a page
        ("null", "127.0.0.1:8000", False, [], False),  # sandboxed page, file://
        ("https://app.example.org", "nebula.example.com", True, ["https://app.example.org"], True),
        ("https://app.example.org:8443", "nebula.example.com", True,
         ["https://app.example.org"], False),
        ("https://a.example.org", "nebula.example.com", True, ["https://*.example.org"], True),
        ("http://a.example.org", "nebula.example.com", True, ["https://*.example.org"], False),
    ],
)  # fmt: skip
def test_only_the_sites_own_origin_or_a_trusted_one_may_open_a_socket(
    origin, host, secure, trusted, allowed
):
    assert (
        origin_allowed(
            origin=origin, host=host, secure=secure, allowed_hosts=HOSTS, trusted_origins=trusted
        )
        is allowed
    )


def _open(url: str, cookie: str, origin: str | None) -> int:
    """101 if the socket opened, else the handshake's refusal status."""
    headers = {"Cookie": cookie} | ({"Origin": origin} if origin else {})
    try:
        with connect(
            url.replace("http://", "ws://") + "/ws/overview/",
            additional_headers=headers,
            origin=None,
            open_timeout=10,
        ):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


@pytest.mark.integration
def test_a_page_on_another_port_of_the_same_host_cannot_open_the_dashboards_socket(live, alice):
    browser = Client()
    browser.force_login(alice)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    port = int(live.url.rsplit(":", 1)[1])
    assert _open(live.url, cookie, live.url) == 101  # the dashboard's own page
    assert _open(live.url, cookie, f"http://127.0.0.1:{port + 1}") == 403
    assert _open(live.url, cookie, f"https://127.0.0.1:{port}") == 403
    assert _open(live.url, cookie, "http://evil.test") == 403
