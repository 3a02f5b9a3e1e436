"""``rollup_reads``: whole UTC days from a rollup, the rest from events with the same aggregates,
in at most one query for each half; rows keyed alike whichever half they come from."""

from dataclasses import fields
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db.models import Q

from apps.reporting.rollup_reads import (
    COUNTERS,
    LATENCY,
    Cut,
    compared_cut,
    edge_rows,
    period_cut,
    rollups_plus_edges,
)
from apps.reporting.selectors import Totals, sum_totals
from apps.reporting.tests.dashboard_data import use, utc
from apps.usage.metering.counters import LATENCY_BUCKETS
from apps.usage.models import DailyRollup, OrganizationDailyRollup, UsageEvent

pytestmark = pytest.mark.django_db


def _reads(org, cut, **kwargs):
    return rollups_plus_edges(
        rollups=OrganizationDailyRollup.objects.for_org(org),
        events=UsageEvent.objects.for_org(org),
        cut=cut,
        **kwargs,
    )


def test_both_halves_sum_the_counters_totals_holds():
    names = {f.name for f in fields(Totals)}

    assert set(COUNTERS.rollups()) == set(COUNTERS.events()) == names
    assert set(LATENCY.rollups()) == set(LATENCY.events()) == set(LATENCY_BUCKETS)


@pytest.mark.parametrize(
    ("start", "end", "queries"),
    [
        (utc(2026, 11, 2), utc(2026, 11, 4), 1),  # whole days: rollups alone
        (utc(2026, 11, 2, 5), utc(2026, 11, 2, 9), 1),  # inside a day: events alone
        (utc(2026, 11, 1, 12), utc(2026, 11, 4, 6), 2),  # both
        (utc(2026, 11, 2), utc(2026, 11, 2), 0),  # empty
    ],
)
def test_each_half_is_one_query_or_none(priced, django_assert_num_queries, start, end, queries):
    use(priced, utc(2026, 11, 2, 6))

    with django_assert_num_queries(queries):
        _reads(priced, period_cut(start, end), group_by=["model"])


def test_rollups_and_edges_agree_to_the_cent_with_the_events_alone(priced, other_org):
    for hour in range(0, 72, 5):
        use(priced, utc(2026, 11, 1) + timedelta(hours=hour), input_tokens=1000 + hour)
        use(priced, utc(2026, 11, 1) + timedelta(hours=hour), model="mystery-model")
    use(other_org, utc(2026, 11, 2, 12))
    start, end = utc(2026, 11, 1, 7), utc(2026, 11, 3, 17)
    alone = Cut(days=None, edges=Q(timestamp__gte=start, timestamp__lt=end))

    split = sum_totals(_reads(priced, period_cut(start, end)))
    events = sum_totals(_reads(priced, alone))

    assert split == events
    assert split.requests == 2 * len([h for h in range(0, 72, 5) if 7 <= h < 65])
    assert split.unpriced_requests == split.requests // 2


def test_rows_are_keyed_by_the_rollup_names_whichever_half_they_come_from(priced):
    use(priced, utc(2026, 11, 2, 12), customer="acme")  # a whole day
    use(priced, utc(2026, 11, 3, 1), customer="acme")  # the partial last day
    use(priced, utc(2026, 11, 3, 2), customer="")  # no customer

    rows = rollups_plus_edges(
        rollups=DailyRollup.objects.for_org(priced),
        events=UsageEvent.objects.for_org(priced),
        cut=period_cut(utc(2026, 11, 2), utc(2026, 11, 3, 6)),
        group_by=["customer", "day"],
        event_fields={"customer": "customer__external_id"},
    )

    assert sorted((row["customer"] or "", row["day"], row["requests"]) for row in rows) == [
        ("", date(2026, 11, 3), 1),
        ("acme", date(2026, 11, 2), 1),
        ("acme", date(2026, 11, 3), 1),
    ]


def test_local_days_in_another_zone_are_read_from_events_alone(priced, django_assert_num_queries):
    use(priced, utc(2026, 11, 2, 23, 30))  # November 3rd in Paris
    paris = ZoneInfo("Europe/Paris")
    cut = period_cut(utc(2026, 11, 1), utc(2026, 11, 5), zone=paris)

    with django_assert_num_queries(1):
        rows = _reads(priced, cut, group_by=["day"])

    assert cut.days is None
    assert [(row["day"], row["requests"]) for row in rows] == [(date(2026, 11, 3), 1)]


def test_compared_periods_are_told_apart_in_the_same_queries(priced, django_assert_num_queries):
    use(priced, utc(2026, 10, 5))  # current, whole day
    use(priced, utc(2026, 10, 31, 20))  # current, edge
    use(priced, utc(2026, 9, 5))  # previous, whole day
    cut = compared_cut(
        (utc(2026, 10, 1), utc(2026, 10, 31, 22)), (utc(2026, 9, 1), utc(2026, 10, 1))
    )

    with django_assert_num_queries(2):
        rows = _reads(priced, cut)

    requests = {True: 0, False: 0}
    for row in rows:
        requests[row["is_current"]] += row["requests"]
    assert requests == {True: 2, False: 1}


def test_an_edge_read_groups_by_an_expression_under_its_rollup_name(priced):
    from django.db.models.fields.json import KeyTextTransform

    use(priced, utc(2026, 11, 2, 5), properties={"feature": "chat"})
    use(priced, utc(2026, 11, 2, 6))

    rows = edge_rows(
        UsageEvent.objects.for_org(priced),
        period_cut(utc(2026, 11, 2, 1), utc(2026, 11, 2, 9)),
        group_by=["value"],
        event_fields={"value": KeyTextTransform("feature", "properties")},
    )

    assert sorted((row["value"] or "", row["requests"]) for row in rows) == [("", 1), ("chat", 1)]
