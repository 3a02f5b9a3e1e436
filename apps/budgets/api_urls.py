"""``/api/v1/budgets/`` and ``/api/v1/webhooks/``."""

from django.urls import path

from apps.budgets import api, urls, webhook_api  # noqa: F401 -- urls registers the id converters

urlpatterns: list = [
    path("budgets/", api.BudgetListView.as_view(), name="api_budgets"),
    path(
        "budgets/<budget_id:budget_id>/", api.BudgetDetailView.as_view(), name="api_budget_detail"
    ),
    path("webhooks/", webhook_api.WebhookListView.as_view(), name="api_webhooks"),
    path(
        "webhooks/<webhook_id:webhook_id>/",
        webhook_api.WebhookDetailView.as_view(),
        name="api_webhook_detail",
    ),
]
