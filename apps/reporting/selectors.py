"""Reads over usage for the dashboards and the reporting API.

Long ranges read the daily rollups, never raw events: a period is cut into whole UTC days, summed
from rollups, and the partial days at its edges (a period in another time zone, or one ending
now), summed from events with the same definitions (``usage.metering.counters``), so both
halves agree to the cent. ``rollup_reads`` holds that recipe; the selectors here say which rollup
and which grouping. Which rollup: ``OrganizationDailyRollup`` (a few rows a day) for totals, days,
models, providers and latency; ``DailyRollup`` (a row per customer and model a day) only for
customer breakdowns; ``PropertyDailyRollup`` for properties. Only days counted in a time zone
other than UTC read events over the whole period.

Reports by model group by the price catalogue's model id (``pricing.catalog_model_id``:
``gpt-4o-mini-2024-07-18`` and a failed ``gpt-4o-mini`` call are both ``gpt-4o-mini``): the rows
are read per (provider, exact model), as rollups keep them, and folded into their catalogue id
here, so nothing stored depends on the catalogue and the exact names stay at hand for a drill-down
(``usage_by_model_name``). A model the catalogue does not know is its own group.

Latency percentiles come from the rollups' latency histograms
(``usage.metering.counters.LATENCY_BOUNDS_MS``) plus the edges' events counted into the same
buckets, interpolated linearly inside the bucket the rank falls in: approximate to that bucket's
width (the dashboards say "≈").
"""

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import Max, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Left, TruncMonth

from apps.accounts.models import Organization
from apps.reporting.periods import periods_overlap
from apps.reporting.rollup_reads import (
    COUNTERS,
    LATENCY,
    compared_cut,
    edge_rows,
    period_cut,
    rollup_rows,
    rollups_plus_edges,
)
from apps.usage.metering.counters import LATENCY_BOUNDS_MS, LATENCY_BUCKETS, Counters
from apps.usage.models import (
    PROPERTY_NAME_MAX_LENGTH,
    PROPERTY_VALUE_MAX_LENGTH,
    Customer,
    DailyRollup,
    OrganizationDailyRollup,
    PropertyDailyRollup,
    RefusalCount,
    UsageEvent,
)
from apps.usage.pricing import COST_PLACES, catalog_model_id

GROUPS = ("customer", "model", "provider")
# The event field each rollup key stands for.
EVENT_KEYS = {"customer": "customer__external_id", "model": "model", "provider": "provider"}


class Totals(Counters):
    """The counters of a period (or of one group of it), with the figures reports show."""

    @property
    def cost(self) -> Decimal:
        """Priced requests' cost, at the 12 places stored."""
        return Decimal(self.cost_usd).quantize(COST_PLACES)

    @property
    def cost_unknown(self) -> bool:
        """Whether the group has requests and none of them has a known cost: all unpriced or
        usage-unknown (DESIGN.md: such a group's ``cost_usd`` is null, not $0)."""
        return bool(self.requests) and (
            self.requests == self.unpriced_requests + self.usage_unknown_requests
        )

    @property
    def reported_cost(self) -> Decimal | None:
        """``cost``, or None for a group whose cost is unknown (``cost_unknown``)."""
        return None if self.cost_unknown else self.cost

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def average_latency_ms(self) -> float | None:
        return self.latency_ms_sum / self.requests if self.requests else None


def sum_totals(parts) -> Totals:
    """Totals added up (e.g. a period's per-model totals: every request is in one of them)."""
    total = Totals()
    for part in parts:
        total.add(part)
    return total


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


def usage_totals(*, organization: Organization, start: datetime, end: datetime) -> Totals:
    """Every request of the organization in [start, end), summed."""
    return sum_totals(
        rollups_plus_edges(
            rollups=_org_rollups(organization),
            events=_events(organization),
            cut=period_cut(start, end),
        )
    )


def _by_period(rows: Iterable[dict], key: str) -> tuple[dict[str, Totals], dict[str, Totals]]:
    """Rows summed per ``key`` ("" for none), for the current period and the previous one (a
    row without ``is_current`` is the current period's)."""
    found: dict[bool, dict[str, Totals]] = {True: defaultdict(Totals), False: defaultdict(Totals)}
    for row in rows:
        found[row.get("is_current", True)][row[key] or ""].add(row)
    return dict(found[True]), dict(found[False])


