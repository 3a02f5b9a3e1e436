"""The Alerts page (channels, webhooks, delivery log), under /app/<org_slug>/."""

from django.urls import path

from apps.budgets import alert_views

org_urlpatterns: list = [
    path("alerts/", alert_views.AlertsView.as_view(), name="alerts"),
    path("alerts/email/", alert_views.EmailAlertsView.as_view(), name="alert_email"),
    path("alerts/slack/", alert_views.SlackWebhookView.as_view(), name="alert_slack"),
    path(
        "alerts/slack/remove/",
        alert_views.SlackWebhookRemoveView.as_view(),
        name="alert_slack_remove",
    ),
    path("alerts/webhooks/", alert_views.WebhookCreateView.as_view(), name="alert_webhook_create"),
    path(
        "alerts/webhooks/created/",
        alert_views.WebhookCreatedView.as_view(),
        name="alert_webhook_created",
    ),
    path(
        "alerts/webhooks/<int:pk>/delete/",
        alert_views.WebhookDeleteView.as_view(),
        name="alert_webhook_delete",
    ),
]
