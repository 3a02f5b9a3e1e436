from datetime import UTC, datetime, time
from decimal import Decimal

from django import forms
from django.utils.dateparse import parse_date, parse_datetime

from apps.keys.models import Provider

# Beyond this a price is a typo or a wrong unit, not a model.
MAX_PRICE_PER_MTOK = Decimal(10_000)
WHEN_HELP = "UTC. A date (2026-03-01) means its midnight; or a date and time (2026-03-01 14:30)."


def parse_utc_moment(text: str) -> datetime | None:
    """A date (midnight UTC) or a date and time (UTC unless an offset is given), else None."""
    text = text.strip()
    try:
        moment = parse_datetime(text.replace(" ", "T", 1))
        day = parse_date(text) if moment is None else None
    except ValueError:
        return None
    if moment is not None:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if day is not None:
        return datetime.combine(day, time.min, tzinfo=UTC)
    return None


class UTCMomentField(forms.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", WHEN_HELP)
        super().__init__(max_length=40, **kwargs)

    def clean(self, value):
        text = super().clean(value)
        if not text:
            return None
        moment = parse_utc_moment(text)
        if moment is None:
            raise forms.ValidationError(
                "Enter a date such as 2026-03-01, or a date and time such as 2026-03-01 14:30."
            )
        return moment


def _price(label: str, *, required: bool, help_text: str = "") -> forms.DecimalField:
    return forms.DecimalField(
        label=label,
        required=required,
        min_value=0,
        max_value=MAX_PRICE_PER_MTOK,
        max_digits=14,
        decimal_places=6,
        help_text=help_text,
        error_messages={
            "min_value": "A price cannot be negative.",
            "max_value": (
                f"That is over ${MAX_PRICE_PER_MTOK:,} per million tokens. Prices here are USD "
                "per million tokens."
            ),
            "required": "Enter a price in USD per million tokens (0 for free).",
        },
    )


class PriceOverrideForm(forms.Form):
    model_pattern = forms.CharField(
        label="Model",
        max_length=255,
        strip=True,
        help_text="The model name as the provider reports it, or a pattern with * "
        "(e.g. <code>gpt-4o*</code>, <code>ft:gpt-4o-mini:acme:*</code>). Case does not matter.",
        error_messages={"required": "Name the model, or a pattern such as gpt-4o*."},
    )
    provider = forms.ChoiceField(choices=[("", "Any provider"), *Provider.choices], required=False)
    valid_from = UTCMomentField(label="Valid from", required=True)
    input_per_mtok = _price("Input, USD per million tokens", required=True)
    cached_input_per_mtok = _price(
        "Cached input (cache reads), USD per million tokens",
        required=False,
        help_text="Empty: the input price.",
    )
    cache_write_per_mtok = _price(
        "Cache writes, USD per million tokens", required=False, help_text="Empty: the input price."
    )
    output_per_mtok = _price(
        "Output, USD per million tokens", required=True, help_text="Reasoning tokens included."
    )


class RepriceForm(forms.Form):
    since = UTCMomentField(label="Re-price events since", required=True)
