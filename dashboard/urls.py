from __future__ import annotations

from django.urls import path

from dashboard import billing_views, request_views, views

urlpatterns = [
    path("", views.overview, name="dashboard-overview"),
    path("keys/", views.keys, name="dashboard-keys"),
    path("keys/<int:key_id>/", views.key_detail, name="dashboard-key"),
    path("keys/<int:key_id>/rotate/", views.key_rotate, name="dashboard-key-rotate"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="dashboard-key-revoke"),
    path("teams/", views.teams, name="dashboard-teams"),
    path("teams/<int:team_id>/", views.team_detail, name="dashboard-team"),
    path("teams/<int:team_id>/members/", views.team_member_add, name="dashboard-team-members"),
    path(
        "teams/<int:team_id>/members/<str:username>/",
        views.team_member_change,
        name="dashboard-team-member",
    ),
    path("models/", views.models, name="dashboard-models"),
    path("models/connect/", views.model_connect, name="dashboard-model-connect"),
    path("models/<str:name>/scale/", views.model_scale, name="dashboard-model-scale"),
    path("models/<str:name>/undeploy/", views.model_undeploy, name="dashboard-model-undeploy"),
    path("chat/", views.chat, name="dashboard-chat"),
    path("usage/", views.usage, name="dashboard-usage"),
    path("billing/", billing_views.billing, name="dashboard-billing"),
    path("billing/prices/", billing_views.price_add, name="dashboard-price-add"),
    path("billing/budgets/", billing_views.budget_add, name="dashboard-budget-add"),
    path("keys/<int:key_id>/budget/", billing_views.key_budget, name="dashboard-key-budget"),
    path("requests/", request_views.requests_log, name="dashboard-requests"),
]
