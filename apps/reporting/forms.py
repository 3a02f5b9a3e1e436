"""The dashboards' controls, read from the query string: every field is optional, and a bad value
is reported on the page instead of failing it."""

from datetime import date, datetime, timedelta
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


class DayField(forms.DateField):
    """A day, also read from a moment ("2026-03-01T09:30", as the events explorer carries its
    From/Before to the other pages): the day it falls on."""

    input_formats = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]


def _is_midnight_moment(raw) -> bool:
    return isinstance(raw, str) and "T" in raw and raw.partition("T")[2] in ("00:00", "00:00:00")


class PeriodForm(forms.Form):
    """today, 7d, 30d, this month, last month, or two days (inclusive) in the org's time zone."""

    period = forms.ChoiceField(choices=PERIOD_CHOICES, required=False)
    start = DayField(required=False, label="First day", widget=forms.DateInput({"type": "date"}))
    end = DayField(required=False, label="Last day", widget=forms.DateInput({"type": "date"}))

    def clean_end(self):
        # A "Before" moment at midnight (the events explorer's exclusive end) ends the day before.
        end = self.cleaned_data.get("end")
        if end is not None and _is_midnight_moment(self.data.get("end")):
            end -= timedelta(days=1)
        return end

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
    ("-revenue", "Revenue (USD), highest first"),
    ("revenue", "Revenue (USD), lowest first"),
    ("margin_pct", "Margin %, lowest first"),
    ("-margin_pct", "Margin %, highest first"),
    ("-cost_pct", "Cost / revenue, highest first"),
    ("cost_pct", "Cost / revenue, lowest first"),
    ("customer", "Customer, A to Z"),
    ("-customer", "Customer, Z to A"),
]


class CustomerListForm(forms.Form):
    q = forms.CharField(required=False, max_length=255, label="Search")
    sort = forms.ChoiceField(choices=CUSTOMER_SORTS, required=False)


class PropertyForm(forms.Form):
    name = forms.CharField(required=False, max_length=255, label="Property")


EVENT_PERIOD_CHOICES = [("", "Any time"), *PERIOD_CHOICES]


class EventFilterForm(forms.Form):
    """The events explorer's filters. Times are read in the organization's time zone.

    ``period`` is one of the dashboards' periods (the same days they show) or "custom": the
    From/Before moments. A custom end given as a bare day (carried from a dashboard, where it is
    the last day shown) includes that whole day.
    """

    period = forms.ChoiceField(choices=EVENT_PERIOD_CHOICES, required=False)
    customer = forms.CharField(required=False, max_length=255, help_text="or its beginning")
    exact = forms.BooleanField(
        required=False,
        label="Exact customer",
        help_text="this id only; left empty, requests without a customer",
    )
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

    # A method, not a property: the form's ``property`` field shadows the builtin here.
    def period_name(self) -> str:
        """The period chosen: a named one, "custom" for From/Before alone, "" for any time."""
        name = self.data.get("period") or ""
        if name in dict(PERIOD_CHOICES):
            return name
        return "custom" if self.data.get("start") or self.data.get("end") else ""

    def clean_end(self):
        end = self.cleaned_data.get("end")
        raw = self.data.get("end")
        if end is not None and isinstance(raw, str) and _is_bare_day(raw):
            end += timedelta(days=1)
        return end

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
        name = cleaned.get("period") or ""
        if name and name != "custom":
            period = resolve_period(name, zone=self.zone, now=timezone.now())
            cleaned["start"], cleaned["end"] = period.start, period.end
            return cleaned
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
            "customer_exact": bool(data.get("exact")),
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
            if value not in (None, "", {}, False)
        }


def _is_bare_day(raw: str) -> bool:
    try:
        date.fromisoformat(raw.strip())
    except ValueError:
        return False
    return len(raw.strip()) == 10
