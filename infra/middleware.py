"""Request ids, and the lean middleware chain of the /v1 API."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase

from infra.errors import (
    DATABASE_ERRORS,
    InternalError,
    InvalidRequest,
    NebulaError,
    database_unavailable,
    error_response,
)

logger = logging.getLogger(__name__)


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class ApiRequest(ASGIRequest):
    """A request on the lean /v1 handler: Django's ASGI request, born with its request id."""

    def __init__(self, scope: Any, body_file: Any) -> None:
        super().__init__(scope, body_file)
        self.request_id = new_request_id()


def request_id_of(request: HttpRequest) -> str:
    """The request's id, given to it on arrival (`ApiRequest`, or the middleware below)."""
    request_id = getattr(request, "request_id", None)
    if not isinstance(request_id, str):
        request_id = new_request_id()
        setattr(request, "request_id", request_id)  # noqa: B010 - HttpRequest declares no such attribute
    return request_id


class RequestIdMiddleware:
    """Gives every request an id (`request.request_id`) and returns it as `x-request-id`.

    Written as a native sync-and-async middleware: under ASGI, Django runs each classic
    `MiddlewareMixin` hook through a thread hop, which the /v1 hot path cannot afford.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        request_id = request_id_of(request)
        response: HttpResponseBase = _nul_refusal(request) or self.get_response(request)
        response.headers.setdefault("x-request-id", request_id)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_of(request)
        response: HttpResponseBase = _nul_refusal(request) or await self.get_response(request)
        response.headers.setdefault("x-request-id", request_id)
        # The /v1 chain has no SecurityMiddleware (a thread hop per request); this is the
        # header of its that matters for API responses.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def _nul_refusal(request: HttpRequest) -> HttpResponseBase | None:
    """A 400 for a NUL character in the path or the query: PostgreSQL refuses it in any text
    it is given, so a filter or lookup with one would be a 500 (the schema fuzzer found
    `/apikeys?owner=%00`). No name, id or filter of Nebula's has one."""
    if "%00" in request.META.get("QUERY_STRING", "") or "\x00" in request.path:
        return error_response(
            InvalidRequest(
                "The URL has a NUL character (%00), which no name or filter may contain.",
                code="invalid_value",
            )
        )
    return None


class ApiErrorMiddleware:
    """Last line of defence for /v1: any exception becomes an OpenAI-style error, not a 500 page."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        try:
            # Django checks the Host against ALLOWED_HOSTS when something asks for it; nothing
            # on the /v1 path would, so a request for any host would be served.
            request.get_host()
        except DisallowedHost:
            return error_response(
                InvalidRequest(
                    "Bad request: this server does not answer for that Host.", code="bad_request"
                )
            )
        try:
            return await self.get_response(request)
        except NebulaError as error:
            return error_response(error)
        except DATABASE_ERRORS:
            logger.warning("database unreachable in %s %s", request.method, request.path)
            return error_response(database_unavailable())
        except Exception:
            logger.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(
                InternalError(
                    "The server had an error while processing your request. Retry the request."
                )
            )


API_MIDDLEWARE: list[Callable[[Any], Any]] = [RequestIdMiddleware, ApiErrorMiddleware]


class ApiASGIHandler(ASGIHandler):
    """Django's ASGI handler with a lean middleware chain, for the /v1 API and the baseline view.

    The API is authenticated by bearer keys, so sessions, CSRF, messages and the auth middleware
    have nothing to do there, and under ASGI each of them costs two thread hops per request.
    URL resolution, views and responses are plain Django.
    """

    request_class = ApiRequest

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler = convert_exception_to_response(self._get_response_async)  # type: ignore[attr-defined]
        for middleware in reversed(API_MIDDLEWARE):
            handler = convert_exception_to_response(middleware(handler))
        self._middleware_chain = handler
