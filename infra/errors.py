"""Errors in OpenAI's shape, in one place.

Domain code raises `NebulaError` subclasses; the API edges (the /v1 views, the DRF exception
handler, the Channels consumers) turn them into `{"error": {"message", "type", "param", "code"}}`
with the status the official `openai` client maps to the matching exception class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from infra.logging import redact


class NebulaError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


class InvalidRequest(NebulaError):
    status = 400


class PayloadTooLarge(NebulaError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(NebulaError):
    status = 415
    code = "unsupported_media_type"


class AuthenticationFailed(NebulaError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(NebulaError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(NebulaError):
    status = 404
    code = "not_found"


class MethodNotAllowed(NebulaError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        names = ", ".join(allowed)
        super().__init__(
            f"Method {method} is not allowed here; use {names}.", headers={"Allow": names}
        )


class Conflict(NebulaError):
    status = 409
    code = "conflict"


class RateLimited(NebulaError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class InternalError(NebulaError):
    status = 500
    type = "server_error"
    code = "internal_error"


class ServiceUnavailable(NebulaError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


# The database could not be reached (down, restarting, out of connections): retryable.
DATABASE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


def database_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The service cannot reach its database right now. Retry shortly.",
        code="database_unavailable",
    )


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    # Messages quote what the client sent (a model name, an id in the URL); a key pasted there
    # is not repeated back, nor into anything that stores or forwards error bodies.
    return {"error": {"message": redact(message), "type": type, "param": param, "code": code}}


def error_response(error: NebulaError, *, request_id: str | None = None) -> HttpResponse:
    response = HttpResponse(
        orjson.dumps(error.body()), status=error.status, content_type="application/json"
    )
    for name, value in error.headers.items():
        response[name] = value
    if request_id:
        response["x-request-id"] = request_id
    return response


_DRF_STATUS_CODES: dict[type[drf_exceptions.APIException], tuple[str, str | None]] = {
    drf_exceptions.NotAuthenticated: ("invalid_request_error", "invalid_api_key"),
    drf_exceptions.AuthenticationFailed: ("invalid_request_error", "invalid_api_key"),
    drf_exceptions.PermissionDenied: ("permission_error", "permission_denied"),
    drf_exceptions.NotFound: ("invalid_request_error", "not_found"),
    drf_exceptions.MethodNotAllowed: ("invalid_request_error", "method_not_allowed"),
    drf_exceptions.ParseError: ("invalid_request_error", "invalid_json"),
    drf_exceptions.UnsupportedMediaType: ("invalid_request_error", "unsupported_media_type"),
    drf_exceptions.NotAcceptable: ("invalid_request_error", "not_acceptable"),
    drf_exceptions.Throttled: ("requests", "rate_limit_exceeded"),
}


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, str]:
    """Flatten DRF's nested ValidationError detail into (param, message) for its first error."""
    if isinstance(detail, Mapping):
        for field, sub in detail.items():
            name = "" if field == "non_field_errors" else str(field)
            child = f"{path}.{name}" if path and name else (name or path)
            return _first_validation_error(sub, child)
    if isinstance(detail, list) and detail:
        if all(isinstance(item, str) for item in detail):
            return path or None, str(detail[0])
        for index, sub in enumerate(detail):
            if sub:
                return _first_validation_error(sub, f"{path}[{index}]" if path else str(index))
    return path or None, str(detail)


def drf_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every API error leaves in OpenAI's format."""
    if isinstance(exc, DATABASE_ERRORS):
        exc = database_unavailable()
    if isinstance(exc, NebulaError):
        return Response(exc.body(), status=exc.status, headers=exc.headers)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if isinstance(exc, drf_exceptions.ValidationError):
        param, message = _first_validation_error(exc.detail)
        text = f"Invalid '{param}': {message}" if param else message
        return Response(error_body(text, param=param, code="invalid_value"), status=400)
    if isinstance(exc, drf_exceptions.APIException):
        type_, code = _DRF_STATUS_CODES.get(type(exc), ("invalid_request_error", None))
        headers = {}
        wait = getattr(exc, "wait", None)
        if isinstance(exc, drf_exceptions.Throttled) and wait is not None:
            headers["Retry-After"] = str(int(wait) + 1)
        if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
            headers["WWW-Authenticate"] = 'Bearer realm="nebula"'
        return Response(
            error_body(str(exc.detail), type=type_, code=code),
            status=exc.status_code,
            headers=headers,
        )
    return None
