from django.urls import path

from models_registry import views

urlpatterns = [
    path("models", views.DeploymentListView.as_view(), name="models"),
    path("models/<str:name>", views.DeploymentDetailView.as_view(), name="model-detail"),
]
