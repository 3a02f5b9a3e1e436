"""Reads over usage for the dashboards and the reporting API.

Long ranges read the daily rollups, never raw events: a period is cut into whole UTC days, summed
from rollups, and the partial days at its edges (a period in another time zone, or one ending
now), summed from events with the same definitions (``usage.rollups.rollup_aggregates``), so both
halves agree to the cent. Which rollup: ``OrganizationDailyRollup`` (a few rows a day) for totals,
days, models, providers and latency; ``DailyRollup`` (a row per customer and model a day) only for
customer breakdowns; ``PropertyDailyRollup`` for properties. Only days counted in a time zone
other than UTC read events over the whole period.

Latency percentiles come from the rollups' latency histograms (``usage.models.LATENCY_BOUNDS_MS``)
plus the edges' events counted into the same buckets, interpolated linearly inside the bucket the
rank falls in: approximate to that bucket's width (the dashboards say "≈").
"""

from collections import defaultdict
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import BooleanField, Case, Max, Q, QuerySet, Sum, Value, When
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Coalesce, TruncDate, TruncMonth

from apps.accounts.models import Organization
from apps.usage.models import (
    LATENCY_BOUNDS_MS,
    LATENCY_BUCKETS,
    PROPERTY_NAME_MAX_LENGTH,
    PROPERTY_VALUE_MAX_LENGTH,
    Customer,
    DailyRollup,
    OrganizationDailyRollup,
    PropertyDailyRollup,
    RefusalCount,
    UsageEvent,
)
from apps.usage.pricing import COST_PLACES
from apps.usage.rollups import latency_histogram_aggregates, rollup_aggregates

GROUPS = ("customer", "model", "provider")
# The event field each rollup key stands for.
EVENT_KEYS = {"customer": "customer__external_id", "model": "model", "provider": "provider"}


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    unpriced_requests: int = 0
    latency_ms_sum: int = 0
    ttfb_ms_sum: int = 0
    ttfb_count: int = 0

    def add(self, values) -> "Totals":
        for f in fields(self):
            amount = values[f.name] if isinstance(values, dict) else getattr(values, f.name)
            setattr(self, f.name, getattr(self, f.name) + (amount or 0))
        return self

    @property
    def cost(self) -> Decimal:
        """Priced requests' cost, at the 12 places stored."""
        return Decimal(self.cost_usd).quantize(COST_PLACES)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def average_latency_ms(self) -> float | None:
        return self.latency_ms_sum / self.requests if self.requests else None

    def subtract(self, values: "Totals") -> "Totals":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) - getattr(values, f.name))
        return self


SUMMED = [f.name for f in fields(Totals)]


def sum_totals(parts) -> Totals:
    """Totals added up (e.g. a period's per-model totals: every request is in one of them)."""
    total = Totals()
    for part in parts:
        total.add(part)
    return total


@dataclass(frozen=True)
class _Pieces:
    """[start, end) as whole UTC days (rollups) and the partial days at its edges (events)."""

    first_day: date | None
    end_day: date | None  # exclusive
    edges: tuple[tuple[datetime, datetime], ...]


def _pieces(start: datetime, end: datetime) -> _Pieces:
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start >= end:
        return _Pieces(None, None, ())
    first_whole = start.date() if start.time() == time.min else start.date() + timedelta(days=1)
    end_whole = end.date()
    if first_whole >= end_whole:
        return _Pieces(None, None, ((start, end),))
    edges = []
    head_end = datetime.combine(first_whole, time.min, tzinfo=UTC)
    if start < head_end:
        edges.append((start, head_end))
    tail_start = datetime.combine(end_whole, time.min, tzinfo=UTC)
    if tail_start < end:
        edges.append((tail_start, end))
    return _Pieces(first_whole, end_whole, tuple(edges))


def _events(organization: Organization) -> QuerySet[UsageEvent]:
    return UsageEvent.objects.for_org(organization)


def _rollups(organization: Organization) -> QuerySet[DailyRollup]:
    """Per customer and model: only for what needs the customer."""
    return DailyRollup.objects.for_org(organization)


def _org_rollups(organization: Organization) -> QuerySet[OrganizationDailyRollup]:
    """Per model: everything that does not need the customer."""
    return OrganizationDailyRollup.objects.for_org(organization)


