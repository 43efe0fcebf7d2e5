from django.urls import path

from keys import views

urlpatterns = [
    path("apikeys", views.ApiKeyListCreateView.as_view(), name="apikeys"),
    path("apikeys/<str:key_id>", views.ApiKeyDetailView.as_view(), name="apikey-detail"),
    path("apikeys/<str:key_id>/rotate", views.ApiKeyRotateView.as_view(), name="apikey-rotate"),
    path("teams", views.TeamListCreateView.as_view(), name="teams"),
    path("teams/<str:team_id>", views.TeamDetailView.as_view(), name="team-detail"),
    path("teams/<str:team_id>/members", views.TeamMemberListView.as_view(), name="team-members"),
    path(
        "teams/<str:team_id>/members/<str:username>",
        views.TeamMemberDetailView.as_view(),
        name="team-member",
    ),
]
