"""What a budget, an alert channel, a fired alert and a delivery are.

A budget caps spend for one scope over one calendar period in the organization's time zone
(DESIGN.md). Its live spend is not a column: it is kept in the reservation store
(``apps.budgets.store``) and rebuilt from rollups and events (``apps.budgets.spend``).
"""

import secrets

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models

from apps.accounts.tenancy import TenantModel
from apps.keys.models import EncryptedSecret


def new_budget_id() -> str:
    return f"bud_{secrets.token_hex(8)}"


def new_webhook_id() -> str:
    return f"wh_{secrets.token_hex(8)}"


def new_alert_id() -> str:
    return f"evt_{secrets.token_hex(8)}"


class Scope(models.TextChoices):
    ORGANIZATION = "organization", "The whole organization"
    CUSTOMER = "customer", "One customer"
    EACH_CUSTOMER = "each_customer", "Each customer (a default cap per customer)"
    TOKEN = "token", "One proxy token"
    PROPERTY = "property", "One property value"


class Period(models.TextChoices):
    DAY = "day", "Day"
    MONTH = "month", "Month"


DEFAULT_THRESHOLDS = (80, 100)


def default_thresholds() -> list[int]:
    return list(DEFAULT_THRESHOLDS)


class Budget(TenantModel):
    public_id = models.CharField(max_length=24, unique=True, default=new_budget_id, editable=False)
    scope = models.CharField(max_length=16, choices=Scope.choices)
    # The customer's external id (scope customer), as the X-Costr-Customer header names it.
    customer = models.CharField(max_length=255, blank=True, default="")
    token = models.ForeignKey(
        "keys.ProxyToken", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    property_name = models.CharField(max_length=64, blank=True, default="")
    property_value = models.CharField(max_length=255, blank=True, default="")
    period = models.CharField(max_length=8, choices=Period.choices)
    limit_usd = models.DecimalField(
        max_digits=18, decimal_places=6, validators=[MinValueValidator(0)]
    )
    # True: requests are refused at 100 %. False: alert only.
    enforce = models.BooleanField(default=True)
    # True: while the budget store cannot be reached, requests under this budget are refused
    # rather than forwarded and counted later.
    fail_closed = models.BooleanField(default=False)
    alert_thresholds = models.JSONField(default=default_thresholds)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "customer", "property_name", "property_value", "period", "id"]

    def __str__(self):
        return f"{self.public_id} ({self.scope} {self.period} ${self.limit_usd})"


class AlertSettings(TenantModel):
    """An organization's alert channels besides its webhooks: e-mail to its admins (on unless
    turned off) and a Slack incoming webhook (``SlackWebhook``)."""

    organization = models.OneToOneField(
        "accounts.Organization", on_delete=models.CASCADE, related_name="alert_settings"
    )
    email_admins = models.BooleanField(default=True)


class SlackWebhook(EncryptedSecret):
    """The organization's Slack incoming webhook URL, encrypted like a provider key: whoever
    holds it can post to the channel. Only its last characters are ever shown."""

    VAULT_PURPOSE = "slack_webhook"

    organization = models.OneToOneField(
        "accounts.Organization", on_delete=models.CASCADE, related_name="slack_webhook"
    )
    last4 = models.CharField(max_length=4)
    created_at = models.DateTimeField(auto_now_add=True)


class EventType(models.TextChoices):
    THRESHOLD = "budget.threshold_crossed", "Budget threshold crossed"
    EXCEEDED = "budget.exceeded", "Budget exceeded"
    ANOMALY = "spend.anomaly", "Spend anomaly"


class Webhook(EncryptedSecret):
    """A signed webhook endpoint. The ciphertext is its signing secret, shown once."""

    VAULT_PURPOSE = "webhook_secret"

    public_id = models.CharField(max_length=24, unique=True, default=new_webhook_id, editable=False)
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.public_id} → {self.url}"


class Alert(TenantModel):
    """One alert fired: at most one per ``dedupe_key`` (a threshold of a budget in one period,
    or a customer's anomaly on one day), which the unique constraint holds across every
    process that looks for alerts at once."""

    public_id = models.CharField(max_length=24, unique=True, default=new_alert_id, editable=False)
    type = models.CharField(max_length=32, choices=EventType.choices)
    budget = models.ForeignKey(
        Budget, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    dedupe_key = models.CharField(max_length=400)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "dedupe_key"], name="budgets_alert_once"
            )
        ]


class Channel(models.TextChoices):
    EMAIL = "email", "E-mail"
    SLACK = "slack", "Slack"
    WEBHOOK = "webhook", "Webhook"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (gave up)"


class Delivery(TenantModel):
    """One alert on one channel: its attempts, last answer and state, for the delivery log."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=8, choices=Channel.choices)
    webhook = models.ForeignKey(
        Webhook, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    state = models.CharField(
        max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="budgets_delivery_due"),
        ]
