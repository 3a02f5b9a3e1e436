"""Latency percentiles read from the rollups' histograms and properties read from the property
rollup, against figures worked out by hand from the bucket bounds (``LATENCY_BOUNDS_MS``: 0, 25,
50, 100, 200, …, 2500, 4000, …) and the override's prices ($0.0012 a default request).

Interpolation inside a bucket: the rank's k-th of the bucket's c requests is taken to lie at
``low + (high - low) * k / c``."""

import pytest

from apps.reporting import selectors
from apps.reporting.tests.dashboard_data import REQUEST_COST, price, use, utc
from apps.usage.metering.events import usage_events_write
from apps.usage.tests.factories import usage_record

pytestmark = pytest.mark.django_db

OCT = (utc(2026, 10, 1), utc(2026, 11, 1))
SEP = (utc(2026, 9, 1), utc(2026, 10, 1))


@pytest.fixture
def priced(org):
    return price(org)


def _many(org, when, latencies):
    usage_events_write(
        [
            usage_record(org, timestamp=when.isoformat(), model="test-small", latency_ms=latency)
            for latency in latencies
        ]
    )


def test_percentiles_are_interpolated_inside_the_rank_s_bucket(priced):
    # 50 requests in [0, 25), 40 in [100, 200), 10 in [2500, 4000).
    _many(priced, utc(2026, 10, 2, 12), [10] * 50 + [150] * 40 + [3000] * 10)

    found = selectors.latency_percentiles(
        organization=priced, start=OCT[0], end=OCT[1], percentiles=(50, 70, 90, 99)
    )

    assert found == {
        50: 25,  # rank 50: the 50th of 50 in [0, 25)
        70: 150,  # rank 70: the 20th of 40 in [100, 200): 100 + 100 * 20 / 40
        90: 200,  # rank 90: the 40th of 40
        99: 3850,  # rank 99: the 9th of 10 in [2500, 4000): 2500 + 1500 * 9 / 10
    }


def test_percentiles_add_the_edges_events_to_the_whole_days_histograms(priced, other_org):
    _many(priced, utc(2026, 11, 2, 12), [10, 10])  # a whole day: rollups
    _many(priced, utc(2026, 11, 1, 18), [3000])  # the partial first day: events
    _many(priced, utc(2026, 11, 3, 5), [3000])  # the partial last day: events
    _many(priced, utc(2026, 11, 1, 11), [900_000])  # before the start
    _many(priced, utc(2026, 11, 3, 6), [900_000])  # at the end instant
    _many(other_org, utc(2026, 11, 2, 12), [900_000])

    found = selectors.latency_percentiles(
        organization=priced, start=utc(2026, 11, 1, 12), end=utc(2026, 11, 3, 6)
    )

    # 4 requests: rank 2 is the 2nd of 2 in [0, 25); rank 4 the 2nd of 2 in [2500, 4000).
    assert found == {50: 25, 99: 4000}


def test_compared_percentiles_split_the_periods_and_match_the_single_reads(priced, other_org):
    _many(priced, utc(2026, 10, 2), [30, 40, 60, 80])  # [25, 50) twice, [50, 100) twice
    _many(priced, utc(2026, 10, 31, 23), [300])  # October's last day, whole
    _many(priced, utc(2026, 9, 5), [120])
    _many(priced, utc(2026, 11, 1), [900_000])  # at the end instant: outside
    _many(other_org, utc(2026, 10, 2), [900_000])

    now, before = selectors.latency_percentiles_compared(
        organization=priced, current=OCT, previous=SEP
    )

    # October, 5 requests: rank 3 is the 1st of 2 in [50, 100): 75; rank 5 the 1 in [200, 400).
    assert now == {50: 75, 99: 400}
    # September: one request in [100, 200).
    assert before == {50: 200, 99: 200}
    assert now == selectors.latency_percentiles(organization=priced, start=OCT[0], end=OCT[1])
    assert before == selectors.latency_percentiles(organization=priced, start=SEP[0], end=SEP[1])


def test_compared_percentiles_of_an_empty_period_are_none(priced):
    _many(priced, utc(2026, 10, 2), [10])

    assert selectors.latency_percentiles_compared(
        organization=priced, current=OCT, previous=SEP
    ) == ({50: 25, 99: 25}, {50: None, 99: None})


def test_compared_percentiles_read_whole_days_in_one_query(priced, django_assert_num_queries):
    _many(priced, utc(2026, 10, 2), [10])
    _many(priced, utc(2026, 9, 2), [10])

    with django_assert_num_queries(1):
        selectors.latency_percentiles_compared(organization=priced, current=OCT, previous=SEP)


def test_usage_by_property_from_rollups_and_edges(priced):
    use(priced, utc(2026, 11, 2, 1), properties={"feature": "chat"})  # whole day
    use(priced, utc(2026, 11, 2, 2), properties={"feature": "chat", "env": "prod"})
    use(priced, utc(2026, 11, 2, 3), properties={"env": "prod"})  # without: ""
    use(priced, utc(2026, 11, 2, 4), properties={"feature": "y" * 300})  # cut to 255
    use(priced, utc(2026, 11, 1, 20), properties={"feature": "search"})  # partial first day
    use(priced, utc(2026, 11, 3, 2))  # partial last day, without
    use(priced, utc(2026, 11, 3, 7), properties={"feature": "chat"})  # after the end
    period = {"start": utc(2026, 11, 1, 12), "end": utc(2026, 11, 3, 6)}

    found = selectors.usage_by_property(organization=priced, name="feature", **period)
    names = selectors.property_names(organization=priced, **period)

    assert {key: (t.requests, t.cost) for key, t in found.items()} == {
        "chat": (2, 2 * REQUEST_COST),
        "search": (1, REQUEST_COST),
        "y" * 255: (1, REQUEST_COST),
        "": (2, 2 * REQUEST_COST),
    }
    assert names == ["env", "feature"]


def test_usage_by_property_compared_reads_rollups_for_whole_days(
    priced, other_org, django_assert_num_queries
):
    use(priced, utc(2026, 10, 2), properties={"feature": "chat"})
    use(priced, utc(2026, 10, 3), properties={"feature": "chat"}, status=500)
    use(priced, utc(2026, 10, 4), properties={"other": "x"})
    use(priced, utc(2026, 9, 4), properties={"feature": "search"})
    use(priced, utc(2026, 9, 5), model="mystery-model", properties={"feature": "search"})
    use(priced, utc(2026, 8, 31, 23), properties={"feature": "search"})  # before both
    use(other_org, utc(2026, 10, 2), properties={"feature": "chat"})

    with django_assert_num_queries(2):  # no edges: totals and property rollups
        now, before = selectors.usage_by_property_compared(
            organization=priced, current=OCT, previous=SEP, name="feature"
        )

    assert {k: (t.requests, t.errors, t.cost) for k, t in now.items()} == {
        "chat": (2, 1, 2 * REQUEST_COST),
        "": (1, 0, REQUEST_COST),
    }
    # The unknown model: counted, unpriced, not priced at zero.
    assert {k: (t.requests, t.unpriced_requests, t.cost) for k, t in before.items()} == {
        "search": (2, 1, REQUEST_COST)
    }
