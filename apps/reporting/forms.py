"""The dashboards' controls, read from the query string: every field is optional, and a bad value
is reported on the page instead of failing it."""

from datetime import datetime
from zoneinfo import ZoneInfo

from django import forms
from django.utils import timezone

from apps.keys.models import Provider
from apps.reporting.periods import (
    DEFAULT_PERIOD,
    PERIOD_CHOICES,
    Period,
    PeriodError,
    resolve_period,
)
from apps.usage.models import Outcome, PriceSource


class PeriodForm(forms.Form):
    """today, 7d, 30d, this month, last month, or two days (inclusive) in the org's time zone."""

    period = forms.ChoiceField(choices=PERIOD_CHOICES, required=False)
    start = forms.DateField(
        required=False, label="First day", widget=forms.DateInput({"type": "date"})
    )
    end = forms.DateField(
        required=False, label="Last day", widget=forms.DateInput({"type": "date"})
    )

    def period_for(self, *, zone: ZoneInfo, now: datetime) -> Period | None:
        """The chosen period, or None with the reason added to the form's errors."""
        if not self.is_valid():
            return None
        data = self.cleaned_data
        name = data.get("period") or (
            "custom" if data.get("start") or data.get("end") else DEFAULT_PERIOD
        )
        try:
            return resolve_period(
                name, zone=zone, now=now, start=data.get("start"), end=data.get("end")
            )
        except PeriodError as error:
            self.add_error(None, str(error))
            return None

    @staticmethod
    def default_period(*, zone: ZoneInfo, now: datetime) -> Period:
        return resolve_period(DEFAULT_PERIOD, zone=zone, now=now)


class SplitForm(forms.Form):
    split = forms.ChoiceField(
        choices=[("provider", "Provider"), ("model", "Model")], required=False
    )
    property = forms.CharField(required=False, max_length=255)


CUSTOMER_SORTS = [
    ("-spend", "Spend, highest first"),
    ("spend", "Spend, lowest first"),
    ("-requests", "Requests, most first"),
    ("requests", "Requests, fewest first"),
    ("-tokens", "Tokens, most first"),
    ("tokens", "Tokens, fewest first"),
    ("-last_seen", "Last seen, latest first"),
    ("last_seen", "Last seen, earliest first"),
    ("margin", "Margin, lowest first"),
    ("-margin", "Margin, highest first"),
    ("customer", "Customer, A to Z"),
    ("-customer", "Customer, Z to A"),
]


class CustomerListForm(forms.Form):
    q = forms.CharField(required=False, max_length=255, label="Search")
    sort = forms.ChoiceField(choices=CUSTOMER_SORTS, required=False)


class PropertyForm(forms.Form):
    name = forms.CharField(required=False, max_length=255, label="Property")


class EventFilterForm(forms.Form):
    """The events explorer's filters. Times are read in the organization's time zone."""

    customer = forms.CharField(required=False, max_length=255, help_text="or its beginning")
    model = forms.CharField(required=False, max_length=255, help_text="or its beginning")
    provider = forms.ChoiceField(choices=[("", "Any"), *Provider.choices], required=False)
    status = forms.IntegerField(required=False, min_value=100, max_value=599)
    outcome = forms.ChoiceField(choices=[("", "Any"), *Outcome.choices], required=False)
    price_source = forms.ChoiceField(
        choices=[("", "Any"), *PriceSource.choices],
        required=False,
        label="Price source",
        help_text="usage unknown: a success whose usage could not be read",
    )
    property = forms.CharField(
        required=False,
        max_length=600,
        help_text="name=value, e.g. feature=chat",
    )
    start = forms.DateTimeField(
        required=False, label="From", widget=forms.DateTimeInput({"type": "datetime-local"})
    )
    end = forms.DateTimeField(
        required=False, label="Before", widget=forms.DateTimeInput({"type": "datetime-local"})
    )

    def __init__(self, *args, zone: ZoneInfo, **kwargs):
        self.zone = zone
        super().__init__(*args, **kwargs)

    def full_clean(self):
        # Naive times typed into the form are the organization's local times.
        with timezone.override(self.zone):
            super().full_clean()

    def clean_property(self):
        value = self.cleaned_data["property"]
        if not value:
            return {}
        name, separator, wanted = value.partition("=")
        if not separator or not name.strip():
            raise forms.ValidationError("Write the property as name=value, e.g. feature=chat.")
        return {name.strip(): wanted.strip()}

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and start >= end:
            raise forms.ValidationError("“From” must be before “Before”.")
        return cleaned

    def filters(self) -> dict:
        """Keyword arguments for ``selectors.events_filtered``."""
        data = self.cleaned_data
        return {
            "start": data.get("start"),
            "end": data.get("end"),
            "customer": data.get("customer") or None,
            "provider": data.get("provider") or None,
            "model": data.get("model") or None,
            "status": data.get("status"),
            "outcome": data.get("outcome") or None,
            "price_source": data.get("price_source") or None,
            "properties": data.get("property") or None,
        }

    def described(self) -> dict:
        """The filters as plain strings, for the audit log."""
        return {
            name: (value.isoformat() if isinstance(value, datetime) else value)
            for name, value in self.filters().items()
            if value not in (None, "", {})
        }