def _model_groups(rows: list[dict]) -> list[dict]:
    """Rows read per (provider, model), each keyed by its catalogue model id under ``model``
    and its exact name under ``model_name``."""
    for row in rows:
        name = row["model"] or ""
        row["model_name"] = name
        row["model"] = catalog_model_id(row["provider"], name)
    return rows


def _by_model(group_by: list[str]) -> list[str]:
    """A read grouped by model is read per provider and exact model, then folded
    (``_model_groups``)."""
    if "model" not in group_by:
        return group_by
    return [name for name in group_by if name != "model"] + ["provider", "model"]


def _usage_by_rows(organization: Organization, cut, group_by: str) -> list[dict]:
    if group_by not in GROUPS:
        raise ValueError(f"cannot group usage by {group_by!r}")
    rows = rollups_plus_edges(
        # Only a read by customer needs the rollup with a row per customer.
        rollups=(_rollups if group_by == "customer" else _org_rollups)(organization),
        events=_events(organization),
        cut=cut,
        group_by=_by_model([group_by]),
        event_fields=EVENT_KEYS,
    )
    return _model_groups(rows) if group_by == "model" else rows


def usage_by(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    group_by: str,
) -> dict[str, Totals]:
    """Totals per customer (external id, "" for none), model (the catalogue's model id) or
    provider, in [start, end)."""
    rows = _usage_by_rows(organization, period_cut(start, end), group_by)
    return _by_period(rows, group_by)[0]


def usage_by_model_name(
    *, organization: Organization, start: datetime, end: datetime
) -> dict[str, dict[str, Totals]]:
    """Totals per catalogue model id and, beneath it, per exact model name as events recorded
    it (the one reported, else the one requested), in [start, end): the models page's rows and
    their drill-down, in one read."""
    return usage_by_model_name_with_providers(organization=organization, start=start, end=end)[0]


def usage_by_model_name_with_providers(
    *, organization: Organization, start: datetime, end: datetime
) -> tuple[dict[str, dict[str, Totals]], dict[str, list[str]]]:
    """``usage_by_model_name`` and, from the same read, the providers each model id was called
    through (sorted)."""
    rows = _usage_by_rows(organization, period_cut(start, end), "model")
    found: dict[str, dict[str, Totals]] = defaultdict(lambda: defaultdict(Totals))
    providers: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        found[row["model"]][row["model_name"]].add(row)
        providers[row["model"]].add(row["provider"])
    return (
        {group: dict(names) for group, names in found.items()},
        {group: sorted(names) for group, names in providers.items()},
    )


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
    if periods_overlap(current, previous):
        return tuple(
            usage_by(organization=organization, start=start, end=end, group_by=group_by)
            for start, end in (current, previous)
        )
    rows = _usage_by_rows(organization, compared_cut(current, previous), group_by)
    return _by_period(rows, group_by)


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
    rows = rollups_plus_edges(
        rollups=_org_rollups(organization),
        events=_events(organization),
        cut=period_cut(start, end, zone=zone),
        group_by=_by_model(["day", *([split_by] if split_by else [])]),
    )
    if split_by == "model":
        rows = _model_groups(rows)
    found: dict[tuple[date, str], Totals] = defaultdict(Totals)
    for row in rows:
        found[(row["day"], row[split_by] if split_by else "")].add(row)
    return dict(found)


def latency_percentiles(
    *, organization: Organization, start: datetime, end: datetime, percentiles=(50, 99)
) -> dict[int, int | None]:
    """Latency (ms) at each percentile over the period's requests: the nearest rank's bucket in
    the latency histogram, interpolated inside it (approximate to the bucket's width; see the
    module's docstring). None for a period without requests."""
    counts = _latency_counts(organization, period_cut(start, end))[True]
    return {p: percentile_from_histogram(counts, p) for p in percentiles}


