"""The budgets app's Celery tasks (alerts, deliveries, reconciling counters)."""
