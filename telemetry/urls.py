from django.urls import path

from telemetry import audit_views, requestlog_views, views

urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
    path("metrics", views.MetricsView.as_view(), name="metrics"),
    path("metrics/prometheus", views.PrometheusView.as_view(), name="metrics-prometheus"),
    path("requests", requestlog_views.RequestListView.as_view(), name="requests"),
    path("requests.csv", requestlog_views.RequestExportView.as_view(), name="requests-csv"),
    path("audit", audit_views.AuditListView.as_view(), name="audit"),
]
