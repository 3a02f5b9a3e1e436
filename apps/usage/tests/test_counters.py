"""The rollup counters' renderings (``metering.counters``) agree with each other and with figures
worked out here by hand, over events that cover every edge of their definitions.

The events go through the real writer, which sums them with the SQL rendering on PostgreSQL and
the Python one on SQLite; the other renderings are then run over the stored events on the same
database: the SQL select lists as a plain query (PostgreSQL and SQLite both take them), the
Python functions over the events' fields, the ORM aggregates, and a rebuild of the day. So a
change to any one rendering fails here on either database.
"""

from dataclasses import fields
from datetime import date
from decimal import Decimal

import pytest
from django.db import connection

from apps.usage.metering.counters import (
    COUNTED_FIELDS,
    LATENCY_BUCKETS,
    ROLLUP_COUNTERS,
    SQL_COUNTERS,
    SQL_LATENCY_HISTOGRAM,
    Counters,
    counters_add,
    counters_of,
    latency_histogram_aggregates,
    rollup_aggregates,
)
from apps.usage.metering.events import usage_events_write
from apps.usage.models import (
    DailyRollup,
    OrganizationDailyRollup,
    PropertyDailyRollup,
    UsageEvent,
    UsageSums,
)
from apps.usage.rollups import rollups_rebuild_day
from apps.usage.tests.factories import usage_record

pytestmark = pytest.mark.django_db

DAY = date(2026, 11, 2)  # the factory's timestamp
PLACES = Decimal("0.000000000001")


def _events(org) -> list[dict]:
    """gpt-4o-mini: $0.15 per million input tokens (cache writes included), $0.075 cached input,
    $0.60 output. Each event's cost and latency bucket is worked out beside it."""

    def event(status, outcome, tokens, latency_ms, ttfb_ms, **extra):
        names = ("input", "cached_input", "cache_write", "cache_write_1h", "output", "reasoning")
        return usage_record(
            org,
            status=status,
            outcome=outcome,
            properties={"feature": "chat"},
            **{f"{name}_tokens": count for name, count in zip(names, tokens, strict=True)},
            latency_ms=latency_ms,
            ttfb_ms=ttfb_ms,
            **extra,
        )

    return [
        # 1000 * 0.15 + 100 * 0.6 = 210 µ$. Bucket [0, 25). A first byte at 0 ms is a first byte.
        event(200, "ok", (1000, 0, 0, None, 100, 0), 0, 0),
        # The last status that is no error. 1000 * 0.15 + 1000 * 0.075 + 50 * 0.6 = 255 µ$.
        # Bucket [0, 25).
        event(399, "ok", (2000, 1000, 0, None, 50, 20), 24, 12),
        # The first status that is an error, whatever the outcome. No tokens on an error: the
        # provider bills nothing (no_usage, cost 0), neither unpriced nor usage-unknown.
        # Bucket [25, 50). No first byte.
        event(400, "ok", (None,) * 6, 25, None),
        # An error outcome with status 200. 100 * 0.15 = 15 µ$. Bucket [700, 1000).
        event(200, "upstream_error", (100, None, None, None, None, None), 999, None),
        # 300 * 0.15 + 40 * 0.6 = 69 µ$. Bucket [1000, 1500).
        event(200, "upstream_disconnected", (300, None, None, None, 40, None), 1000, 400),
        # Tokens but neither input nor output: unpriced. Bucket [60000, 150000).
        event(200, "costr_error", (None, 5, 7, 3, None, None), 149_999, None),
        # A client that stopped reading a successful response: no error. 500 * 0.15 + 10 * 0.6
        # = 81 µ$. Bucket [150000, 600000), the last.
        event(200, "client_disconnected", (500, 0, 0, None, 10, 0), 150_000, 700),
        # Stopped reading an error: an error by its status. 900 * 0.15 + 100 * 0.075 + 100 * 0.6
        # = 202.5 µ$. Above the last bound: the last bucket.
        event(503, "client_disconnected", (1000, 100, 200, 50, 100, 30), 900_000, 1),
        # A success whose usage could not be read: usage_unknown, cost null. Bucket [100, 200).
        event(200, "ok", (None,) * 6, 150, 30),
        # The same on a models list, which the provider bills nothing for: no_usage, cost 0.
        # Bucket [200, 400).
        event(200, "ok", (None,) * 6, 300, None, endpoint="other"),
    ]


EXPECTED = {
    "requests": 10,
    "errors": 5,  # statuses 400 and 503, and the three error outcomes
    "input_tokens": 1000 + 2000 + 100 + 300 + 500 + 1000,
    "cached_input_tokens": 1000 + 5 + 100,
    "cache_write_tokens": 7 + 200,
    "cache_write_1h_tokens": 3 + 50,
    "output_tokens": 100 + 50 + 40 + 10 + 100,
    "reasoning_tokens": 20 + 30,
    "cost_usd": Decimal("0.000832500000"),  # 210 + 255 + 15 + 69 + 81 + 202.5 µ$
    "unpriced_requests": 1,  # the costr_error with tokens but neither input nor output
    "usage_unknown_requests": 1,  # the success without usage
    "latency_ms_sum": 24 + 25 + 999 + 1000 + 149_999 + 150_000 + 900_000 + 150 + 300,
    "ttfb_ms_sum": 12 + 400 + 700 + 1 + 30,
    "ttfb_count": 6,
}
# Buckets 0, 1, 3, 4, 6, 7, 14 and 15 (LATENCY_BOUNDS_MS 0, 25, 50, 100, 200, 400, 700, 1000,
# 1500, 2500, 4000, 7000, 12000, 25000, 60000, 150000, 600000).
EXPECTED_HISTOGRAM = [2, 1, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 2]


