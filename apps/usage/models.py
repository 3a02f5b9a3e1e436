from django.db import models

from apps.accounts.tenancy import TenantModel
from apps.usage.metering.contract import MAX_SOURCE_LENGTH, OUTCOMES, SOURCE_PROXY


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


# The metering contract's outcome names as choices (labels "Ok", "Upstream Error", ...).
Outcome = models.TextChoices("Outcome", [(name.upper(), name) for name in OUTCOMES])


class PriceSource(models.TextChoices):
    """Why an event's cost is what it is (DESIGN.md, "Usage event"; the rule is
    ``apps.usage.metering.events.event_price``)."""

    CATALOG = "catalog"  # priced from genai-prices
    OVERRIDE = "override"  # priced by the organization's own price
    UNPRICED = "unpriced"  # usage known, no price for the model: cost null
    NO_USAGE = "no_usage"  # the provider bills nothing (an error, a models list): cost 0
    USAGE_UNKNOWN = "usage_unknown"  # billable and succeeded, usage unreadable: cost null


def _organization_without_own_index(**kwargs):
    """The tenant key, for tables whose composite indexes all lead with it: a separate index on
    it alone would only be one more to maintain on every insert."""
    return models.ForeignKey(
        "accounts.Organization",
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
        **kwargs,
    )


class UsageEvent(TenantModel):
    """One forwarded request: metadata only, never content.

    The unique request id is a constraint rather than ``unique=True``, which on PostgreSQL would
    add a second (``varchar_pattern_ops``) index nothing uses; the writer's ``ON CONFLICT
    (request_id)`` relies on it.

    Its foreign keys have no constraint in the database (``db_constraint=False``), as is usual
    for a high-volume append-only table: checking three of them per row at commit was a fifth
    of the writer's time. Django still applies ``on_delete`` (CASCADE, SET_NULL) itself, and the
    writer checks organizations and tokens and creates customers in the transaction that uses
    them; only a deletion racing a write could leave an id pointing nowhere.
    """

    organization = _organization_without_own_index(db_constraint=False)
    request_id = models.CharField(max_length=64)
    timestamp = models.DateTimeField()
    token = models.ForeignKey(
        "keys.ProxyToken",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
    )
    provider = models.CharField(max_length=16)
    endpoint = models.CharField(max_length=16)
    model = models.CharField(max_length=255, blank=True)
    requested_model = models.CharField(max_length=255, blank=True)
    customer = models.ForeignKey(
        Customer,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
    )
    properties = models.JSONField(default=dict, blank=True)
    status = models.PositiveSmallIntegerField()
    stream = models.BooleanField(default=False)
    outcome = models.CharField(max_length=24, choices=Outcome.choices)
    # ``proxy`` for a call Costr forwarded, else what the ingest API's record named.
    source = models.CharField(max_length=MAX_SOURCE_LENGTH, default=SOURCE_PROXY)
    input_tokens = models.BigIntegerField(null=True)
    cached_input_tokens = models.BigIntegerField(null=True)
    cache_write_tokens = models.BigIntegerField(null=True)
    cache_write_1h_tokens = models.BigIntegerField(null=True)
    output_tokens = models.BigIntegerField(null=True)
    reasoning_tokens = models.BigIntegerField(null=True)
    # Usage beyond the token counts that prices a request (``contract.USAGE_DETAIL_KEYS``: the
    # audio share of the tokens, audio seconds, input characters), non-negative numbers only;
    # null when the provider reported none.
    usage_details = models.JSONField(null=True, blank=True)
    service_tier = models.CharField(max_length=16, blank=True)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=12, null=True)
    price_source = models.CharField(
        max_length=16, choices=PriceSource.choices, default=PriceSource.UNPRICED
    )
    # The provider's own usage object, kept so past events can be re-priced. It holds counts,
    # never content.
    raw_usage = models.JSONField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField()
    ttfb_ms = models.PositiveIntegerField(null=True)
    overhead_ms = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["request_id"], name="usage_event_request_id_unique")
        ]
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


