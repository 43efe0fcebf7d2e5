from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import include, path
from django.views import defaults
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from inference import views as inference_views
from infra.errors import (
    InternalError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    error_response,
)

urlpatterns = [
    path("v1/chat/completions", inference_views.chat_completions, name="chat-completions"),
    path("v1/completions", inference_views.completions, name="completions"),
    path("v1/embeddings", inference_views.embeddings, name="v1-embeddings"),
    path("v1/models", inference_views.list_models, name="v1-models"),
    path("v1/models/<str:model_id>", inference_views.retrieve_model, name="v1-model"),
    path("", include("keys.urls")),
    path("", include("models_registry.urls")),
    path("", include("telemetry.urls")),
    path("", include("billing.urls")),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(pattern_name="dashboard-overview"), name="home"),
    path("dashboard/", include("dashboard.urls")),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]

if settings.NEBULA_BENCH_BASELINE:
    urlpatterns.append(path("bench/baseline", inference_views.baseline, name="bench-baseline"))

_API_PREFIXES = (
    *("/v1/", "/apikeys", "/models", "/metrics", "/health", "/api/", "/bench/"),
    *("/teams", "/audit", "/prices", "/budgets", "/requests"),
)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(_API_PREFIXES)


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's refusals of suspicious requests (a Host not in ALLOWED_HOSTS, a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE): JSON on API URLs, not Django's HTML page."""
    if _is_api(request):
        if isinstance(exception, RequestDataTooBig):
            return error_response(
                PayloadTooLarge(
                    f"The request body is larger than {settings.NEBULA_MAX_BODY_BYTES} bytes."
                )
            )
        return error_response(InvalidRequest("Bad request.", code="bad_request"))
    return defaults.bad_request(request, exception)


def handler403(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return error_response(PermissionDenied("Permission denied."))
    return defaults.permission_denied(request, exception)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return error_response(
            NotFound(f"Unknown endpoint: {request.method} {request.path}", code="unknown_url")
        )
    return render(request, "404.html", status=404)


def handler500(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return error_response(
            InternalError("The server had an error while processing your request.")
        )
    return render(request, "500.html", status=500)
