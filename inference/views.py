"""`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and `/v1/models`: async views
on the lean API handler (see infra.middleware.ApiASGIHandler). Each parses, calls one service,
and renders; `v1_endpoint` does the rest (method, key, refusals)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBase

from inference.edge import json_response, read_json_body, v1_endpoint
from inference.embedding_schemas import parse_embedding_request
from inference.embeddings import embeddings_body, embeddings_submit
from inference.gateway import Caller, RequestContext
from inference.responses import chat_response, model_object
from inference.schemas import parse_chat_request
from inference.services import (
    completion_submit,
    model_find,
    models_visible,
    text_completion_submit,
)
from inference.text_responses import text_completion_response
from inference.text_schemas import parse_completion_request


@v1_endpoint("POST", endpoint="/v1/chat/completions")
async def chat_completions(
    request: HttpRequest, ctx: RequestContext, caller: Caller
) -> HttpResponseBase:
    body = parse_chat_request(read_json_body(request))
    completion = await completion_submit(ctx, caller=caller, request=body)
    return await chat_response(completion, body)


@v1_endpoint("POST", endpoint="/v1/completions")
async def completions(
    request: HttpRequest, ctx: RequestContext, caller: Caller
) -> HttpResponseBase:
    body = parse_completion_request(read_json_body(request))
    completion = await text_completion_submit(ctx, caller=caller, request=body)
    return await text_completion_response(completion, body)


@v1_endpoint("POST", endpoint="/v1/embeddings")
async def embeddings(request: HttpRequest, ctx: RequestContext, caller: Caller) -> HttpResponse:
    body = parse_embedding_request(read_json_body(request))
    completion, done = await embeddings_submit(ctx, caller=caller, request=body)
    return json_response(embeddings_body(body, done), headers=completion.headers)


@v1_endpoint("GET", endpoint="/v1/models")
async def list_models(request: HttpRequest, ctx: RequestContext, caller: Caller) -> HttpResponse:
    models, headers = await models_visible(ctx, caller=caller)
    return json_response(
        {"object": "list", "data": [model_object(m) for m in models]}, headers=headers
    )


@v1_endpoint("GET", endpoint="/v1/models/{id}")
async def retrieve_model(
    request: HttpRequest, ctx: RequestContext, caller: Caller, model_id: str
) -> HttpResponse:
    model, headers = await model_find(ctx, caller=caller, model_id=model_id)
    return json_response(model_object(model), headers=headers)


async def baseline(request: HttpRequest) -> HttpResponse:
    """The benchmark's yardstick: a trivial async view on the same handler, no I/O at all."""
    return HttpResponse(b'{"ok":true}', content_type="application/json")
