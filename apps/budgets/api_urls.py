"""``/api/v1/budgets/`` and ``/api/v1/webhooks/``."""

from django.urls import path

from apps.budgets import api

urlpatterns: list = [
    path("budgets/", api.BudgetListView.as_view(), name="api_budgets"),
    path("budgets/<str:budget_id>/", api.BudgetDetailView.as_view(), name="api_budget_detail"),
]
