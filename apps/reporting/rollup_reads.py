"""Reading a period's counters as whole UTC days from a rollup table plus the rest from events.

Every report over usage follows one recipe: the period's whole UTC days are summed from a daily
rollup (a few rows a day), and what rollups cannot answer from events, with the same aggregates
(``usage.metering.counters``), so both halves agree to the cent. What events answer: the partial
days at the period's edges (a period in another time zone, one ending now), and, when days are
counted in a zone whose days are not UTC days, the whole period (a local day straddles two UTC
days).

A ``Cut`` says which rollup rows and which events a period (or a period and the one it is
compared with, read together and told apart by ``is_current``) takes; ``rollup_rows`` and
``edge_rows`` read them, one query each and none for an empty half; ``rollups_plus_edges``
reads both. Rows are dicts keyed by the rollup's field names and the measures' names, whichever
half they come from; ``day`` stands for the local day in the cut's zone.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal

from django.db.models import BooleanField, Case, Q, QuerySet, Sum, Value, When
from django.db.models.expressions import Combinable
from django.db.models.functions import Coalesce, TruncDate

from apps.reporting.periods import UtcDays, local_days_are_utc, utc_days
from apps.usage.metering.counters import (
    LATENCY_BUCKETS,
    ROLLUP_COUNTERS,
    latency_histogram_aggregates,
    rollup_aggregates,
)
from apps.usage.models import DailyRollup


@dataclass(frozen=True)
class Measures:
    """What a read sums: aggregates over rollup rows and the same figures over events."""

    rollups: Callable[[], dict]
    events: Callable[[], dict]


def _counter_sums() -> dict:
    """The rollup counters summed over rollup rows (rollups store each counter under the name
    of its aggregate over events)."""
    cost = DailyRollup._meta.get_field("cost_usd")
    return {
        name: Coalesce(Sum(name), Decimal(0), output_field=cost)
        if name == "cost_usd"
        else Coalesce(Sum(name), 0)
        for name in ROLLUP_COUNTERS
    }


def _histogram_sums() -> dict:
    return {name: Coalesce(Sum(name), 0) for name in LATENCY_BUCKETS}


# Requests, tokens, cost, errors, latency sums: every rollup has them.
COUNTERS = Measures(rollups=_counter_sums, events=rollup_aggregates)
# The latency histogram's buckets: ``OrganizationDailyRollup`` only.
LATENCY = Measures(rollups=_histogram_sums, events=latency_histogram_aggregates)


@dataclass(frozen=True)
class Cut:
    """The rollup rows (by ``day``) and events (by timestamp) a read takes, and, for two periods
    read together, which one a row belongs to (``is_current``)."""

    days: Q | None  # rollup rows; None: no whole day
    edges: Q | None  # events; None: none
    day_zone: tzinfo = UTC  # the zone an event's day is counted in
    day_is_current: Case | None = None
    edge_is_current: Case | None = None


def _day_filter(days: UtcDays) -> Q | None:
    if days.first_day is None:
        return None
    return Q(day__gte=days.first_day, day__lt=days.end_day)


def _edge_filter(edges: Iterable[tuple[datetime, datetime]]) -> Q:
    condition = Q(pk__in=[])
    for edge_start, edge_end in edges:
        condition |= Q(timestamp__gte=edge_start, timestamp__lt=edge_end)
    return condition


def period_cut(start: datetime, end: datetime, *, zone: tzinfo | None = None) -> Cut:
    """[start, end): its whole UTC days from rollups, its edges from events. With ``zone`` (for
    reads by local day) whose days are not UTC days, the whole period from events, days counted
    in ``zone``."""
    if zone is not None and not local_days_are_utc(zone, start, end):
        return Cut(days=None, edges=_edge_filter([(start, end)]), day_zone=zone)
    days = utc_days(start, end)
    return Cut(days=_day_filter(days), edges=_edge_filter(days.edges) if days.edges else None)


def _is_current(condition: Q | None) -> Case:
    return Case(
        When(condition or Q(pk__in=[]), then=Value(True)),
        default=Value(False),
        output_field=BooleanField(),
    )


def _either(conditions: list[Q]) -> Q | None:
    if not conditions:
        return None
    found = conditions[0]
    for condition in conditions[1:]:
        found |= condition
    return found


def compared_cut(current: tuple[datetime, datetime], previous: tuple[datetime, datetime]) -> Cut:
    """Two periods that do not overlap (``periods.periods_overlap``), read together: every row
    carries ``is_current``, so each half stays one query whatever the number of periods."""
    now, before = utc_days(*current), utc_days(*previous)
    days_now, days_before = _day_filter(now), _day_filter(before)
    edges_now = _edge_filter(now.edges) if now.edges else None
    edges_before = _edge_filter(before.edges) if before.edges else None
    return Cut(
        days=_either([q for q in (days_now, days_before) if q is not None]),
        edges=_either([q for q in (edges_now, edges_before) if q is not None]),
        day_is_current=_is_current(days_now),
        edge_is_current=_is_current(edges_now),
    )


def rollup_rows(
    rollups: QuerySet, cut: Cut, *, group_by: Iterable[str] = (), measures: Measures = COUNTERS
) -> list[dict]:
    """The cut's rollup rows summed per ``group_by`` (rollup fields) and period: no query when
    the cut has no whole day; one row, even over no rows, when nothing groups them."""
    if cut.days is None:
        return []
    rows = rollups.filter(cut.days)
    keys = list(group_by)
    if cut.day_is_current is not None:
        rows = rows.annotate(is_current=cut.day_is_current)
        keys.insert(0, "is_current")
    if not keys:
        return [rows.aggregate(**measures.rollups())]
    return list(rows.values(*keys).annotate(**measures.rollups()).order_by())


def edge_rows(
    events: QuerySet,
    cut: Cut,
    *,
    group_by: Iterable[str] = (),
    event_fields: Mapping[str, str | Combinable] | None = None,
    measures: Measures = COUNTERS,
) -> list[dict]:
    """The cut's events summed per ``group_by`` and period, with the rollups' definitions. Each
    group is read from the event field or expression ``event_fields`` names for it (by default
    the field of the same name; ``day`` the local day in the cut's zone) and keyed by its rollup
    name. No query when the cut has no edge."""
    if cut.edges is None:
        return []
    rows = events.filter(cut.edges)
    annotations: dict = {}
    keys: list[str] = []
    renamed: dict[str, str] = {}  # key read -> rollup name
    if cut.edge_is_current is not None:
        annotations["is_current"] = cut.edge_is_current
        keys.append("is_current")
    for name in group_by:
        source = (event_fields or {}).get(name, name)
        if name == "day" and source == "day":
            source = TruncDate("timestamp", tzinfo=cut.day_zone)
        if not isinstance(source, str):
            source, annotations[f"group_{name}"] = f"group_{name}", source
        keys.append(source)
        if source != name:
            renamed[source] = name
    if annotations:
        rows = rows.annotate(**annotations)
    if not keys:
        return [rows.aggregate(**measures.events())]
    found = list(rows.values(*keys).annotate(**measures.events()).order_by())
    for row in found:
        for source, name in renamed.items():
            row[name] = row.pop(source)
    return found


def rollups_plus_edges(
    *,
    rollups: QuerySet,
    events: QuerySet,
    cut: Cut,
    group_by: Iterable[str] = (),
    event_fields: Mapping[str, str | Combinable] | None = None,
    measures: Measures = COUNTERS,
) -> list[dict]:
    """``rollup_rows`` then ``edge_rows``: at most two queries, the whole period's rows."""
    group_by = tuple(group_by)
    return rollup_rows(rollups, cut, group_by=group_by, measures=measures) + edge_rows(
        events, cut, group_by=group_by, event_fields=event_fields, measures=measures
    )