class PendingReprice(TenantModel):
    """A re-pricing someone asked for that has not finished yet. Written in the transaction that
    records the request and deleted by the task when it is done, so a request whose task was
    never queued (the broker was down) or was lost (a worker died) is still run: the sweep
    ``usage.reprices_resume`` queues it again."""

    since = models.DateTimeField(null=True, blank=True)  # None: every event
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["requested_at"]

    def __str__(self):
        return f"re-pricing since {self.since:%Y-%m-%d %H:%M}" if self.since else "re-pricing"


class UsageSums(models.Model):
    """The counters every rollup keeps, as fields. What each counts, and how the writer, rebuilds
    and reports compute them, is ``apps.usage.metering.counters``."""

    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    cache_write_1h_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=12, default=0)
    unpriced_requests = models.BigIntegerField(default=0)
    usage_unknown_requests = models.BigIntegerField(default=0)
    latency_ms_sum = models.BigIntegerField(default=0)
    ttfb_ms_sum = models.BigIntegerField(default=0)
    ttfb_count = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class DailyRollup(TenantModel, UsageSums):
    """Per organization, UTC day, customer, provider and model: the sums dashboards read, so a long
    range never scans raw events. The writer adds every newly stored event in the transaction that
    stores it; ``usage_reprice`` rebuilds a day from its events.

    ``customer`` is the customer's external id ("" for requests without one), not a foreign key:
    the unique key then holds on every database (NULLs never conflict) and reports group by the id
    people know without a join.

    What the counters count (an error, an unpriced or usage-unknown request, a null token count)
    is defined in ``apps.usage.metering.counters``.

    The unique key's index, led by (organization, day), is the index for an org's date range.
    On PostgreSQL the table is kept with free space in each page (fillfactor, migration 0003)
    so that the writer's constant ``count = count + n`` updates stay HOT: no index touched.

    ``cost_usd`` is exact to 12 places on PostgreSQL (numeric arithmetic in the upsert). SQLite
    keeps DECIMAL columns with NUMERIC affinity, i.e. as a double: the sum there is exact while a
    row's total needs at most 15 significant digits (below $1,000 at 12 places), which covers the
    embedded mode's scale; the events' own costs are unaffected.
    """

    organization = _organization_without_own_index()
    day = models.DateField()
    customer = models.CharField(max_length=255, blank=True, default="")
    provider = models.CharField(max_length=16)
    model = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "day", "customer", "provider", "model"],
                name="usage_rollup_unique",
            )
        ]

    def __str__(self):
        return f"{self.day} {self.customer or '-'} {self.provider} {self.model}"


class RefusalCount(TenantModel):
    """Requests the proxy refused before forwarding (bad token 401, missing scope 403, no provider
    key 400, body too large 413), per organization, UTC day, status and error code. Such requests
    make no usage event (DESIGN.md); the dashboard shows these counts instead."""

    organization = _organization_without_own_index()
    day = models.DateField()
    status = models.PositiveSmallIntegerField()
    code = models.CharField(max_length=64)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "day", "status", "code"], name="usage_refusal_unique"
            )
        ]

    def __str__(self):
        return f"{self.day} {self.status} {self.code}: {self.count}"


# The longest property name a property rollup keeps (longer names are not rolled up), and where a
# value is cut: a report groups by values people chose, not by free text.
PROPERTY_NAME_MAX_LENGTH = 128
PROPERTY_VALUE_MAX_LENGTH = 255


