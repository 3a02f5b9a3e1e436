"""The daily rollups rebuilt from events, and the rollup counters as ORM aggregates over events
(for rebuilds, and for the partial days a report reads from events): the same definitions as
the writer's (``services.counters_of``), which adds to the rollups as it stores events.
"""

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Count, Max, Min, Q, Sum
from django.db.models.functions import Coalesce

from apps.accounts.models import Organization
from apps.usage.metering.contract import ERROR_OUTCOMES, TOKEN_FIELDS
from apps.usage.metering.events import (
    COUNTED_FIELDS,
    ROLLUP_LOCK_NAMESPACE,
    counters_add,
    counters_of,
    property_pairs,
)
from apps.usage.models import (
    LATENCY_BOUNDS_MS,
    LATENCY_BUCKETS,
    ROLLUP_COUNTERS,
    DailyRollup,
    OrganizationDailyRollup,
    PropertyDailyRollup,
    UsageEvent,
)


def _lock_rollups_exclusive(organization_id: int) -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, (%s::bigint %% 2147483647)::int)",
            [ROLLUP_LOCK_NAMESPACE, organization_id],
        )


def rollups_rebuild_day(*, organization: Organization, day: date) -> int:
    """Replace one organization's rollups of one UTC day (``DailyRollup``,
    ``OrganizationDailyRollup``, ``PropertyDailyRollup``) with sums computed from its events;
    returns the number of rollup rows written.

    Runs in one transaction holding the organization's rollup lock exclusively, while writers
    hold it shared for their whole transaction. So every writer transaction either committed
    before the rebuild looked at the events (its events are in the sums, and the rollup rows it
    added are among those deleted) or starts its rollup work after the rebuild committed (its
    events were invisible to the sums, and it adds them itself): nothing is counted twice or
    missed. On SQLite, transactions that write are serialised anyway.
    """
    start = datetime.combine(day, time.min, tzinfo=UTC)
    with transaction.atomic():
        _lock_rollups_exclusive(organization.pk)
        DailyRollup.objects.for_org(organization).filter(day=day).delete()
        sums = (
            UsageEvent.objects.for_org(organization)
            .filter(timestamp__gte=start, timestamp__lt=start + timedelta(days=1))
            .values("customer__external_id", "provider", "model")
            .annotate(**rollup_aggregates())
            .order_by()
        )
        rollups = [
            DailyRollup(
                organization=organization,
                day=day,
                customer=row.pop("customer__external_id") or "",
                **row,
            )
            for row in sums
        ]
        DailyRollup.objects.bulk_create(rollups)
        written = len(rollups) + _org_rollups_rebuild(organization, day, start)
        written += _property_rollups_rebuild(organization, day, start)
    return written


def _org_rollups_rebuild(organization: Organization, day: date, start: datetime) -> int:
    OrganizationDailyRollup.objects.for_org(organization).filter(day=day).delete()
    sums = (
        UsageEvent.objects.for_org(organization)
        .filter(timestamp__gte=start, timestamp__lt=start + timedelta(days=1))
        .values("provider", "model")
        .annotate(**rollup_aggregates(), **latency_histogram_aggregates())
        .order_by()
    )
    rollups = [OrganizationDailyRollup(organization=organization, day=day, **row) for row in sums]
    OrganizationDailyRollup.objects.bulk_create(rollups)
    return len(rollups)


def _property_rollups_rebuild(organization: Organization, day: date, start: datetime) -> int:
    """Summed here from the day's events that carry properties, with the writer's definitions
    (``counters_of``, ``property_pairs``): a JSON key's values cannot be enumerated by the ORM
    on every database."""
    PropertyDailyRollup.objects.for_org(organization).filter(day=day).delete()
    events = (
        UsageEvent.objects.for_org(organization)
        .filter(timestamp__gte=start, timestamp__lt=start + timedelta(days=1))
        .exclude(properties={})
        .values_list("properties", *COUNTED_FIELDS)
        .order_by()
    )
    sums: dict[tuple, list] = {}
    for properties, *fields in events.iterator(chunk_size=5000):
        pairs = property_pairs(properties)
        if pairs:
            counted = counters_of(*fields)
            for name, value in pairs:
                counters_add(sums, (name, value), counted)
    rollups = [
        PropertyDailyRollup(
            organization=organization,
            day=day,
            name=name,
            value=value,
            **dict(zip(ROLLUP_COUNTERS, total, strict=True)),
        )
        for (name, value), total in sorted(sums.items())
    ]
    PropertyDailyRollup.objects.bulk_create(rollups, batch_size=1000)
    return len(rollups)


def latency_histogram_aggregates() -> dict:
    """The latency histogram's buckets as aggregates over events (``LATENCY_BOUNDS_MS``): what
    the writer adds to ``OrganizationDailyRollup``, for rebuilds and for the partial days a
    report reads from events."""
    last = len(LATENCY_BUCKETS) - 1
    aggregates = {}
    for index, name in enumerate(LATENCY_BUCKETS):
        condition = Q(latency_ms__gte=LATENCY_BOUNDS_MS[index])
        if index < last:
            condition &= Q(latency_ms__lt=LATENCY_BOUNDS_MS[index + 1])
        aggregates[name] = Count("id", filter=condition)
    return aggregates


def rollup_aggregates() -> dict:
    """The rollup's counters as aggregates over events: the same definitions as the writer's."""
    zero = 0
    return {
        "requests": Count("id"),
        "errors": Count("id", filter=Q(status__gte=400) | Q(outcome__in=ERROR_OUTCOMES)),
        **{name: Coalesce(Sum(name), zero) for name in TOKEN_FIELDS},
        # Before cost_usd, whose annotation would otherwise stand for the field here.
        "unpriced_requests": Count("id", filter=Q(cost_usd__isnull=True)),
        "cost_usd": Coalesce(
            Sum("cost_usd"), Decimal(0), output_field=DailyRollup._meta.get_field("cost_usd")
        ),
        "latency_ms_sum": Coalesce(Sum("latency_ms"), zero),
        "ttfb_ms_sum": Coalesce(Sum("ttfb_ms"), zero),
        "ttfb_count": Count("ttfb_ms"),
    }


def rollups_rebuild(*, organization: Organization, since: date | None = None) -> tuple[int, int]:
    """Rebuild every rollup of the organization from its events, a UTC day at a time (each day
    ``rollups_rebuild_day``, its own transaction, so the writer goes on meanwhile): all days from
    its first event (or ``since``) to its last event or rollup. For rollups added after events
    were stored, or after a change of the rollups' definitions. Returns (days, rows written)."""
    events = UsageEvent.objects.for_org(organization)
    if since is not None:
        events = events.filter(timestamp__gte=datetime.combine(since, time.min, tzinfo=UTC))
    bounds = events.aggregate(first=Min("timestamp"), last=Max("timestamp"))
    rollup_days = DailyRollup.objects.for_org(organization).filter(day__gte=since or date.min)
    last_rollup = rollup_days.aggregate(last=Max("day"))["last"]
    first = since or (bounds["first"] and bounds["first"].astimezone(UTC).date())
    last = max(
        [d for d in (bounds["last"] and bounds["last"].astimezone(UTC).date(), last_rollup) if d],
        default=None,
    )
    if first is None or last is None:
        return 0, 0
    days = rows = 0
    day = first
    while day <= last:
        rows += rollups_rebuild_day(organization=organization, day=day)
        days += 1
        day += timedelta(days=1)
    return days, rows
