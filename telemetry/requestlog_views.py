"""`/requests` (the request log, in pages) and `/requests.csv` (the same filtered view, whole)."""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from keys.access import actor_from_request
from telemetry.requestlog import (
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    RequestQuery,
    parse_limit,
    request_page,
    request_row,
    requests_csv,
)

_FILTER_PARAMETERS = [
    OpenApiParameter("key", int, description="Only this key's requests (by id)."),
    OpenApiParameter("model", str, description="Only this model's."),
    OpenApiParameter(
        "status", str, description="An HTTP status (429) or a class of them (2xx, 4xx, 5xx)."
    ),
    OpenApiParameter("since", str, description="From this time on: ISO 8601 or Unix seconds."),
    OpenApiParameter("until", str, description="Before this time: ISO 8601 or Unix seconds."),
]


class RequestRowSerializer(serializers.Serializer[Any]):
    """For the schema: what `telemetry.requestlog.request_row` gives."""

    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    request_id = serializers.CharField()
    key_id = serializers.IntegerField(allow_null=True)
    key_name = serializers.CharField()
    key_prefix = serializers.CharField()
    owner = serializers.CharField()
    model = serializers.CharField()
    endpoint = serializers.CharField()
    client = serializers.CharField()
    status = serializers.IntegerField()
    finish_reason = serializers.CharField()
    error_code = serializers.CharField()
    stream = serializers.BooleanField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=10)
    queue_ms = serializers.FloatField(allow_null=True)
    ttft_ms = serializers.FloatField(allow_null=True)
    duration_ms = serializers.FloatField(allow_null=True)
    worker = serializers.CharField(allow_null=True, help_text="Operators only; null otherwise.")


class RequestListView(APIView):
    """A key sees its own requests; a user their keys' and their teams' keys'; operators all."""

    @extend_schema(
        operation_id="requests_list",
        parameters=[
            *_FILTER_PARAMETERS,
            OpenApiParameter("cursor", str, description="The previous page's `next_cursor`."),
            OpenApiParameter(
                "limit", int, description=f"Rows per page: 1 to {MAX_PAGE_SIZE} ({PAGE_SIZE})."
            ),
        ],
        responses=inline_serializer(
            "RequestList",
            {
                "object": serializers.CharField(),
                "data": RequestRowSerializer(many=True),
                "next_cursor": serializers.CharField(allow_null=True),
                "next": serializers.CharField(allow_null=True),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        actor = actor_from_request(request)
        params = request.query_params
        query = RequestQuery.parse(params, extra=("cursor", "limit"))
        limit = parse_limit(params.get("limit"))
        page = request_page(actor=actor, query=query, cursor=params.get("cursor"), limit=limit)
        next_link = None
        if page.next_cursor:
            following = params.copy()
            following["cursor"] = page.next_cursor
            next_link = request.build_absolute_uri(f"{request.path}?{following.urlencode()}")
        return Response(
            {
                "object": "list",
                "data": [request_row(r, operator=actor.is_operator) for r in page.records],
                "next_cursor": page.next_cursor,
                "next": next_link,
            }
        )


class RequestExportView(APIView):
    """The filtered log as CSV, streamed: every matching row, whatever its length."""

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # The body is CSV whatever the client accepts; JSON renders only this view's errors.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="requests_export",
        parameters=_FILTER_PARAMETERS,
        responses={(200, "text/csv"): str},
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        actor = actor_from_request(request)
        query = RequestQuery.parse(request.query_params)
        response = StreamingHttpResponse(
            requests_csv(actor=actor, query=query), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = 'attachment; filename="nebula-requests.csv"'
        response["Cache-Control"] = "no-store"
        return response
