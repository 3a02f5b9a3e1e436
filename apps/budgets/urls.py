"""The Budgets pages, under /app/<org_slug>/."""

org_urlpatterns: list = []
