"""The Budgets pages, under /app/<org_slug>/, and the path converters of the budgets app's ids
(the API's routes use them too): an id of another shape matches no route, so it is a 404 before
any query (a NUL in a path segment would make PostgreSQL refuse the query: a 500)."""

from django.urls import path, register_converter

from apps.budgets import views


class _PublicId:
    prefix = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.regex = cls.prefix + "_[0-9a-f]{16}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value

    @classmethod
    def example(cls, number: int) -> str:
        """An id of this shape (for suites that walk every page)."""
        return f"{cls.prefix}_{number:016x}"


class BudgetId(_PublicId):
    prefix = "bud"


class WebhookId(_PublicId):
    prefix = "wh"


register_converter(BudgetId, "budget_id")
register_converter(WebhookId, "webhook_id")

org_urlpatterns: list = [
    path("budgets/", views.BudgetsView.as_view(), name="budgets"),
    path("budgets/<budget_id:budget_id>/", views.BudgetView.as_view(), name="budget"),
    path(
        "budgets/<budget_id:budget_id>/delete/",
        views.BudgetDeleteView.as_view(),
        name="budget_delete",
    ),
]
