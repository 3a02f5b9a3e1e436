"""The reporting API's shapes: the query parameters it reads and the bodies it answers with.

Money leaves as decimal strings, never as JSON numbers: a float cannot hold $0.000150000000
exactly, and a client summing floats drifts. Costs carry the 12 decimal places they are stored
with; Stripe revenue carries its currency's own places (two for USD, none for JPY).
"""

from datetime import UTC, date, datetime, time, timedelta

from rest_framework import serializers

from apps.keys.models import Provider
from apps.usage.metering.contract import ENDPOINTS
from apps.usage.models import Outcome, PriceSource

MAX_TEXT = 255
COST_DIGITS = 24
COST_PLACES = 12
# The default period of the spend report and of customers: the last 30 UTC days, today included.
DEFAULT_DAYS = 30
GROUPS = ("day", "customer", "model", "provider")
PROPERTY_GROUP = "property:"
PROPERTY_FILTER = "property."


# --- Query parameters ---------------------------------------------------------------------------


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refused here rather than failing in the database.
    if "\x00" in value:
        raise serializers.ValidationError("Contains a NUL character.")
    return value


class QueryTextField(serializers.CharField):
    """A filter's text, exactly as given (no trimming: an external id may end in a space)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", MAX_TEXT)
        kwargs.setdefault("required", False)
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("allow_blank", True)  # empty: no filter
        super().__init__(**kwargs)
        self.validators.append(_no_nul)


class BoundField(serializers.Field):
    """``start`` or ``end``: an ISO 8601 date, meaning whole UTC days, or a date and time.

    A date as ``start`` is its first instant (00:00 UTC); as ``end`` it is the last day
    included, so the period runs to 00:00 UTC of the day after. A date and time is used as it
    is, in UTC when it names no zone. A ``+02:00`` offset sent unencoded in a query string
    arrives as `` 02:00`` (a ``+`` is a space there) and is read as meant.
    """

    default_error_messages = {
        "invalid": "Use an ISO 8601 date (2026-03-01) or date and time (2026-03-01T12:00:00Z).",
        "range": "Out of range.",
    }

    def __init__(self, *, is_end: bool, **kwargs):
        self.is_end = is_end
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str) or not data or "\x00" in data:
            self.fail("invalid")
        text = data.strip()
        if "T" in text and " " in text:
            text = text.replace(" ", "+")
        try:
            day = date.fromisoformat(text)
        except ValueError:
            day = None
        try:
            if day is not None:
                if self.is_end:
                    day += timedelta(days=1)
                return datetime.combine(day, time.min, tzinfo=UTC)
            parsed = datetime.fromisoformat(text)
        except OverflowError:
            self.fail("range")
        except ValueError:
            self.fail("invalid")
        try:
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
        except (OverflowError, ValueError):
            self.fail("range")

    def to_representation(self, value):
        return value.isoformat()


class PeriodQuerySerializer(serializers.Serializer):
    """``start`` and ``end`` with a default: the last 30 UTC days, today included. ``end`` alone
    takes the 30 days before it; ``start`` alone runs to the end of today (UTC)."""

    start = BoundField(is_end=False)
    end = BoundField(is_end=True)

    def validate(self, attrs):
        now = self.context["now"]
        end = attrs.get("end") or datetime.combine(
            now.astimezone(UTC).date() + timedelta(days=1), time.min, tzinfo=UTC
        )
        try:
            start = attrs.get("start") or end - timedelta(days=DEFAULT_DAYS)
        except OverflowError:
            raise serializers.ValidationError({"end": ["Out of range."]}) from None
        if start >= end:
            raise serializers.ValidationError({"end": ["Must be after start."]})
        return {**attrs, "start": start, "end": end}


class SpendQuerySerializer(PeriodQuerySerializer):
    group_by = serializers.CharField(required=False, default="day", trim_whitespace=False)

    def validate_group_by(self, value):
        _no_nul(value)
        if value in GROUPS:
            return value
        if value.startswith(PROPERTY_GROUP):
            name = value[len(PROPERTY_GROUP) :]
            if 0 < len(name) <= MAX_TEXT:
                return value
            raise serializers.ValidationError(
                f"Name the property after 'property:', in 1 to {MAX_TEXT} characters."
            )
        raise serializers.ValidationError("Use day, customer, model, provider or property:<name>.")


class EventQuerySerializer(serializers.Serializer):
    """The events filters; ``property.<name>`` ones are read apart (their names vary)."""

    start = BoundField(is_end=False)
    end = BoundField(is_end=True)
    customer = QueryTextField()
    provider = serializers.ChoiceField(choices=Provider.values, required=False)
    model = QueryTextField()
    status = serializers.IntegerField(min_value=100, max_value=599, required=False)
    outcome = serializers.ChoiceField(choices=Outcome.values, required=False)
    price_source = serializers.ChoiceField(choices=PriceSource.values, required=False)

    def validate(self, attrs):
        start, end = attrs.get("start"), attrs.get("end")
        if start is not None and end is not None and start >= end:
            raise serializers.ValidationError({"end": ["Must be after start."]})
        properties, errors = {}, []
        for key, value in self.context["query"].items():
            if not key.startswith(PROPERTY_FILTER):
                continue
            name = key[len(PROPERTY_FILTER) :]
            if not name or len(name) > MAX_TEXT or len(value) > MAX_TEXT:
                errors.append(
                    f"{key}: a property name and value are 1 to {MAX_TEXT} characters each."
                )
            elif "\x00" in key or "\x00" in value:
                errors.append(f"{key}: contains a NUL character.")
            else:
                properties[name] = value
        if errors:
            raise serializers.ValidationError({"property": errors})
        return {**attrs, "properties": properties}


# --- Responses ----------------------------------------------------------------------------------


def _cost(**kwargs):
    return serializers.DecimalField(
        max_digits=COST_DIGITS,
        decimal_places=COST_PLACES,
        coerce_to_string=True,
        **kwargs,
    )


class UtcDateTimeField(serializers.DateTimeField):
    """ISO 8601 in UTC with a ``Z``, whatever the server's time zone."""

    def to_representation(self, value):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class UsageEventSerializer(serializers.Serializer):
    """One forwarded (or ingested) request: the usage event of the contract."""

    id = serializers.IntegerField()
    request_id = serializers.CharField()
    timestamp = UtcDateTimeField()
    provider = serializers.ChoiceField(choices=Provider.values)
    endpoint = serializers.ChoiceField(choices=ENDPOINTS)
    model = serializers.CharField(help_text="As the response reported it, else as requested.")
    requested_model = serializers.CharField()
    customer = serializers.CharField(
        source="customer.external_id",
        allow_null=True,
        help_text="The X-Costr-Customer value, or null.",
    )
    properties = serializers.DictField(child=serializers.CharField())
    status = serializers.IntegerField(help_text="The upstream HTTP status.")
    stream = serializers.BooleanField()
    outcome = serializers.ChoiceField(choices=Outcome.values)
    source = serializers.CharField(
        help_text="`proxy` for a call Costr forwarded; else what its ingest record named: "
        "`ingest` by default, `sdk_fallback` for a call the client SDK made straight to the "
        "provider while Costr was down."
    )
    input_tokens = serializers.IntegerField(
        allow_null=True, help_text="Total input, cache reads and writes included."
    )
    cached_input_tokens = serializers.IntegerField(allow_null=True, help_text="Cache reads.")
    cache_write_tokens = serializers.IntegerField(allow_null=True, help_text="All cache writes.")
    cache_write_1h_tokens = serializers.IntegerField(
        allow_null=True, help_text="Anthropic's 1-hour share of the cache writes."
    )
    output_tokens = serializers.IntegerField(
        allow_null=True, help_text="Total output, reasoning included."
    )
    reasoning_tokens = serializers.IntegerField(allow_null=True)
    usage_details = serializers.DictField(
        allow_null=True,
        help_text="Usage beyond the token counts, under genai-prices' names: input_audio_tokens, "
        "cache_audio_read_tokens, output_audio_tokens (the audio share of the token counts), "
        "audio_seconds, input_characters; null when none was reported.",
    )
    service_tier = serializers.CharField(
        help_text="The service tier the provider reported (`batch` for a batch item); empty "
        "for none."
    )
    cost_usd = _cost(
        allow_null=True, help_text="12 decimal places; null when unpriced or usage-unknown."
    )
    price_source = serializers.ChoiceField(
        choices=PriceSource.values,
        help_text="Why the cost is what it is: `catalog` or `override` (priced), `unpriced` "
        "(usage known, no price for the model: cost null), `no_usage` (the provider bills "
        "nothing: an error, a models list, count_tokens: cost 0), `usage_unknown` (a billable "
        "call succeeded but its usage could not be read: cost null).",
    )
    latency_ms = serializers.IntegerField()
    ttfb_ms = serializers.IntegerField(allow_null=True)
    overhead_ms = serializers.FloatField(allow_null=True)


class SpendFiguresSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    cost_usd = _cost(
        allow_null=True,
        help_text="The priced requests' cost (unpriced and usage-unknown ones add nothing); "
        "null when every request is unpriced or usage-unknown.",
    )
    unpriced_requests = serializers.IntegerField(
        help_text="Requests whose usage is known but whose model has no known price: counted, "
        "never priced at $0."
    )
    usage_unknown_requests = serializers.IntegerField(
        help_text="Billable requests that succeeded but whose usage could not be read: "
        "counted, never priced at $0. Requests the provider bills nothing for (errors, model "
        "lists) are neither."
    )


class SpendRowSerializer(SpendFiguresSerializer):
    key = serializers.CharField(
        allow_null=True,
        help_text="The group's plain value: `YYYY-MM-DD` (UTC) for day, the customer's external "
        "id, the model or provider name, the property's value; null for requests without a "
        "customer, without the property, or without a model name.",
    )

    def get_fields(self):
        fields = super().get_fields()
        # The contract lists `key` first.
        return {"key": fields.pop("key"), **fields}


class SpendReportSerializer(serializers.Serializer):
    group_by = serializers.CharField()
    start = UtcDateTimeField(help_text="The period's first instant (UTC).")
    end = UtcDateTimeField(
        help_text="The instant after the period (UTC); the period is [start, end)."
    )
    rows = SpendRowSerializer(many=True)
    total = SpendFiguresSerializer()


