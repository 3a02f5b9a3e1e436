"""``/api/v1/budgets/`` and ``/api/v1/webhooks/``."""

urlpatterns: list = []
