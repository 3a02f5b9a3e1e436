"""Selectors against hand-built usage. Prices come from an override ($1 per million input tokens,
$2 per million output tokens for models named test-*), so every expected cost is worked out by
hand: 1,000 input and 100 output tokens cost $0.0012."""

from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from apps.reporting import selectors
from apps.usage.metering.events import refusals_record
from apps.usage.tests.factories import store_usage

pytestmark = pytest.mark.django_db

LA = ZoneInfo("America/Los_Angeles")
REQUEST_COST = Decimal("0.0012")


def _use(org, when: datetime, **overrides):
    overrides.setdefault("model", "test-small")
    return store_usage(org, timestamp=when.isoformat(), **overrides)


def _utc(*args):
    return datetime(*args, tzinfo=UTC)


def test_totals_add_whole_days_from_rollups_and_partial_days_from_events(priced, other_org):
    # Inside the period: a partial first day, two whole days, a partial last day.
    for when in (
        _utc(2026, 11, 1, 18),
        _utc(2026, 11, 2, 0),
        _utc(2026, 11, 3, 23, 59),
        _utc(2026, 11, 4, 5, 59),
    ):
        _use(priced, when)
    # Outside it: before the start on the first day, at the end instant, and another org.
    _use(priced, _utc(2026, 11, 1, 11, 59))
    _use(priced, _utc(2026, 11, 4, 6))
    _use(other_org, _utc(2026, 11, 2, 12))

    totals = selectors.usage_totals(
        organization=priced, start=_utc(2026, 11, 1, 12), end=_utc(2026, 11, 4, 6)
    )

    assert totals.requests == 4
    assert totals.cost == 4 * REQUEST_COST
    assert (totals.input_tokens, totals.output_tokens) == (4000, 400)


def test_unpriced_requests_are_counted_and_never_priced_at_zero(priced):
    _use(priced, _utc(2026, 11, 2, 12))
    _use(priced, _utc(2026, 11, 2, 13), model="nobody-knows-this-model")

    totals = selectors.usage_totals(
        organization=priced, start=_utc(2026, 11, 2), end=_utc(2026, 11, 3)
    )

    assert (totals.requests, totals.unpriced_requests, totals.cost) == (2, 1, REQUEST_COST)


def test_errors_count_failed_statuses_and_broken_outcomes(priced):
    _use(priced, _utc(2026, 11, 2, 1), status=429, outcome="upstream_error")
    _use(priced, _utc(2026, 11, 2, 2), status=200, outcome="upstream_disconnected")
    _use(priced, _utc(2026, 11, 2, 3), status=200, outcome="client_disconnected")

    totals = selectors.usage_totals(
        organization=priced, start=_utc(2026, 11, 2), end=_utc(2026, 11, 3)
    )

    assert (totals.requests, totals.errors) == (3, 2)
    assert totals.error_rate == pytest.approx(2 / 3)


def test_an_empty_period_is_all_zero(priced):
    totals = selectors.usage_totals(
        organization=priced, start=_utc(2026, 11, 2), end=_utc(2026, 11, 3)
    )

    assert (totals.requests, totals.cost, totals.error_rate) == (0, Decimal(0), None)
    assert selectors.latency_percentiles(
        organization=priced, start=_utc(2026, 11, 2), end=_utc(2026, 11, 3)
    ) == {50: None, 99: None}


def test_by_customer_merges_the_rollup_and_event_halves(priced):
    _use(priced, _utc(2026, 11, 1, 20), customer="acme")  # partial day: from events
    _use(priced, _utc(2026, 11, 2, 12), customer="acme")  # whole day: from rollups
    _use(priced, _utc(2026, 11, 2, 12), customer="globex")
    _use(priced, _utc(2026, 11, 2, 13), customer=None)

    rows = selectors.usage_by(
        organization=priced, start=_utc(2026, 11, 1, 12), end=_utc(2026, 11, 3), group_by="customer"
    )

    assert {key: (t.requests, t.cost) for key, t in rows.items()} == {
        "acme": (2, 2 * REQUEST_COST),
        "globex": (1, REQUEST_COST),
        "": (1, REQUEST_COST),
    }


def test_days_are_counted_in_the_organizations_time_zone(priced):
    # 03:00 UTC on 2 November is still 1 November, 20:00, in Los Angeles.
    _use(priced, _utc(2026, 11, 2, 3), model="test-a")
    _use(priced, _utc(2026, 11, 2, 12), model="test-b")
    period = {"start": _utc(2026, 11, 1, 7), "end": _utc(2026, 11, 3, 8)}

    in_la = selectors.usage_by_day(organization=priced, zone=LA, split_by="model", **period)
    in_utc = selectors.usage_by_day(
        organization=priced, zone=ZoneInfo("UTC"), start=_utc(2026, 11, 1), end=_utc(2026, 11, 3)
    )

    assert {key: t.requests for key, t in in_la.items()} == {
        (date(2026, 11, 1), "test-a"): 1,
        (date(2026, 11, 2), "test-b"): 1,
    }
    assert {key: t.requests for key, t in in_utc.items()} == {(date(2026, 11, 2), ""): 2}


def test_latency_percentiles_are_the_nearest_rank_interpolated_in_its_bucket(priced):
    for latency in range(1, 101):
        _use(priced, _utc(2026, 11, 2, 12), latency_ms=latency)

    found = selectors.latency_percentiles(
        organization=priced, start=_utc(2026, 11, 2), end=_utc(2026, 11, 3)
    )

    # Buckets (usage.metering.counters.LATENCY_BOUNDS_MS): 1-24 in [0, 25), 25-49 in [25, 50),
    # 50-99 in [50, 100). Rank 50 is the 1st of 50 in [50, 100): 50 + 50 * 1 / 50; rank 99 the
    # 50th.
    assert found == {50: 51, 99: 100}


def test_properties_by_name_and_value(priced):
    _use(priced, _utc(2026, 11, 2, 1), properties={"feature": "chat", "env": "prod"})
    _use(priced, _utc(2026, 11, 2, 2), properties={"feature": "search"})
    _use(priced, _utc(2026, 11, 2, 3), properties={"feature": "chat"})
    _use(priced, _utc(2026, 11, 2, 4))
    period = {"start": _utc(2026, 11, 2), "end": _utc(2026, 11, 3)}

    names = selectors.property_names(organization=priced, **period)
    by_feature = selectors.usage_by_property(organization=priced, name="feature", **period)

    assert names == ["env", "feature"]
    assert {key: t.requests for key, t in by_feature.items()} == {"chat": 2, "search": 1, "": 1}


def test_refused_requests_are_summed_per_status_and_code(priced):
    refusals_record(
        [
            {
                "org_slug": priced.slug,
                "day": "2026-11-02",
                "status": 401,
                "code": "bad",
                "count": 2,
            },
            {
                "org_slug": priced.slug,
                "day": "2026-11-03",
                "status": 401,
                "code": "bad",
                "count": 1,
            },
            {
                "org_slug": priced.slug,
                "day": "2026-11-05",
                "status": 413,
                "code": "big",
                "count": 9,
            },
        ]
    )

    found = selectors.refused_requests(
        organization=priced, start=_utc(2026, 11, 2), end=_utc(2026, 11, 4)
    )

    assert found == {(401, "bad"): 3}
