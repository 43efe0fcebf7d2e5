"""What every /v1 view shares: one decorator and the helpers a view parses and renders with.

`v1_endpoint` checks the method, gives the request its `RequestContext`, resolves the bearer
key (once: the gateway reuses it), refuses a key already over its limit before the body is read,
and turns any `NebulaError` into its refusal (charged, recorded or tallied by the gateway) and
an OpenAI-style error. A view under it only parses, calls one service and renders.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from inference.gateway import (
    Caller,
    RequestContext,
    gateway_identify,
    gateway_precheck,
    gateway_refusal,
)
from infra.errors import (
    MethodNotAllowed,
    NebulaError,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_response,
)
from infra.middleware import request_id_of

P = ParamSpec("P")
V1View = Callable[
    Concatenate[HttpRequest, RequestContext, Caller, P], Coroutine[Any, Any, HttpResponseBase]
]


def v1_endpoint(
    *methods: str, endpoint: str
) -> Callable[
    [V1View[P]], Callable[Concatenate[HttpRequest, P], Coroutine[Any, Any, HttpResponseBase]]
]:
    """Wrap a /v1 view: `view(request, ctx, caller, **url_kwargs)`."""

    def decorate(
        view: V1View[P],
    ) -> Callable[Concatenate[HttpRequest, P], Coroutine[Any, Any, HttpResponseBase]]:
        @functools.wraps(view)
        async def wrapper(
            request: HttpRequest, *args: P.args, **kwargs: P.kwargs
        ) -> HttpResponseBase:
            ctx = RequestContext(request_id=request_id_of(request), endpoint=endpoint)
            if request.method not in methods:
                # Not a request for this endpoint at all: nothing to record.
                return error_response(
                    MethodNotAllowed(request.method or "", methods), request_id=ctx.request_id
                )
            caller: Caller | None = None
            try:
                caller = await gateway_identify(
                    ctx,
                    authorization=request.headers.get("Authorization"),
                    address=request.META.get("REMOTE_ADDR"),
                )
                await gateway_precheck(ctx, caller)
                return await view(request, ctx, caller, *args, **kwargs)
            except NebulaError as error:
                refusal = await gateway_refusal(ctx, caller, error)
                return error_response(refusal, request_id=ctx.request_id)

        return wrapper

    return decorate


def read_json_body(request: HttpRequest) -> bytes:
    """The raw body of a JSON request, or 415/413."""
    content_type = request.content_type or ""
    if content_type and content_type not in ("application/json", "text/plain"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not '{content_type}'.", param=None
        )
    # Daphne refuses bodies over the limit as they arrive (infra.http_server); this covers
    # other servers.
    length = request.META.get("CONTENT_LENGTH") or "0"
    too_large = PayloadTooLarge(
        f"The request body is larger than {settings.NEBULA_MAX_BODY_BYTES} bytes."
    )
    if not length.isdigit() or int(length) > settings.NEBULA_MAX_BODY_BYTES:
        raise too_large
    body = request.body
    if len(body) > settings.NEBULA_MAX_BODY_BYTES:
        raise too_large
    return body


def json_response(data: object, *, headers: dict[str, str], status: int = 200) -> HttpResponse:
    response = HttpResponse(orjson.dumps(data), content_type="application/json", status=status)
    for name, value in headers.items():
        response[name] = value
    return response
