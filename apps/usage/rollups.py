"""The daily rollups rebuilt from events, with the counters' definitions the writer adds them with
(``metering.counters``: its ORM rendering, and its Python one for the property rollups).
"""

from datetime import UTC, date, datetime, time, timedelta

from django.db import connection, transaction
from django.db.models import Max, Min

from apps.accounts.models import Organization
from apps.usage.metering.counters import (
    COUNTED_FIELDS,
    ROLLUP_COUNTERS,
    counters_add,
    counters_of,
    latency_histogram_aggregates,
    rollup_aggregates,
)
from apps.usage.metering.events import ROLLUP_LOCK_NAMESPACE, property_pairs
from apps.usage.models import (
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
