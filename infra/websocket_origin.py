"""Who may open the dashboard's websockets: pages of this very site, nothing else.

A websocket is not covered by CORS or CSRF, and the browser sends the session cookie with it
from any page. Cookies are not kept apart by port, so a page served by anything else on the
same host (another app on :9000, say) could open `/ws/playground/` as the logged-in user.
Channels' `AllowedHostsOriginValidator` only checks the Origin's host name against
ALLOWED_HOSTS, ignoring its scheme and port. Here the Origin must be the request's own origin
(scheme, host and port of the `Host` it was sent to, itself allowed by ALLOWED_HOSTS), or one
of CSRF_TRUSTED_ORIGINS, with Django's wildcard rule for those (`https://*.example.com`): the
same rule Django's CSRF check applies to the pages' forms.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _origin(scheme: str, netloc: str) -> tuple[str, str, str] | None:
    """(scheme, host, port) with the scheme's default port made explicit; None if malformed."""
    host, port = split_domain_port(netloc.lower())
    if not host or scheme not in _DEFAULT_PORTS:
        return None
    return scheme, host, port or _DEFAULT_PORTS[scheme]


def origin_allowed(
    *,
    origin: str | None,
    host: str | None,
    secure: bool,
    allowed_hosts: list[str],
    trusted_origins: list[str],
) -> bool:
    """Whether a websocket handshake with this Origin, sent to this Host (over TLS when
    `secure`), comes from a page of this site."""
    if not origin:
        return False  # browsers always send it; a client that does not is not a page
    parsed = urlsplit(origin.lower())
    if origin.lower() in (trusted.lower() for trusted in trusted_origins if "*" not in trusted):
        return True
    for trusted in trusted_origins:
        if "*" in trusted:
            pattern = urlsplit(trusted.lower())
            if parsed.scheme == pattern.scheme and is_same_domain(
                parsed.netloc, pattern.netloc.lstrip("*")
            ):
                return True
    if not host or not validate_host(split_domain_port(host.lower())[0], allowed_hosts):
        return False
    claimed = _origin(parsed.scheme, parsed.netloc)
    own = _origin("https" if secure else "http", host)
    return claimed is not None and claimed == own


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _secure(scope: dict[str, Any]) -> bool:
    if scope.get("scheme") == "wss":
        return True
    # Behind a TLS-terminating proxy, as Django's request.is_secure() reads it.
    proxy: tuple[str, str] | None = settings.SECURE_PROXY_SSL_HEADER
    if proxy is None:
        return False
    name, expected = proxy
    header = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
    return _header(scope, header) == expected


class SameOriginValidator:
    """ASGI middleware: refuses (403, before accepting) a websocket from another origin."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(
            origin=_header(scope, b"origin"),
            host=_header(scope, b"host"),
            secure=_secure(scope),
            allowed_hosts=list(settings.ALLOWED_HOSTS),
            trusted_origins=list(settings.CSRF_TRUSTED_ORIGINS),
        ):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