def _latency_counts(organization: Organization, cut) -> dict[bool, list[int]]:
    """Requests per latency bucket, for the current period and the previous one."""
    counts = {True: [0] * len(LATENCY_BUCKETS), False: [0] * len(LATENCY_BUCKETS)}
    rows = rollups_plus_edges(
        rollups=_org_rollups(organization),
        events=_events(organization),
        cut=cut,
        measures=LATENCY,
    )
    for row in rows:
        found = counts[row.get("is_current", True)]
        for index, name in enumerate(LATENCY_BUCKETS):
            found[index] += row[name] or 0
    return counts


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
    cut = period_cut(start, end)
    names: set[str] = set()
    if cut.days is not None:
        names.update(
            _property_rollups(organization)
            .filter(cut.days)
            .values_list("name", flat=True)
            .distinct()
            .order_by()
        )
    if cut.edges is not None:
        rows = (
            _events(organization)
            .filter(cut.edges)
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
    price_source: str | None = None,
    properties: dict[str, str] | None = None,
    customer_exact: bool = False,
) -> QuerySet[UsageEvent]:
    """The organization's events matching every filter given, newest first (ties by id, so a
    keyset cursor on (timestamp, id) walks them without gaps or repeats).

    Shared by the events explorer, its CSV export and the reporting API. A filter left at None (or
    empty) does not filter. ``start``/``end`` bound the timestamp as [start, end); ``customer`` is
    the external id; ``customer`` and ``model`` match the value itself or any value it begins
    (DESIGN.md: filters match a prefix, case-sensitive on every database, unlike SQL ``LIKE`` on
    SQLite), and ``model`` also every name whose catalogue model id it is, so a report's model
    row finds all its requests (``claude-sonnet-4-0`` finds ``claude-sonnet-4-20250514``);
    ``properties`` maps a property name to the exact value it must have (each name read
    as one JSON key, whatever characters it holds). ``customer_exact`` matches ``customer``
    itself only, and an empty ``customer`` then the requests sent without one (a customer page's
    events).
    """
    events = _events(organization).select_related("customer")
    if start is not None:
        events = events.filter(timestamp__gte=start)
    if end is not None:
        events = events.filter(timestamp__lt=end)
    if customer_exact and customer:
        events = events.filter(customer__external_id=customer)
    elif customer_exact:
        events = events.filter(customer__isnull=True)
    elif customer:
        events = events.alias(customer_prefix=Left("customer__external_id", len(customer)))
        events = events.filter(customer_prefix=customer)
    if provider:
        events = events.filter(provider=provider)
    if model:
        events = events.alias(model_prefix=Left("model", len(model)))
        names = _names_of_model(organization, model)
        if names:
            events = events.filter(Q(model_prefix=model) | Q(model__in=names))
        else:
            events = events.filter(model_prefix=model)
    if status is not None:
        events = events.filter(status=status)
    if outcome:
        events = events.filter(outcome=outcome)
    if price_source:
        events = events.filter(price_source=price_source)
    for number, (name, value) in enumerate((properties or {}).items()):
        # The JSON value (not its text) compared, so the value is encoded as JSON on every backend.
        alias = f"property_filter_{number}"
        events = events.alias(**{alias: KeyTransform(name, "properties")}).filter(**{alias: value})
    return events.order_by("-timestamp", "-id")


