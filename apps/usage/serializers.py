"""The ingest API's shapes: one usage record as an SDK reports it, the batch, and the answer.

Records are checked one by one so that a bad record is listed with its errors while the good
ones of the same batch are stored. Types are strict (a token count is a JSON integer, a
property a JSON string): a lenient coercion would store something the client did not mean.
"""

import hashlib
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.accounts.api import ErrorDetailSerializer
from apps.keys.models import Provider
from apps.usage.metering.contract import (
    ENDPOINTS,
    MAX_PROPERTIES,
    MAX_PROPERTY_NAME_LENGTH,
    MAX_SOURCE_LENGTH,
    SOURCE_INGEST,
    SOURCE_PROXY,
    TOKEN_FIELDS,
    USAGE_DETAIL_KEYS,
    UsageRecord,
)

MAX_EVENTS = 500
SOURCE_PATTERN = r"\A[A-Za-z0-9_.\-]+\Z"
SOURCE_RULE = f"1 to {MAX_SOURCE_LENGTH} letters, digits, '_', '-' or '.'."
MAX_TEXT = 255
MAX_EVENT_ID = 64
# A token count beyond this is a client bug, not a request.
MAX_TOKENS = 10**12
MAX_LATENCY_MS = 24 * 60 * 60 * 1000
# Clocks disagree a little: a timestamp this far ahead of Costr's clock still counts as now.
FUTURE_SKEW = timedelta(minutes=5)

BODY_SHAPE = 'The body is a JSON object: {"events": […]}.'
COST_HINT = "Costr prices usage itself from the token counts; cost fields are not accepted."


def _encodable(value: str) -> None:
    """Refuse text the database cannot store: a lone surrogate (``"\\ud800"`` in JSON) has no
    UTF-8 form."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise serializers.ValidationError("Contains invalid Unicode.") from error


class StrictCharField(serializers.CharField):
    """A JSON string, never a number turned into one."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        _encodable(data)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: not ``true``, not ``"12"``, not ``12.0``."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(OpenApiTypes.DATETIME)