class RevenueSerializer(serializers.Serializer):
    currency = serializers.CharField(help_text="Stripe's settlement currency, lower case: usd.")
    gross = serializers.DecimalField(
        max_digits=30,
        decimal_places=None,
        coerce_to_string=True,
        help_text="Charges less refunds and disputes, before Stripe's fees, in major units.",
    )
    net = serializers.DecimalField(
        max_digits=30,
        decimal_places=None,
        coerce_to_string=True,
        help_text="What reached the balance, after fees, in major units.",
    )


class CustomerSerializer(serializers.Serializer):
    external_id = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    stripe_customer_id = serializers.CharField(
        allow_null=True, help_text="The Stripe customer mapped to this customer, or null."
    )
    requests = serializers.IntegerField()
    cost_usd = _cost(
        allow_null=True,
        help_text="The priced requests' cost over the period; null when every request is "
        "unpriced or usage-unknown.",
    )
    unpriced_requests = serializers.IntegerField()
    usage_unknown_requests = serializers.IntegerField()
    revenue = RevenueSerializer(
        many=True, help_text="Stripe revenue over the period, one entry per currency."
    )
    margin_usd = serializers.DecimalField(
        max_digits=30,
        decimal_places=None,
        coerce_to_string=True,
        allow_null=True,
        help_text="Net USD revenue minus cost; null without USD revenue.",
    )
    margin_pct = serializers.DecimalField(
        max_digits=12,
        decimal_places=2,
        coerce_to_string=True,
        allow_null=True,
        help_text="The margin as a percentage of net USD revenue; null when that revenue is "
        "not positive.",
    )
