"""Limits the live web server (daphne) enforces before a request reaches Django: bodies too
large are refused as they arrive, without being held in memory; malformed or oversized HTTP
gets a JSON error. See infra.http_server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _raw(url: str, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _json_error(raw: bytes, status: int, code: str) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), raw[:300]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


@pytest.fixture
def web(stack):
    return stack.webs[0], stack.url


def test_a_body_declared_too_large_is_refused_before_it_is_sent(web, settings):
    _, url = web
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 10737418240\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    raw = _raw(url, request)
    assert b"100 Continue" not in raw  # no invitation to send the 10 GiB
    error = _json_error(raw, 413, "request_too_large")
    assert str(settings.NEBULA_MAX_BODY_BYTES) in error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/apikeys", "/admin/login/"])
def test_a_chunked_body_growing_too_large_is_refused_without_buffering_it(web, path):
    proc, url = web
    before = _rss_kb(proc.popen.pid)

    def body() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * MiB

    response = httpx.post(
        url + path, content=body(), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    # Before the limit was enforced in daphne, 64 MiB sent meant ~64 MiB more resident.
    assert _rss_kb(proc.popen.pid) - before < 16 * 1024


def test_a_body_declared_too_large_and_sent_anyway_still_gets_its_answer(web):
    _, url = web
    response = httpx.post(
        url + "/v1/chat/completions",
        content=b" " * (5 * MiB),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413


def test_a_body_at_the_limit_is_read(web, settings):
    _, url = web
    body = b"{}" + b" " * (settings.NEBULA_MAX_BODY_BYTES - 2)
    response = httpx.post(
        url + "/apikeys", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401  # read, parsed, and refused for want of credentials


def test_one_huge_header_gets_431(web):
    _, url = web
    raw = _raw(
        url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    )
    _json_error(raw, 431, "headers_too_large")


def test_too_many_headers_get_431(web):
    _, url = web
    headers = b"".join(b"X-H%d: a\r\n" % i for i in range(600))
    raw = _raw(url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
    _json_error(raw, 431, "headers_too_large")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NONSENSE\r\n\r\n",
        b"GET /v1/models?q=\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /v1/\xffmodels HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
        b"POST /apikeys HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /apikeys HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
    ],
)
def test_malformed_http_gets_400_json(web, request_bytes):
    _, url = web
    _json_error(_raw(url, request_bytes), 400, "bad_request")


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/apikeys"])
def test_a_host_the_server_does_not_answer_for_is_a_400_on_every_path(web, path):
    _, url = web
    refused = httpx.post(url + path, json={}, headers={"Host": "evil.example"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "bad_request"


def test_the_server_keeps_serving_after_all_that(web):
    _, url = web
    assert httpx.get(url + "/health").status_code in (200, 503)
