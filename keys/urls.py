from django.urls import path

from keys import views

urlpatterns = [
    path("apikeys", views.ApiKeyListCreateView.as_view(), name="apikeys"),
    path("apikeys/<str:key_id>", views.ApiKeyDetailView.as_view(), name="apikey-detail"),
]