class ZonedTimestampField(serializers.Field):
    """An ISO 8601 date and time with its zone (``Z`` or an offset), returned in UTC."""

    default_error_messages = {
        "invalid": "Use an ISO 8601 date and time, e.g. 2026-03-01T12:00:00Z.",
        "naive": "Give the time zone, e.g. a trailing Z for UTC or +02:00.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            parsed = datetime.fromisoformat(data)
        except ValueError:
            self.fail("invalid")
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            self.fail("naive")
        try:
            return parsed.astimezone(UTC)
        except (OverflowError, ValueError):
            self.fail("invalid")

    def to_representation(self, value):
        return value.isoformat()


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": MAX_TEXT},
        "maxProperties": MAX_PROPERTIES,
    }
)
class PropertiesField(serializers.Field):
    """Up to 20 free-form dimensions, name → value, both strings (what the proxy reads from
    ``X-Costr-Property-<Name>`` headers)."""

    default_error_messages = {
        "invalid": "Properties are a JSON object of string names to string values.",
        "too_many": f"At most {MAX_PROPERTIES} properties.",
        "name": f"Property names are 1 to {MAX_PROPERTY_NAME_LENGTH} characters.",
        "value": f"Property values are strings of at most {MAX_TEXT} characters.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("invalid")
        if len(data) > MAX_PROPERTIES:
            self.fail("too_many")
        for name, value in data.items():
            if not name or len(name) > MAX_PROPERTY_NAME_LENGTH or "\x00" in name:
                self.fail("name")
            if not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value:
                self.fail("value")
            _encodable(name)
            _encodable(value)
        return data

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            name: {"type": "number" if name == "audio_seconds" else "integer", "minimum": 0}
            for name in USAGE_DETAIL_KEYS
        },
        "additionalProperties": False,
        "nullable": True,
    }
)
class UsageDetailsField(serializers.Field):
    """Usage beyond the token counts, under genai-prices' names: the audio share of the token
    counts (``input_audio_tokens`` includes ``cache_audio_read_tokens``), the seconds of audio a
    duration-priced model heard, the characters a character-priced one read."""

    default_error_messages = {
        "invalid": "usage_details is a JSON object, or null.",
        "key": "Unknown usage detail; the known ones are " + ", ".join(USAGE_DETAIL_KEYS) + ".",
        "count": f"An integer from 0 to {MAX_TOKENS}.",
        "seconds": f"A number of seconds from 0 to {MAX_TOKENS}.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("invalid")
        errors = []
        for name, value in data.items():
            if name not in USAGE_DETAIL_KEYS:
                errors.append(f"{str(name)[:64]}: {self.error_messages['key']}")
                continue
            seconds = name == "audio_seconds"
            kinds = (int, float) if seconds else int
            # The range also refuses NaN and infinities, which compare false or too large.
            if (
                isinstance(value, bool)
                or not isinstance(value, kinds)
                or not 0 <= value <= MAX_TOKENS
            ):
                errors.append(f"{name}: {self.error_messages['seconds' if seconds else 'count']}")
        if errors:
            raise serializers.ValidationError(errors)
        return data or None

    def to_representation(self, value):
        return value


def _tokens(**kwargs):
    return StrictIntegerField(min_value=0, max_value=MAX_TOKENS, allow_null=True, **kwargs)


class IngestEventSerializer(serializers.Serializer):
    """One usage record of a call the SDK made straight to the provider. Token fields follow the
    usage-event conventions: `input_tokens` includes cache reads and writes, `output_tokens`
    includes reasoning; null means the provider reported none. Any other field, a cost among
    them, is rejected: Costr prices every event itself."""

    event_id = StrictCharField(
        max_length=MAX_EVENT_ID,
        trim_whitespace=False,
        help_text="The client's id for this call, unique per organization; a re-sent event "
        "with a known id is counted as a duplicate and not stored again.",
    )
    timestamp = ZonedTimestampField(
        help_text="When the call was made, ISO 8601 with a zone. Not more than 5 minutes ahead "
        "of Costr's clock, not older than the organization's retention."
    )
    provider = serializers.ChoiceField(choices=Provider.values)
    model = StrictCharField(max_length=MAX_TEXT, help_text="The model the response reported.")
    endpoint = serializers.ChoiceField(choices=ENDPOINTS, default="other")
    customer = StrictCharField(
        max_length=MAX_TEXT,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="Your end customer's id, as sent in X-Costr-Customer. Empty or null: none.",
    )
    properties = PropertiesField(
        required=False,
        help_text=(
            f"Up to {MAX_PROPERTIES} name → value strings; names of 1 to "
            f"{MAX_PROPERTY_NAME_LENGTH} characters, as X-Costr-Property-* headers give them."
        ),
    )
    status = StrictIntegerField(
        min_value=100, max_value=599, default=200, help_text="The provider's HTTP status."
    )
    input_tokens = _tokens(help_text="Total input, cache reads and writes included.")
    cached_input_tokens = _tokens(required=False, help_text="Cache reads.")
    cache_write_tokens = _tokens(required=False, help_text="All cache writes.")
    cache_write_1h_tokens = _tokens(required=False, help_text="Anthropic's 1-hour cache writes.")
    output_tokens = _tokens(help_text="Total output, reasoning included.")
    reasoning_tokens = _tokens(required=False)
    usage_details = UsageDetailsField(
        required=False,
        allow_null=True,
        help_text="Usage beyond the token counts that prices the call, under genai-prices' "
        "names: input_audio_tokens, cache_audio_read_tokens and output_audio_tokens (the audio "
        "share of input_tokens, cached_input_tokens and output_tokens), audio_seconds (a "
        "duration-priced model such as whisper-1), input_characters (a character-priced one "
        "such as tts-1).",
    )
    latency_ms = StrictIntegerField(min_value=0, max_value=MAX_LATENCY_MS, default=0)
    source = StrictCharField(
        max_length=MAX_SOURCE_LENGTH,
        required=False,
        default=SOURCE_INGEST,
        validators=[RegexValidator(SOURCE_PATTERN, message=SOURCE_RULE)],
        error_messages={"invalid": SOURCE_RULE, "blank": SOURCE_RULE, "max_length": SOURCE_RULE},
        help_text="Where the call was metered, shown as the event's source: "
        f"{SOURCE_RULE} The client SDKs send `sdk_fallback`; default `{SOURCE_INGEST}`; "
        f"`{SOURCE_PROXY}` is reserved for the calls Costr forwarded.",
    )

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["Each event is a JSON object."]}, code="invalid"
            )
        unknown = {}
        for name in data.keys() - self.fields.keys():
            text = str(name).lower()
            hint = COST_HINT if "cost" in text or "price" in text else "Unknown field."
            unknown[name] = [hint]
        try:
            values = super().to_internal_value(data)
        except serializers.ValidationError as error:
            raise serializers.ValidationError({**unknown, **error.detail}) from error
        if unknown:
            raise serializers.ValidationError(unknown)
        return values

    def validate_source(self, value):
        if value == SOURCE_PROXY:
            raise serializers.ValidationError(
                f"'{SOURCE_PROXY}' is the source of the calls Costr forwarded itself."
            )
        return value

    def validate_timestamp(self, value):
        now = self.context["now"]
        if value > now + FUTURE_SKEW:
            raise serializers.ValidationError("Lies in the future.")
        days = self.context["retention_days"]
        if value < now - timedelta(days=days):
            raise serializers.ValidationError(
                f"Older than this organization's retention of {days} days."
            )
        return value

    def validate(self, attrs):
        errors = {}
        total_in = attrs.get("input_tokens")
        cached = attrs.get("cached_input_tokens")
        writes = attrs.get("cache_write_tokens")
        writes_1h = attrs.get("cache_write_1h_tokens")
        if (cached or writes) and (total_in is None or (cached or 0) + (writes or 0) > total_in):
            errors["input_tokens"] = [
                "input_tokens is the total input: it includes cached_input_tokens and "
                "cache_write_tokens, so it cannot be smaller than their sum."
            ]
        if writes_1h and (writes is None or writes_1h > writes):
            errors["cache_write_1h_tokens"] = [
                "Cannot exceed cache_write_tokens, which includes it."
            ]
        reasoning = attrs.get("reasoning_tokens")
        output = attrs.get("output_tokens")
        if reasoning and (output is None or reasoning > output):
            errors["output_tokens"] = [
                "output_tokens includes reasoning_tokens, so it cannot be smaller."
            ]
        details = attrs.get("usage_details") or {}
        for name, total_name in (
            ("input_audio_tokens", "input_tokens"),
            ("cache_audio_read_tokens", "cached_input_tokens"),
            ("cache_audio_read_tokens", "input_audio_tokens"),
            ("output_audio_tokens", "output_tokens"),
        ):
            part = details.get(name)
            total = details.get(total_name) if total_name in details else attrs.get(total_name)
            if part and (total is None or part > total):
                errors.setdefault("usage_details", []).append(
                    f"{name} is a share of {total_name}, so it cannot exceed it."
                )
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


