"""The Budgets pages, under /app/<org_slug>/."""

from django.urls import path

from apps.budgets import views

org_urlpatterns: list = [
    path("budgets/", views.BudgetsView.as_view(), name="budgets"),
    path("budgets/<str:budget_id>/", views.BudgetView.as_view(), name="budget"),
    path("budgets/<str:budget_id>/delete/", views.BudgetDeleteView.as_view(), name="budget_delete"),
]