class OrganizationDailyRollup(TenantModel, UsageSums):
    """Per organization, UTC day, provider and model: ``DailyRollup`` without the customer, so
    totals, days, models and providers read a few rows a day instead of one per customer. It also
    keeps a latency histogram (``metering.counters.LATENCY_BOUNDS_MS``): requests per latency
    bucket, from which percentiles are read to the bucket's resolution
    (``apps.reporting.selectors``).

    The writer adds to it in the transaction that adds to ``DailyRollup``, with the same
    definitions; ``rollups_rebuild_day`` rebuilds it. Indexed by its unique key, which leads with
    (organization, day).
    """

    organization = _organization_without_own_index()
    day = models.DateField()
    provider = models.CharField(max_length=16)
    model = models.CharField(max_length=255, blank=True, default="")
    # The histogram: one field per bucket, named as ``metering.counters.LATENCY_BUCKETS``.
    latency_bucket_00 = models.BigIntegerField(default=0)
    latency_bucket_01 = models.BigIntegerField(default=0)
    latency_bucket_02 = models.BigIntegerField(default=0)
    latency_bucket_03 = models.BigIntegerField(default=0)
    latency_bucket_04 = models.BigIntegerField(default=0)
    latency_bucket_05 = models.BigIntegerField(default=0)
    latency_bucket_06 = models.BigIntegerField(default=0)
    latency_bucket_07 = models.BigIntegerField(default=0)
    latency_bucket_08 = models.BigIntegerField(default=0)
    latency_bucket_09 = models.BigIntegerField(default=0)
    latency_bucket_10 = models.BigIntegerField(default=0)
    latency_bucket_11 = models.BigIntegerField(default=0)
    latency_bucket_12 = models.BigIntegerField(default=0)
    latency_bucket_13 = models.BigIntegerField(default=0)
    latency_bucket_14 = models.BigIntegerField(default=0)
    latency_bucket_15 = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "day", "provider", "model"],
                name="usage_org_rollup_unique",
            )
        ]

    def __str__(self):
        return f"{self.day} {self.provider} {self.model}"


class PropertyDailyRollup(TenantModel, UsageSums):
    """Per organization, UTC day, property name and value: the sums of the requests that carried
    that value, so "spend by feature" never groups raw events by a JSON key. A request counts once
    under each of its properties (at most ``contract.MAX_PROPERTIES``); requests without the
    property are the period's totals minus the sum over its values. Names longer than
    ``PROPERTY_NAME_MAX_LENGTH`` are not rolled up; values are cut to
    ``PROPERTY_VALUE_MAX_LENGTH``; a JSON null is no value. A value that is not a string counts
    as its JSON text (``true``, ``3``), as ``properties->>'name'`` reads it.
    """

    organization = _organization_without_own_index()
    day = models.DateField()
    name = models.CharField(max_length=PROPERTY_NAME_MAX_LENGTH)
    value = models.CharField(max_length=PROPERTY_VALUE_MAX_LENGTH)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "day", "name", "value"],
                name="usage_property_rollup_unique",
            )
        ]

    def __str__(self):
        return f"{self.day} {self.name}={self.value}"


class TrackedBatch(TenantModel):
    """A provider batch (OpenAI ``/v1/batches``, Anthropic ``/v1/messages/batches``) created
    through the proxy, which Costr follows until it ends and then meters item by item
    (``apps.usage.batch_polling``). Recorded by the usage writer from the creating request's
    record (``contract.BatchCreated``), in the transaction that stores that request's event.

    The customer, properties and token are the creating request's: every item is attributed to
    them. ``key_secret_id`` names the provider key the batch was created with (its vault id, not
    the key), so the batch is polled with the same provider account. The state lives here, so a
    restarted worker goes on where the last one stopped: ``next_check_at`` is when the batch is
    due (and, while a poll runs, a lease that keeps a second worker off it), ``attempts`` counts
    the polls that found it unfinished or could not reach the provider (the back-off grows with
    it), ``items_metered`` how many items the last complete read of its results found.
    """

    class Status(models.TextChoices):
        TRACKING = "tracking"  # not ended, or ended and its results not yet read whole
        METERED = "metered"  # every item of its results is stored as an event
        ABANDONED = "abandoned"  # given up after the tracking limit (last_error says why)

    provider = models.CharField(max_length=16)
    batch_id = models.CharField(max_length=128)
    key_secret_id = models.UUIDField(null=True, blank=True)
    customer = models.CharField(max_length=255, blank=True, default="")
    properties = models.JSONField(default=dict, blank=True)
    token = models.ForeignKey(
        "keys.ProxyToken",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
    )
    created_at = models.DateTimeField()  # when the creating request reached Costr
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRACKING)
    next_check_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    items_metered = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=255, blank=True, default="")
    ended_at = models.DateTimeField(null=True, blank=True)  # metered or abandoned

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "provider", "batch_id"], name="usage_tracked_batch_unique"
            )
        ]
        indexes = [
            models.Index(
                fields=["next_check_at"],
                condition=models.Q(status="tracking"),
                name="usage_tracked_batch_due",
            )
        ]

    def __str__(self):
        return f"{self.provider} batch {self.batch_id} ({self.status})"
