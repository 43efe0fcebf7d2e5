from django.urls import path

from telemetry import views

urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
]
