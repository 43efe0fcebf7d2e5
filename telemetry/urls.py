from django.urls import path

from telemetry import audit_views, views

urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
    path("metrics", views.MetricsView.as_view(), name="metrics"),
    path("metrics/prometheus", views.PrometheusView.as_view(), name="metrics-prometheus"),
    path("audit", audit_views.AuditListView.as_view(), name="audit"),
]
