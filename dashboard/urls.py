from __future__ import annotations

from django.urls import path

from dashboard import views

urlpatterns = [
    path("", views.overview, name="dashboard-overview"),
    path("keys/", views.keys, name="dashboard-keys"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="dashboard-key-revoke"),
    path("models/", views.models, name="dashboard-models"),
    path("models/connect/", views.model_connect, name="dashboard-model-connect"),
    path("models/<str:name>/scale/", views.model_scale, name="dashboard-model-scale"),
    path("models/<str:name>/undeploy/", views.model_undeploy, name="dashboard-model-undeploy"),
    path("chat/", views.chat, name="dashboard-chat"),
    path("usage/", views.usage, name="dashboard-usage"),
]
