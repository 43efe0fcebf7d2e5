"""`/v1/chat/completions` and `/v1/models`: async views on the lean API handler (see
nebula_site.middleware.ApiASGIHandler). They parse, call the services, and render."""

from __future__ import annotations

import asyncio

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from inference.responses import chat_completion, sse_events
from inference.schemas import parse_chat_request
from inference.services import RequestContext, completion_submit, gateway_admit
from keys.auth import INVALID_KEY_MESSAGE, key_info_for_secret, parse_bearer
from models_registry.catalog import ModelInfo, catalog_snapshot
from nebula_site.errors import (
    AuthenticationFailed,
    NebulaError,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_response,
)
from nebula_site.errors import InvalidRequest as _InvalidRequest


def _json(data: object, *, headers: dict[str, str], status: int = 200) -> HttpResponse:
    response = HttpResponse(orjson.dumps(data), content_type="application/json", status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _method_not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    error = _InvalidRequest(
        f"Method {request.method} is not allowed here; use {allowed}.", code="method_not_allowed"
    )
    error.status = 405
    response = error_response(error, request_id=request.request_id)  # type: ignore[attr-defined]
    response["Allow"] = allowed
    return response


def _body(request: HttpRequest) -> bytes:
    content_type = request.content_type or ""
    if content_type and content_type not in ("application/json", "text/plain"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not '{content_type}'.", param=None
        )
    # Daphne refuses bodies over the limit as they arrive (nebula_site.http_server); this
    # covers other servers.
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


async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    ctx = RequestContext(request_id=request.request_id, endpoint="/v1/chat/completions")  # type: ignore[attr-defined]
    try:
        secret = parse_bearer(request.headers.get("Authorization"))
        # Unknown keys get 401 before anything looks at the body, as OpenAI does.
        key, _ = await key_info_for_secret(secret)
        if key is None:
            raise AuthenticationFailed(INVALID_KEY_MESSAGE)
        ctx.key = key
        body = parse_chat_request(_body(request))
        ctx.model, ctx.stream = body.model, bool(body.stream)
        completion = await completion_submit(ctx, credential=secret, request=body)
    except NebulaError as error:
        await ctx.record_refusal(error)
        return error_response(error, request_id=ctx.request_id)
    response: HttpResponseBase
    try:
        if body.stream:
            # Hold the response until a worker has the job, so a full queue still gets a 503.
            await completion.wait_started()
            response = StreamingHttpResponse(
                sse_events(completion, body), content_type="text/event-stream"
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
        else:
            done = await completion.result()
            completion.close()
            response = _json(chat_completion(ctx.request_id, body.model, done), headers={})
    except NebulaError as error:
        completion.close()
        await ctx.record_refusal(error)
        return error_response(error, request_id=ctx.request_id)
    except asyncio.CancelledError:
        completion.close()  # the client went away
        raise
    for name, value in completion.headers.items():
        response[name] = value
    return response


def _model_object(model: ModelInfo) -> dict[str, object]:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
    }


async def _visible_models(
    request: HttpRequest, ctx: RequestContext
) -> tuple[list[ModelInfo], dict[str, str]]:
    secret = parse_bearer(request.headers.get("Authorization"))
    admitted = await gateway_admit(ctx, credential=secret)
    catalog, _ = await catalog_snapshot()
    models = [
        model
        for model in sorted(catalog.values(), key=lambda m: m.name)
        if model.is_ready and admitted.key.may_use(model.name)
    ]
    return models, admitted.admission.headers()


async def list_models(request: HttpRequest) -> HttpResponseBase:
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    ctx = RequestContext(request_id=request.request_id, endpoint="/v1/models")  # type: ignore[attr-defined]
    try:
        models, headers = await _visible_models(request, ctx)
    except NebulaError as error:
        await ctx.record_refusal(error)
        return error_response(error, request_id=ctx.request_id)
    await ctx.record(status=200)
    return _json({"object": "list", "data": [_model_object(m) for m in models]}, headers=headers)


async def retrieve_model(request: HttpRequest, model_id: str) -> HttpResponseBase:
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    ctx = RequestContext(request_id=request.request_id, endpoint="/v1/models/{id}", model=model_id)  # type: ignore[attr-defined]
    try:
        models, headers = await _visible_models(request, ctx)
        found = next((model for model in models if model.name == model_id), None)
        if found is None:
            error = NotFound(
                f"The model '{model_id}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
            error.headers.update(headers)
            raise error
    except NebulaError as error:
        await ctx.record_refusal(error)
        return error_response(error, request_id=ctx.request_id)
    await ctx.record(status=200)
    return _json(_model_object(found), headers=headers)


async def baseline(request: HttpRequest) -> HttpResponse:
    """The benchmark's yardstick: a trivial async view on the same handler, no I/O at all."""
    return HttpResponse(b'{"ok":true}', content_type="application/json")