def ingest_request_id(organization_id: int, event_id: str) -> str:
    """The stored request id of an ingested event: the same client id from two organizations
    never collides, and a re-sent one maps to the same row (64 characters, as stored)."""
    digest = hashlib.sha256(f"{organization_id}:{event_id}".encode()).hexdigest()
    return "ing_" + digest[:60]


def ingest_record(values: dict, *, organization_id: int, token_id: int | None) -> UsageRecord:
    """The usage record the writer stores for one validated event (the same shape the proxy
    hands to the sink)."""
    tokens = {name: values.get(name) for name in TOKEN_FIELDS}
    details = values.get("usage_details") or None
    status = values["status"]
    return {
        "request_id": ingest_request_id(organization_id, values["event_id"]),
        "organization_id": organization_id,
        "token_id": token_id,
        "timestamp": values["timestamp"].isoformat(),
        "provider": values["provider"],
        "endpoint": values["endpoint"],
        "model": values["model"],
        "requested_model": values["model"],
        "customer": values.get("customer") or None,
        "properties": values.get("properties") or {},
        "status": status,
        "stream": False,
        "outcome": "ok" if status < 400 else "upstream_error",
        **tokens,
        "usage_details": details,
        "service_tier": "",
        # What the client reported, kept as the event's usage object (counts only) so the event
        # can be re-priced like any other.
        "raw_usage": {
            "source": "ingest",
            **tokens,
            **({"usage_details": details} if details else {}),
        },
        "latency_ms": values["latency_ms"],
        "ttfb_ms": None,
        "overhead_ms": None,
        "source": values.get("source") or SOURCE_INGEST,
    }


def ingest_context(organization) -> dict:
    retention = getattr(organization, "retention_days", None)
    return {
        "now": datetime.now(UTC),
        "retention_days": retention or settings.COSTR_DEFAULT_RETENTION_DAYS,
    }


@extend_schema_field(IngestEventSerializer)
class EventItemField(serializers.Field):
    """One item of ``events``, taken as it came: it is checked on its own afterwards."""

    def to_internal_value(self, data):
        return data

    def to_representation(self, value):
        return value


class IngestBatchSerializer(serializers.Serializer):
    """A batch of usage events. Each event is checked on its own: one bad event does not refuse
    the others."""

    events = serializers.ListField(
        child=EventItemField(allow_null=True),
        min_length=1,
        max_length=MAX_EVENTS,
        help_text=f"1 to {MAX_EVENTS} events.",
    )


class IngestRejectionSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="The event's position in `events`, from 0.")
    event_id = serializers.CharField(allow_null=True)
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Field name → messages.",
    )


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="Events stored by this request.")
    duplicates = serializers.IntegerField(
        help_text="Valid events whose event_id was already stored: not stored again."
    )
    rejected = IngestRejectionSerializer(many=True)


class IngestFailureSerializer(serializers.Serializer):
    """A 400: the usual error, and, when the batch itself was readable but every event was
    rejected, the counts as well."""

    error = ErrorDetailSerializer()
    accepted = serializers.IntegerField(required=False)
    duplicates = serializers.IntegerField(required=False)
    rejected = IngestRejectionSerializer(many=True, required=False)
