"""The Alerts page (channels, webhooks, delivery log), under /app/<org_slug>/."""

org_urlpatterns: list = []