def _property_rollups(organization: Organization) -> QuerySet[PropertyDailyRollup]:
    return PropertyDailyRollup.objects.for_org(organization)


def _edge_filter(edges) -> Q:
    condition = Q(pk__in=[])
    for edge_start, edge_end in edges:
        condition |= Q(timestamp__gte=edge_start, timestamp__lt=edge_end)
    return condition


def usage_totals(*, organization: Organization, start: datetime, end: datetime) -> Totals:
    """Every request of the organization in [start, end), summed."""
    pieces = _pieces(start, end)
    totals = Totals()
    if pieces.first_day is not None:
        totals.add(
            _org_rollups(organization)
            .filter(day__gte=pieces.first_day, day__lt=pieces.end_day)
            .aggregate(**_rollup_sums())
        )
    if pieces.edges:
        totals.add(
            _events(organization)
            .filter(_edge_filter(pieces.edges))
            .aggregate(**rollup_aggregates())
        )
    return totals


def usage_by(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    group_by: str,
) -> dict[str, Totals]:
    """Totals per customer (external id, "" for none), model or provider, in [start, end)."""
    if group_by not in GROUPS:
        raise ValueError(f"cannot group usage by {group_by!r}")
    pieces = _pieces(start, end)
    found: dict[str, Totals] = defaultdict(Totals)
    if pieces.first_day is not None:
        rollups = _rollups if group_by == "customer" else _org_rollups
        rows = (
            rollups(organization)
            .filter(day__gte=pieces.first_day, day__lt=pieces.end_day)
            .values(group_by)
            .annotate(**_rollup_sums())
            .order_by()
        )
        for row in rows:
            found[row[group_by]].add(row)
    if pieces.edges:
        key = EVENT_KEYS[group_by]
        rows = (
            _events(organization)
            .filter(_edge_filter(pieces.edges))
            .values(key)
            .annotate(**rollup_aggregates())
            .order_by()
        )
        for row in rows:
            found[row[key] or ""].add(row)
    return dict(found)


def usage_by_compared(
    *,
    organization: Organization,
    current: tuple[datetime, datetime],
    previous: tuple[datetime, datetime],
    group_by: str,
) -> tuple[dict[str, Totals], dict[str, Totals]]:
    """``usage_by`` for a period and the one it is compared with, in two reads (the rollups of
    both periods' whole days, the events of both periods' edges), each grouped by period."""
    if group_by not in GROUPS:
        raise ValueError(f"cannot group usage by {group_by!r}")
    if _overlap(current, previous):
        return tuple(
            usage_by(organization=organization, start=start, end=end, group_by=group_by)
            for start, end in (current, previous)
        )
    compared = _compared(current, previous)
    found: tuple[dict, dict] = (defaultdict(Totals), defaultdict(Totals))  # (before, now)
    if compared.days is not None:
        rollups = _rollups if group_by == "customer" else _org_rollups
        rows = (
            rollups(organization)
            .filter(compared.days)
            .annotate(is_current=compared.day_is_current)
            .values("is_current", group_by)
            .annotate(**_rollup_sums())
            .order_by()
        )
        for row in rows:
            found[row["is_current"]][row[group_by]].add(row)
    if compared.edges is not None:
        key = EVENT_KEYS[group_by]
        rows = (
            _events(organization)
            .filter(compared.edges)
            .annotate(is_current=compared.edge_is_current)
            .values("is_current", key)
            .annotate(**rollup_aggregates())
            .order_by()
        )
        for row in rows:
            found[row["is_current"]][row[key] or ""].add(row)
    return dict(found[True]), dict(found[False])


def usage_by_day(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    zone: ZoneInfo,
    split_by: str | None = None,
) -> dict[tuple[date, str], Totals]:
    """Totals per local day in ``zone`` (and per model or provider with ``split_by``). In UTC the
    rollups answer; in another zone a local day straddles two UTC days, so events do."""
    if split_by is not None and split_by not in ("model", "provider"):
        raise ValueError(f"cannot split days by {split_by!r}")
    found: dict[tuple[date, str], Totals] = defaultdict(Totals)
    if _is_utc(zone, start, end):
        pieces = _pieces(start, end)
        if pieces.first_day is not None:
            rows = (
                _org_rollups(organization)
                .filter(day__gte=pieces.first_day, day__lt=pieces.end_day)
                .values("day", *([split_by] if split_by else []))
                .annotate(**_rollup_sums())
                .order_by()
            )
            for row in rows:
                found[(row["day"], row[split_by] if split_by else "")].add(row)
        edges, day_zone = pieces.edges, UTC
    else:
        edges, day_zone = ((start, end),), zone
    if edges:
        rows = (
            _events(organization)
            .filter(_edge_filter(edges))
            .annotate(local_day=TruncDate("timestamp", tzinfo=day_zone))
            .values("local_day", *([split_by] if split_by else []))
            .annotate(**rollup_aggregates())
            .order_by()
        )
        for row in rows:
            found[(row["local_day"], row[split_by] if split_by else "")].add(row)
    return dict(found)


