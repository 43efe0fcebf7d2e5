from django.urls import path

from telemetry import views

urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
    path("metrics", views.MetricsView.as_view(), name="metrics"),
    path("metrics/prometheus", views.PrometheusView.as_view(), name="metrics-prometheus"),
]
