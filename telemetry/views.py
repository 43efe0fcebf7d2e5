"""`/health`, `/metrics` and `/metrics/prometheus`."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from keys.access import actor_from_request
from telemetry.health import health_report


class HealthView(APIView):
    """Public, so load balancers can probe it; operators logged in also see each worker."""

    permission_classes = [AllowAny]
    authentication_classes = [SessionAuthentication]

    @extend_schema(operation_id="health", responses={200: dict, 503: dict})
    def get(self, request: Request) -> Response:
        detailed = request.user.is_authenticated and actor_from_request(request).is_operator
        ok, report = health_report(detailed=detailed)
        return Response(report, status=200 if ok else 503)