def _is_utc(zone: ZoneInfo, start: datetime, end: datetime) -> bool:
    """Whether local days in ``zone`` are UTC days throughout the period (UTC itself, or a zone
    at offset 0 with no daylight saving)."""
    moments = (
        start,
        end,
        datetime(start.year, 1, 1, tzinfo=UTC),
        datetime(start.year, 7, 1, tzinfo=UTC),
    )
    return all(moment.astimezone(zone).utcoffset() == timedelta(0) for moment in moments)


def _rollup_sums() -> dict:
    cost = DailyRollup._meta.get_field("cost_usd")
    return {
        name: Coalesce(Sum(name), Decimal(0), output_field=cost)
        if name == "cost_usd"
        else Coalesce(Sum(name), 0)
        for name in SUMMED
    }


def latency_percentiles(
    *, organization: Organization, start: datetime, end: datetime, percentiles=(50, 99)
) -> dict[int, int | None]:
    """Latency (ms) at each percentile over the period's requests: the nearest rank's bucket in
    the latency histogram, interpolated inside it (approximate to the bucket's width; see the
    module's docstring). None for a period without requests."""
    pieces = _pieces(start, end)
    counts = [0] * len(LATENCY_BUCKETS)
    if pieces.first_day is not None:
        _histogram_add(
            counts,
            _org_rollups(organization)
            .filter(day__gte=pieces.first_day, day__lt=pieces.end_day)
            .aggregate(**_histogram_sums()),
        )
    if pieces.edges:
        _histogram_add(
            counts,
            _events(organization)
            .filter(_edge_filter(pieces.edges))
            .aggregate(**latency_histogram_aggregates()),
        )
    return {p: percentile_from_histogram(counts, p) for p in percentiles}


def _histogram_sums() -> dict:
    return {name: Coalesce(Sum(name), 0) for name in LATENCY_BUCKETS}


def _histogram_add(counts: list[int], row: dict) -> None:
    for index, name in enumerate(LATENCY_BUCKETS):
        counts[index] += row[name] or 0


