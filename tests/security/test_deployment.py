"""Production settings: `manage.py check --deploy` is clean, no secret key means no start, cookies
are secure, CSRF holds for sessions, security headers are on every response, and the admin
locks out a password guesser."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.test import Client

from tests.support.stack import ROOT

pytestmark = pytest.mark.django_db

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "nebula.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://nebula.example.com",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
    # Not the checkout's .env (a developer's `make run` writes one with a SECRET_KEY).
    "NEBULA_ENV_FILE": "/nonexistent/.env",
}


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing of the test settings leaks in.
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(ROOT)), **env}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=clean,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_without_a_secret_key_production_does_not_start():
    result = _manage("check", env={k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"})
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_security_headers_are_on_api_and_dashboard_responses(client, alice, make_key):
    _, secret = make_key(alice)
    responses = [
        client.get("/health"),
        client.get("/apikeys"),
        client.get("/admin/login/"),
        client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}"),
        client.get("/api/schema/"),
    ]
    for response in responses:
        assert response["X-Content-Type-Options"] == "nosniff"
    for response in responses[:3]:
        assert response["X-Frame-Options"] == "DENY"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def test_session_writes_need_a_csrf_token_but_api_keys_do_not(alice, operator, make_key):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    refused = browser.post("/apikeys", {"name": "x"}, content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]["message"]
    browser.get("/admin/login/")  # sets the CSRF cookie, as any dashboard page does
    token = browser.cookies["csrftoken"].value
    accepted = browser.post(
        "/apikeys", {"name": "x"}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert accepted.status_code == 201
    _, admin_key = make_key(operator, is_admin=True)
    script = Client(enforce_csrf_checks=True)
    by_key = script.post(
        "/apikeys",
        {"name": "y"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {admin_key}",
    )
    assert by_key.status_code == 201


def test_session_and_csrf_cookies_are_secure_and_http_only_when_configured(
    settings, django_user_model
):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    django_user_model.objects.create_superuser("root", password="root-pass-123")
    browser = Client()
    browser.get("/admin/login/")
    response = browser.post(
        "/admin/login/", {"username": "root", "password": "root-pass-123", "next": "/admin/"}
    )
    assert response.status_code == 302
    session = response.cookies["sessionid"]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"
    assert browser.cookies["csrftoken"]["secure"]


def test_the_admin_locks_out_a_password_guesser(settings, django_user_model):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_superuser("root", password="root-pass-123")
    guesser = Client(REMOTE_ADDR="203.0.113.7")
    for attempt in range(3):
        response = guesser.post(
            "/admin/login/", {"username": "root", "password": f"guess-{attempt}"}
        )
        assert response.status_code in (200, 429)
    # Now even the right password is refused, from that address.
    locked = guesser.post("/admin/login/", {"username": "root", "password": "root-pass-123"})
    assert locked.status_code == 429
    assert "_auth_user_id" not in guesser.session
    # The operator, from their own address, still gets in.
    operator = Client(REMOTE_ADDR="198.51.100.1")
    ok = operator.post(
        "/admin/login/", {"username": "root", "password": "root-pass-123", "next": "/admin/"}
    )
    assert ok.status_code == 302
