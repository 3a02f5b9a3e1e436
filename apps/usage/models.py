from django.db import models

from apps.accounts.tenancy import TenantModel


class Customer(TenantModel):
    """An end customer of the organization, named by the X-Costr-Customer header."""

    external_id = models.CharField(max_length=255)
    name = models.CharField(max_length=255, blank=True)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "external_id"], name="usage_customer_external_id_unique"
            )
        ]

    def __str__(self):
        return self.name or self.external_id


class Outcome(models.TextChoices):
    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_DISCONNECTED = "upstream_disconnected"
    COSTR_ERROR = "costr_error"


class PriceSource(models.TextChoices):
    CATALOG = "catalog"
    OVERRIDE = "override"
    UNPRICED = "unpriced"


class UsageEvent(TenantModel):
    """One forwarded request: metadata only, never content."""

    request_id = models.CharField(max_length=64, unique=True)
    timestamp = models.DateTimeField()
    token = models.ForeignKey(
        "keys.ProxyToken", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    provider = models.CharField(max_length=16)
    endpoint = models.CharField(max_length=16)
    model = models.CharField(max_length=255, blank=True)
    requested_model = models.CharField(max_length=255, blank=True)
    customer = models.ForeignKey(
        Customer, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    properties = models.JSONField(default=dict, blank=True)
    status = models.PositiveSmallIntegerField()
    stream = models.BooleanField(default=False)
    outcome = models.CharField(max_length=24, choices=Outcome.choices)
    input_tokens = models.BigIntegerField(null=True)
    cached_input_tokens = models.BigIntegerField(null=True)
    cache_write_tokens = models.BigIntegerField(null=True)
    cache_write_1h_tokens = models.BigIntegerField(null=True)
    output_tokens = models.BigIntegerField(null=True)
    reasoning_tokens = models.BigIntegerField(null=True)
    service_tier = models.CharField(max_length=16, blank=True)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=12, null=True)
    price_source = models.CharField(
        max_length=10, choices=PriceSource.choices, default=PriceSource.UNPRICED
    )
    # The provider's own usage object, kept so past events can be re-priced. It holds counts,
    # never content.
    raw_usage = models.JSONField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField()
    ttfb_ms = models.PositiveIntegerField(null=True)
    overhead_ms = models.FloatField(null=True)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "-timestamp"], name="usage_event_org_time"),
            models.Index(
                fields=["organization", "customer", "timestamp"], name="usage_event_org_cust_time"
            ),
            models.Index(
                fields=["organization", "model", "timestamp"], name="usage_event_org_model_time"
            ),
        ]

    def __str__(self):
        return f"{self.provider} {self.endpoint} {self.model} {self.request_id}"


class PriceOverride(TenantModel):
    """An organization's own price for matching models: a negotiated discount, a fine-tune, a
    self-hosted model. Prices are USD per million tokens."""

    model_pattern = models.CharField(
        max_length=255, help_text="Model name, or a pattern with * (e.g. gpt-4o*)."
    )
    provider = models.CharField(max_length=16, blank=True, help_text="Empty: any provider.")
    valid_from = models.DateTimeField()
    input_per_mtok = models.DecimalField(max_digits=14, decimal_places=6)
    cached_input_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True
    )
    cache_write_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True
    )
    output_per_mtok = models.DecimalField(max_digits=14, decimal_places=6)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_pattern", "-valid_from"]

    def __str__(self):
        return f"{self.model_pattern} from {self.valid_from:%Y-%m-%d}"

    def as_price(self):
        from apps.usage.pricing import OverridePrice

        return OverridePrice(
            model_pattern=self.model_pattern,
            provider=self.provider,
            valid_from=self.valid_from,
            input_per_mtok=self.input_per_mtok,
            output_per_mtok=self.output_per_mtok,
            cached_input_per_mtok=self.cached_input_per_mtok,
            cache_write_per_mtok=self.cache_write_per_mtok,
        )
