from django.urls import path

from billing import views

urlpatterns = [
    path("prices", views.PriceListView.as_view(), name="prices"),
    path("models/<str:name>/prices", views.ModelPriceView.as_view(), name="model-prices"),
    path("budgets", views.BudgetListView.as_view(), name="budgets"),
    path("budgets/<str:budget_id>", views.BudgetDetailView.as_view(), name="budget-detail"),
]
