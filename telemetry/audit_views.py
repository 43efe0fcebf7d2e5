"""`/audit`: the audit log for operators, filterable, in pages (a cursor, newest first)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.errors import InvalidRequest
from infra.serializers import StrictSerializer
from keys.access import actor_from_request, require_operator
from telemetry.audit import AUDIT_FIELDS, audit_events
from telemetry.models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    actor = serializers.CharField(source="actor_label", help_text="Who acted, as shown.")
    username = serializers.SerializerMethodField(help_text="The acting user, if any.")

    class Meta:
        model = AuditEvent
        fields = ["id", *AUDIT_FIELDS[:2], "username", *AUDIT_FIELDS[2:]]
        read_only_fields = fields

    def get_username(self, event: AuditEvent) -> str | None:
        return event.actor.get_username() if event.actor_id and event.actor else None


class AuditFilterSerializer(StrictSerializer):
    action = serializers.CharField(
        required=False, help_text='e.g. "key.rotate"; ending in "." a prefix ("model.").'
    )
    target_type = serializers.ChoiceField(
        required=False, choices=["api_key", "team", "deployment", "price", "budget"]
    )
    target_id = serializers.CharField(required=False, max_length=64)
    actor = serializers.CharField(required=False, help_text="The acting user's username.")
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    cursor = serializers.CharField(required=False, help_text="From the previous page's `next`.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=200)


class AuditPages(CursorPagination):
    ordering = "-id"  # ids only grow: a page boundary is exact however many share a second
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200

    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> Any:
        try:
            return super().paginate_queryset(queryset, request, view)
        except NotFound:  # DRF's answer to a cursor it cannot read: the client's mistake
            raise InvalidRequest(
                "Invalid cursor: use the `next` link as given.", param="cursor"
            ) from None


class AuditListView(APIView):
    @extend_schema(
        parameters=[AuditFilterSerializer],
        responses=inline_serializer(
            "AuditList",
            {
                "object": serializers.CharField(),
                "data": AuditEventSerializer(many=True),
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
            },
        ),
        operation_id="audit_list",
    )
    def get(self, request: Request) -> Response:
        require_operator(actor_from_request(request))
        filters = AuditFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        query: dict[str, Any] = dict(filters.validated_data)
        query.pop("cursor", None)
        query.pop("limit", None)
        pages = AuditPages()
        events = pages.paginate_queryset(audit_events(**query), request, view=self) or []
        return Response(
            {
                "object": "list",
                "data": AuditEventSerializer(events, many=True).data,
                "next": pages.get_next_link(),
                "previous": pages.get_previous_link(),
            }
        )