def _write(org) -> None:
    """In two batches: the rollup rows are inserted by the first and added to by the second."""
    events = _events(org)
    assert usage_events_write(events[:3]) == 3
    assert usage_events_write(events[3:]) == 7


def _counters(row) -> dict:
    return {name: row[name] for name in EXPECTED}


def _histogram(row) -> list[int]:
    return [row[name] for name in LATENCY_BUCKETS]


def _rollups(org) -> list[tuple[str, dict]]:
    """The counters of each of the day's rollup rows, and the latency histogram."""
    daily = DailyRollup.objects.for_org(org).values().get(day=DAY, customer="acme")
    by_model = OrganizationDailyRollup.objects.for_org(org).values().get(day=DAY)
    by_property = PropertyDailyRollup.objects.for_org(org).values().get(day=DAY)
    assert (by_property["name"], by_property["value"]) == ("feature", "chat")
    return [
        ("daily", _counters(daily)),
        ("by model", _counters(by_model)),
        ("by property", _counters(by_property)),
        ("histogram", _histogram(by_model)),
    ]


def _expected() -> list[tuple[str, dict]]:
    return [
        ("daily", EXPECTED),
        ("by model", EXPECTED),
        ("by property", EXPECTED),
        ("histogram", EXPECTED_HISTOGRAM),
    ]


def test_the_writers_rollups_hold_the_hand_worked_counters(org, other_org):
    _write(org)
    usage_events_write([usage_record(other_org)])  # another organization's event counts apart

    assert _rollups(org) == _expected()


def test_the_rebuilt_rollups_hold_them_too(org):
    _write(org)
    DailyRollup.objects.for_org(org).update(requests=0)  # rebuilt, not left as written

    rollups_rebuild_day(organization=org, day=DAY)

    assert _rollups(org) == _expected()


def test_the_sql_rendering_over_the_events(org):
    _write(org)
    table = connection.ops.quote_name(UsageEvent._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {SQL_COUNTERS}, {SQL_LATENCY_HISTOGRAM} FROM {table} "  # noqa: S608
            'WHERE "organization_id" = %s',
            [org.pk],
        )
        (row,) = cursor.fetchall()
    counters = dict(zip(ROLLUP_COUNTERS, row[: len(ROLLUP_COUNTERS)], strict=True))
    # SQLite sums DECIMAL columns as doubles: the sum, to its 12 places.
    counters["cost_usd"] = Decimal(counters["cost_usd"]).quantize(PLACES)

    assert counters == EXPECTED
    assert list(row[len(ROLLUP_COUNTERS) :]) == EXPECTED_HISTOGRAM


def test_the_python_rendering_over_the_events(org):
    _write(org)
    sums: dict = {}
    for fields_of_event in UsageEvent.objects.for_org(org).values_list(*COUNTED_FIELDS):
        counters_add(sums, ("key",), counters_of(*fields_of_event), histogram=True)
    (total,) = sums.values()

    assert dict(zip(ROLLUP_COUNTERS, total[: len(ROLLUP_COUNTERS)], strict=True)) == EXPECTED
    assert total[len(ROLLUP_COUNTERS) :] == EXPECTED_HISTOGRAM


def test_the_orm_rendering_over_the_events(org):
    _write(org)

    found = UsageEvent.objects.for_org(org).aggregate(
        **rollup_aggregates(), **latency_histogram_aggregates()
    )

    assert _counters(found) == EXPECTED
    assert _histogram(found) == EXPECTED_HISTOGRAM


def test_counters_add_rows_up_and_take_one_part_from_another(org):
    _write(org)
    events = UsageEvent.objects.for_org(org)
    with_200 = events.filter(status=200).aggregate(**rollup_aggregates())
    others = events.exclude(status=200).aggregate(**rollup_aggregates())
    # The statuses 399, 400 and 503.
    others_by_hand = Counters(
        requests=3,
        errors=2,
        input_tokens=2000 + 1000,
        cached_input_tokens=1000 + 100,
        cache_write_tokens=200,
        cache_write_1h_tokens=50,
        output_tokens=50 + 100,
        reasoning_tokens=20 + 30,
        cost_usd=Decimal("0.000457500000"),  # 255 + 202.5 µ$
        unpriced_requests=0,  # the 400 without usage is no_usage
        usage_unknown_requests=0,
        latency_ms_sum=24 + 25 + 900_000,
        ttfb_ms_sum=12 + 1,
        ttfb_count=2,
    )

    assert Counters().add(with_200).add(others) == Counters(**EXPECTED)
    assert Counters(**EXPECTED).subtract(Counters().add(with_200)) == others_by_hand
    assert Counters().add(others_by_hand) == others_by_hand


def test_every_rendering_names_exactly_the_models_counters():
    names = [f.name for f in UsageSums._meta.local_fields]
    histogram = [f.name for f in OrganizationDailyRollup._meta.local_fields]

    assert ROLLUP_COUNTERS == names == list(EXPECTED)
    assert [f.name for f in fields(Counters)] == names
    assert set(rollup_aggregates()) == set(names)
    assert [name for name in histogram if name.startswith("latency_bucket_")] == LATENCY_BUCKETS
    assert list(latency_histogram_aggregates()) == LATENCY_BUCKETS
    assert set(COUNTED_FIELDS) <= {f.name for f in UsageEvent._meta.fields}
