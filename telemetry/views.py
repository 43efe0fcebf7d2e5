"""`/health`, `/metrics` and `/metrics/prometheus`."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from keys.access import actor_from_request, require_operator
from telemetry.health import health_report
from telemetry.prometheus import prometheus_text
from telemetry.services import TimeRange, usage_report


class HealthView(APIView):
    """Public, so load balancers can probe it; operators logged in also see each worker."""

    permission_classes = [AllowAny]
    authentication_classes = [SessionAuthentication]

    @extend_schema(operation_id="health", responses={200: dict, 503: dict})
    def get(self, request: Request) -> Response:
        detailed = request.user.is_authenticated and actor_from_request(request).is_operator
        ok, report = health_report(detailed=detailed)
        return Response(report, status=200 if ok else 503)


class MetricsView(APIView):
    """Usage per key. A key sees its own; a user their keys'; operators and admin keys all."""

    @extend_schema(
        operation_id="metrics",
        parameters=[
            OpenApiParameter("since", str, description="ISO 8601 time or Unix seconds."),
            OpenApiParameter("until", str, description="ISO 8601 time or Unix seconds (now)."),
            OpenApiParameter(
                "window", str, description="Instead of since: 15m, 24h (default), 7d."
            ),
            OpenApiParameter("key", int, description="Only this key (by id)."),
            OpenApiParameter("model", str, description="Only this model."),
        ],
        responses={200: dict},
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        time_range = TimeRange.parse(params.get("since"), params.get("until"), params.get("window"))
        report = usage_report(
            actor=actor_from_request(request),
            time_range=time_range,
            key_id=params.get("key"),
            model=params.get("model"),
        )
        return Response(report)


class PrometheusView(APIView):
    """Prometheus exposition for the whole fleet: operators and admin keys (for the scraper)."""

    @extend_schema(operation_id="metrics_prometheus", responses={(200, "text/plain"): str})
    def get(self, request: Request) -> HttpResponse:
        require_operator(actor_from_request(request))
        return HttpResponse(prometheus_text(), content_type="text/plain; version=0.0.4")