def _names_of_model(organization: Organization, model: str) -> list[str]:
    """The exact model names the organization's requests were recorded under whose catalogue
    model id is ``model`` and which do not begin with it (those the prefix finds). Read from the
    model rollup (a row per model a day, written with every event): one small query."""
    names = _org_rollups(organization).values_list("provider", "model").distinct().order_by()
    return sorted(
        {
            name
            for provider, name in names
            if not name.startswith(model) and catalog_model_id(provider, name) == model
        }
    )


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
    rollups = _rollups(organization).filter(customer=customer)
    if customer:
        events = _events(organization).filter(customer__external_id=customer)
    else:
        events = _events(organization).filter(customer__isnull=True)
    rows = rollups_plus_edges(
        rollups=rollups,
        events=events,
        cut=period_cut(start, end, zone=(zone or UTC) if group_by == "day" else None),
        group_by=_by_model([group_by]),
    )
    if group_by == "model":
        rows = _model_groups(rows)
    found: dict = defaultdict(Totals)
    for row in rows:
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
        .annotate(**COUNTERS.rollups())
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
    if len(name) > PROPERTY_NAME_MAX_LENGTH or periods_overlap(current, previous):
        return (
            _usage_by_property_from_events(organization, current, name),
            _usage_by_property_from_events(organization, previous, name),
        )
    cut = compared_cut(current, previous)
    found: tuple[dict, dict] = (defaultdict(Totals), defaultdict(Totals))  # (before, now)
    # Whole days: each value's rollup, and the requests without one as the totals' remainder.
    without = {
        row["is_current"]: Totals().add(row) for row in rollup_rows(_org_rollups(organization), cut)
    }
    rows = rollup_rows(_property_rollups(organization).filter(name=name), cut, group_by=["value"])
    for row in rows:
        part = Totals().add(row)
        without.setdefault(row["is_current"], Totals()).subtract(part)
        found[row["is_current"]][row["value"]].add(part)
    for is_current, rest in without.items():
        if rest.requests:
            found[is_current][""].add(rest)
    # Edges: the name as one JSON key, a value longer than the rollups keep cut as they cut it.
    value = KeyTextTransform(name, "properties")
    for row in edge_rows(
        _events(organization), cut, group_by=["value"], event_fields={"value": value}
    ):
        found[row["is_current"]][(row["value"] or "")[:PROPERTY_VALUE_MAX_LENGTH]].add(row)
    return dict(found[True]), dict(found[False])


def _usage_by_property_from_events(
    organization: Organization,
    period: tuple[datetime, datetime],
    name: str,
    events: QuerySet[UsageEvent] | None = None,
) -> dict[str, Totals]:
    """Every event of the period, grouped by the property's value: for a name no rollup keeps."""
    found: dict[str, Totals] = defaultdict(Totals)
    rows = (
        (_events(organization) if events is None else events)
        .filter(timestamp__gte=period[0], timestamp__lt=period[1])
        # The name as one JSON key, whatever it contains (a "__" is not a nested lookup here).
        .annotate(property_value=KeyTextTransform(name, "properties"))
        .values("property_value")
        .annotate(**COUNTERS.events())
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
    if periods_overlap(current, previous):
        return tuple(
            latency_percentiles(
                organization=organization, start=start, end=end, percentiles=percentiles
            )
            for start, end in (current, previous)
        )
    counts = _latency_counts(organization, compared_cut(current, previous))
    return (
        {p: percentile_from_histogram(counts[True], p) for p in percentiles},
        {p: percentile_from_histogram(counts[False], p) for p in percentiles},
    )


def _customer_events(organization: Organization, customer: str) -> QuerySet[UsageEvent]:
    if customer:
        return _events(organization).filter(customer__external_id=customer)
    return _events(organization).filter(customer__isnull=True)


def customer_property_names(
    *, organization: Organization, customer: str, start: datetime, end: datetime, sample: int = 5000
) -> list[str]:
    """The property names the customer's latest ``sample`` requests of the period carried (as
    ``property_names_recent``, through the (organization, customer, timestamp) index)."""
    names: set[str] = set()
    rows = (
        _customer_events(organization, customer)
        .filter(timestamp__gte=start, timestamp__lt=end)
        .order_by("-timestamp")
        .values_list("properties", flat=True)[:sample]
    )
    for properties in rows:
        names.update(properties or {})
    return sorted(names)


def customer_usage_by_property(
    *, organization: Organization, customer: str, start: datetime, end: datetime, name: str
) -> dict[str, Totals]:
    """One customer's totals in [start, end) per value of the property ``name`` ("" for requests
    without it), read from its events: the property rollups keep no customer, so events purged
    by retention are not in it."""
    return _usage_by_property_from_events(
        organization, (start, end), name, events=_customer_events(organization, customer)
    )


def event_of(*, organization: Organization, event_id: int) -> UsageEvent | None:
    """One of the organization's events by id (None for another organization's: a 404)."""
    return _events(organization).select_related("customer", "token").filter(pk=event_id).first()