def percentile_from_histogram(counts: list[int], percentile: float) -> int | None:
    """The latency at ``percentile`` of the requests counted per bucket in ``counts``: the rank
    is the nearest rank (ceil(p * n / 100)); inside the bucket holding it, its k requests of c
    are taken as spread evenly over the bucket, so the value is ``low + (high - low) * k / c``,
    rounded to a millisecond. The last bucket is taken as ending at its upper bound."""
    total = sum(counts)
    if not total:
        return None
    rank = max(1, -(-percentile * total // 100))
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            low, high = LATENCY_BOUNDS_MS[index], LATENCY_BOUNDS_MS[index + 1]
            return round(low + (high - low) * (rank - below) / count)
        below += count
    return LATENCY_BOUNDS_MS[-1]  # pragma: no cover - the ranks are within the total


def property_names(*, organization: Organization, start: datetime, end: datetime) -> list[str]:
    """The property names the period's requests carried (as rolled up: a name over
    ``PROPERTY_NAME_MAX_LENGTH`` characters, or one only ever null, is missed on whole days)."""
    pieces = _pieces(start, end)
    names: set[str] = set()
    if pieces.first_day is not None:
        names.update(
            _property_rollups(organization)
            .filter(day__gte=pieces.first_day, day__lt=pieces.end_day)
            .values_list("name", flat=True)
            .distinct()
            .order_by()
        )
    if pieces.edges:
        rows = (
            _events(organization)
            .filter(_edge_filter(pieces.edges))
            .exclude(properties={})
            .values_list("properties", flat=True)
            .distinct()
        )
        for properties in rows.iterator(chunk_size=2000):
            if isinstance(properties, dict):
                names.update(properties)
    return sorted(names)


def usage_by_property(
    *, organization: Organization, start: datetime, end: datetime, name: str
) -> dict[str, Totals]:
    """Totals per value of the property ``name`` ("" for requests without it). Whole days from
    the property rollups (the requests without it: the totals minus the values' sums), the
    edges from events; a value longer than ``PROPERTY_VALUE_MAX_LENGTH`` counts as its start."""
    now, _ = usage_by_property_compared(
        organization=organization, current=(start, end), previous=(start, start), name=name
    )
    return now


def refused_requests(
    *, organization: Organization, start: datetime, end: datetime
) -> dict[tuple[int, str], int]:
    """Requests the proxy refused before forwarding, per (status, code), over the UTC days the
    period touches (refusals are counted per day)."""
    first = start.astimezone(UTC).date()
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    found: dict[tuple[int, str], int] = defaultdict(int)
    for row in RefusalCount.objects.for_org(organization).filter(day__gte=first, day__lte=last):
        found[(row.status, row.code)] += row.count
    return dict(found)


def customers_last_seen(*, organization: Organization) -> dict[str, date]:
    """The last UTC day each customer made a request."""
    return dict(
        _rollups(organization)
        .values("customer")
        .annotate(last=Max("day"))
        .values_list("customer", "last")
    )


def customers_by_external_id(*, organization: Organization) -> dict[str, Customer]:
    return {c.external_id: c for c in Customer.objects.for_org(organization)}


def events_filtered(
    *,
    organization: Organization,
    start: datetime | None = None,
    end: datetime | None = None,
    customer: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    status: int | None = None,
    outcome: str | None = None,
    properties: dict[str, str] | None = None,
) -> QuerySet[UsageEvent]:
    """The organization's events matching every filter given, newest first (ties by id, so a
    keyset cursor on (timestamp, id) walks them without gaps or repeats).

    Shared by the events explorer, its CSV export and the reporting API. A filter left at None (or
    empty) does not filter. ``start``/``end`` bound the timestamp as [start, end); ``customer`` is
    the external id; ``properties`` maps a property name to the exact value it must have (each
    name read as one JSON key, whatever characters it holds).
    """
    events = _events(organization).select_related("customer")
    if start is not None:
        events = events.filter(timestamp__gte=start)
    if end is not None:
        events = events.filter(timestamp__lt=end)
    if customer:
        events = events.filter(customer__external_id=customer)
    if provider:
        events = events.filter(provider=provider)
    if model:
        events = events.filter(model=model)
    if status is not None:
        events = events.filter(status=status)
    if outcome:
        events = events.filter(outcome=outcome)
    for number, (name, value) in enumerate((properties or {}).items()):
        # The JSON value (not its text) compared, so the value is encoded as JSON on every backend.
        alias = f"property_filter_{number}"
        events = events.alias(**{alias: KeyTransform(name, "properties")}).filter(**{alias: value})
    return events.order_by("-timestamp", "-id")


def organization_has_usage(*, organization: Organization) -> bool:
    """Whether the organization ever sent a request through Costr (its rollups outlive events
    purged by retention; events are asked too, for data written before rollups existed)."""
    return _rollups(organization).exists() or _events(organization).exists()


CUSTOMER_GROUPS = ("model", "provider", "day")


def customer_usage_by(
    *,
    organization: Organization,
    customer: str,
    start: datetime,
    end: datetime,
    group_by: str,
    zone: ZoneInfo | None = None,
) -> dict:
    """One customer's totals (by external id, "" for requests without one) in [start, end), per
    model, provider or local day in ``zone``. Read like ``usage_by`` and ``usage_by_day``: whole
    UTC days from rollups, the edges from events; a day in another zone from events alone, which
    the (organization, customer, timestamp) index narrows to this customer's."""
    if group_by not in CUSTOMER_GROUPS:
        raise ValueError(f"cannot group a customer's usage by {group_by!r}")
    by_day = group_by == "day"
    zone = zone or ZoneInfo("UTC")
    rollups = _rollups(organization).filter(customer=customer)
    if customer:
        events = _events(organization).filter(customer__external_id=customer)
    else:
        events = _events(organization).filter(customer__isnull=True)
    found: dict = defaultdict(Totals)
    if not by_day or _is_utc(zone, start, end):
        pieces = _pieces(start, end)
        if pieces.first_day is not None:
            rows = (
                rollups.filter(day__gte=pieces.first_day, day__lt=pieces.end_day)
                .values(group_by)
                .annotate(**_rollup_sums())
                .order_by()
            )
            for row in rows:
                found[row[group_by]].add(row)
        edges, day_zone = pieces.edges, UTC
    else:
        edges, day_zone = ((start, end),), zone
    if edges:
        events = events.filter(_edge_filter(edges))
        if by_day:
            events = events.annotate(day=TruncDate("timestamp", tzinfo=day_zone))
        for row in events.values(group_by).annotate(**rollup_aggregates()).order_by():
            found[row[group_by]].add(row)
    return dict(found)


def customer_usage_by_month(
    *, organization: Organization, customer: str, start: datetime, end: datetime
) -> dict[date, Totals]:
    """One customer's totals per UTC calendar month (keyed by its first day), for every month
    [start, end) touches, each month whole: the months Stripe revenue is counted in, so cost and
    revenue can be set side by side. Rollups alone answer (whole UTC days)."""
    first = start.astimezone(UTC).date().replace(day=1)
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    after_last = (last.replace(day=1) + timedelta(days=32)).replace(day=1)
    rows = (
        _rollups(organization)
        .filter(customer=customer, day__gte=first, day__lt=after_last)
        .annotate(month=TruncMonth("day"))
        .values("month")
        .annotate(**_rollup_sums())
        .order_by()
    )
    found: dict[date, Totals] = defaultdict(Totals)
    for row in rows:
        month = row["month"]
        found[month.date() if isinstance(month, datetime) else month].add(row)
    return dict(found)


def property_names_recent(
    *, organization: Organization, start: datetime, end: datetime, sample: int = 5000
) -> list[str]:
    """The property names carried by the period's latest ``sample`` requests: a cheap list for a
    picker (one index range read, newest first), where ``property_names`` reads every request of
    the period. A name only older requests carried is missed; pages let people type one."""
    names: set[str] = set()
    rows = (
        _events(organization)
        .filter(timestamp__gte=start, timestamp__lt=end)
        .order_by("-timestamp")
        .values_list("properties", flat=True)[:sample]
    )
    for properties in rows:
        names.update(properties or {})
    return sorted(names)


def _overlap(current: tuple[datetime, datetime], previous: tuple[datetime, datetime]) -> bool:
    return current[0] < previous[1] and previous[0] < current[1] and previous[0] < previous[1]


@dataclass(frozen=True)
class _Compared:
    """Two periods cut into whole days and edges, with conditions selecting each one's rollup
    rows and edge events and an expression telling which period a row belongs to."""

    days: Q | None  # rollup rows of either period's whole days; None: no whole day
    day_is_current: Case
    edges: Q | None  # events of either period's edges; None: no edge
    edge_is_current: Case


def _compared(current: tuple[datetime, datetime], previous: tuple[datetime, datetime]):
    now, before = _pieces(*current), _pieces(*previous)

    def days(pieces: _Pieces) -> Q | None:
        if pieces.first_day is None:
            return None
        return Q(day__gte=pieces.first_day, day__lt=pieces.end_day)

    def which(condition: Q | None) -> Case:
        return Case(
            When(condition or Q(pk__in=[]), then=Value(True)),
            default=Value(False),
            output_field=BooleanField(),
        )

    days_now, days_before = days(now), days(before)
    day_parts = [q for q in (days_now, days_before) if q is not None]
    edges_now = _edge_filter(now.edges) if now.edges else None
    edges_before = _edge_filter(before.edges) if before.edges else None
    edge_parts = [q for q in (edges_now, edges_before) if q is not None]
    return _Compared(
        days=_either(day_parts),
        day_is_current=which(days_now),
        edges=_either(edge_parts),
        edge_is_current=which(edges_now),
    )


def _either(conditions: list[Q]) -> Q | None:
    if not conditions:
        return None
    found = conditions[0]
    for condition in conditions[1:]:
        found |= condition
    return found


def usage_by_property_compared(
    *,
    organization: Organization,
    current: tuple[datetime, datetime],
    previous: tuple[datetime, datetime],
    name: str,
) -> tuple[dict[str, Totals], dict[str, Totals]]:
    """``usage_by_property`` for a period and the one it is compared with, both in three reads:
    the property rollups of both periods' whole days, the totals of those days (for the requests
    without the property), and the events at both periods' edges."""
    if len(name) > PROPERTY_NAME_MAX_LENGTH or _overlap(current, previous):
        return (
            _usage_by_property_from_events(organization, current, name),
            _usage_by_property_from_events(organization, previous, name),
        )
    compared = _compared(current, previous)
    found: tuple[dict, dict] = (defaultdict(Totals), defaultdict(Totals))  # (before, now)
    if compared.days is not None:
        totals = (
            _org_rollups(organization)
            .filter(compared.days)
            .annotate(is_current=compared.day_is_current)
            .values("is_current")
            .annotate(**_rollup_sums())
            .order_by()
        )
        without = {row["is_current"]: Totals().add(row) for row in totals}
        rows = (
            _property_rollups(organization)
            .filter(compared.days, name=name)
            .annotate(is_current=compared.day_is_current)
            .values("is_current", "value")
            .annotate(**_rollup_sums())
            .order_by()
        )
        for row in rows:
            part = Totals().add(row)
            without.setdefault(row["is_current"], Totals()).subtract(part)
            found[row["is_current"]][row["value"]].add(part)
        for is_current, rest in without.items():
            if rest.requests:
                found[is_current][""].add(rest)
    if compared.edges is not None:
        rows = (
            _events(organization)
            .filter(compared.edges)
            .annotate(
                is_current=compared.edge_is_current,
                property_value=KeyTextTransform(name, "properties"),
            )
            .values("is_current", "property_value")
            .annotate(**rollup_aggregates())
            .order_by()
        )
        for row in rows:
            value = (row["property_value"] or "")[:PROPERTY_VALUE_MAX_LENGTH]
            found[row["is_current"]][value].add(row)
    return dict(found[True]), dict(found[False])


def _usage_by_property_from_events(
    organization: Organization, period: tuple[datetime, datetime], name: str
) -> dict[str, Totals]:
    """Every event of the period, grouped by the property's value: for a name no rollup keeps."""
    found: dict[str, Totals] = defaultdict(Totals)
    rows = (
        _events(organization)
        .filter(timestamp__gte=period[0], timestamp__lt=period[1])
        # The name as one JSON key, whatever it contains (a "__" is not a nested lookup here).
        .annotate(property_value=KeyTextTransform(name, "properties"))
        .values("property_value")
        .annotate(**rollup_aggregates())
        .order_by()
    )
    for row in rows:
        found[row["property_value"] or ""].add(row)
    return dict(found)


def latency_percentiles_compared(
    *,
    organization: Organization,
    current: tuple[datetime, datetime],
    previous: tuple[datetime, datetime],
    percentiles=(50, 99),
) -> tuple[dict[int, int | None], dict[int, int | None]]:
    """``latency_percentiles`` for a period and the one it is compared with, in two reads: the
    histograms of both periods' whole days grouped by period, and the edges' events likewise."""
    if _overlap(current, previous):
        return (
            latency_percentiles(
                organization=organization,
                start=current[0],
                end=current[1],
                percentiles=percentiles,
            ),
            latency_percentiles(
                organization=organization,
                start=previous[0],
                end=previous[1],
                percentiles=percentiles,
            ),
        )
    compared = _compared(current, previous)
    counts = {True: [0] * len(LATENCY_BUCKETS), False: [0] * len(LATENCY_BUCKETS)}
    if compared.days is not None:
        rows = (
            _org_rollups(organization)
            .filter(compared.days)
            .annotate(is_current=compared.day_is_current)
            .values("is_current")
            .annotate(**_histogram_sums())
            .order_by()
        )
        for row in rows:
            _histogram_add(counts[row["is_current"]], row)
    if compared.edges is not None:
        rows = (
            _events(organization)
            .filter(compared.edges)
            .annotate(is_current=compared.edge_is_current)
            .values("is_current")
            .annotate(**latency_histogram_aggregates())
            .order_by()
        )
        for row in rows:
            _histogram_add(counts[row["is_current"]], row)
    return (
        {p: percentile_from_histogram(counts[True], p) for p in percentiles},
        {p: percentile_from_histogram(counts[False], p) for p in percentiles},
    )
