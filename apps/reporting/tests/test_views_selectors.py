"""The selectors the dashboards added for speed, held to the generic ones they stand in for and
to hand-computed figures."""

from datetime import UTC, datetime

import pytest

from apps.reporting import selectors
from apps.reporting.tests.dashboard_data import REQUEST_COST, price, use, utc

pytestmark = pytest.mark.django_db

OCT = (utc(2026, 10, 1), utc(2026, 11, 1))
SEP = (utc(2026, 9, 1), utc(2026, 10, 1))


@pytest.fixture
def priced(org):
    return price(org)


def test_latency_percentiles_compared_are_nearest_rank_per_period(priced, other_org):
    for n, latency in enumerate([10, 20, 30, 40, 50, 60]):
        use(priced, utc(2026, 10, 2, n), latency_ms=latency)
    for n, latency in enumerate([7, 3, 5]):
        use(priced, utc(2026, 9, 2, n), latency_ms=latency)
    use(priced, utc(2026, 11, 1), latency_ms=999)  # at the end instant: outside
    use(other_org, utc(2026, 10, 2), latency_ms=1)

    now, before = selectors.latency_percentiles_compared(
        organization=priced, current=OCT, previous=SEP
    )

    # Nearest rank, interpolated in its histogram bucket: p50 of 6 is the 3rd, the 1st of 2 in
    # [25, 50): 37.5; p99 the 6th, the 2nd of 2 in [50, 100). Of 3 (all in [0, 25)): the 2nd,
    # 25 * 2 / 3, and the 3rd.
    assert now == {50: 38, 99: 100}
    assert before == {50: 17, 99: 25}
    assert now == selectors.latency_percentiles(organization=priced, start=OCT[0], end=OCT[1])


def test_latency_percentiles_compared_of_an_empty_period_are_none(priced):
    use(priced, utc(2026, 10, 2), latency_ms=10)
    now, before = selectors.latency_percentiles_compared(
        organization=priced, current=OCT, previous=SEP
    )
    assert (now, before) == ({50: 25, 99: 25}, {50: None, 99: None})  # [0, 25)


def test_usage_by_property_compared_splits_the_two_periods(priced, other_org):
    use(priced, utc(2026, 10, 2), properties={"feature": "chat"})
    use(priced, utc(2026, 10, 3), properties={"feature": "chat"})
    use(priced, utc(2026, 10, 4), properties={"other": "x"})
    use(priced, utc(2026, 9, 4), properties={"feature": "search"})
    use(priced, utc(2026, 8, 31, 23), properties={"feature": "search"})  # before both
    use(other_org, utc(2026, 10, 2), properties={"feature": "chat"})

    now, before = selectors.usage_by_property_compared(
        organization=priced, current=OCT, previous=SEP, name="feature"
    )

    assert {k: (t.requests, t.cost) for k, t in now.items()} == {
        "chat": (2, 2 * REQUEST_COST),
        "": (1, REQUEST_COST),
    }
    assert {k: (t.requests, t.cost) for k, t in before.items()} == {"search": (1, REQUEST_COST)}


def test_property_names_recent_reads_the_latest_requests(priced):
    use(priced, utc(2026, 10, 2), properties={"old": "1"})
    use(priced, utc(2026, 10, 3), properties={"feature": "a", "env": "b"})
    use(priced, utc(2026, 10, 4))

    assert selectors.property_names_recent(organization=priced, start=OCT[0], end=OCT[1]) == [
        "env",
        "feature",
        "old",
    ]
    assert selectors.property_names_recent(
        organization=priced, start=OCT[0], end=OCT[1], sample=2
    ) == ["env", "feature"]


def test_customer_usage_by_day_model_and_month(priced):
    from zoneinfo import ZoneInfo

    use(priced, utc(2026, 10, 2, 3), customer="acme")  # Oct 1 in Los Angeles
    use(priced, utc(2026, 10, 2, 12), customer="acme", model="test-big")
    use(priced, utc(2026, 11, 2, 12), customer="acme")
    use(priced, utc(2026, 10, 2, 12), customer="globex")
    use(priced, utc(2026, 10, 2, 12), customer=None)

    by_model = selectors.customer_usage_by(
        organization=priced, customer="acme", start=OCT[0], end=OCT[1], group_by="model"
    )
    assert {k: t.requests for k, t in by_model.items()} == {"test-small": 1, "test-big": 1}
    by_day = selectors.customer_usage_by(
        organization=priced,
        customer="acme",
        start=OCT[0],
        end=OCT[1],
        group_by="day",
        zone=ZoneInfo("America/Los_Angeles"),
    )
    assert {k.isoformat(): t.requests for k, t in by_day.items()} == {
        "2026-10-01": 1,
        "2026-10-02": 1,
    }
    nobody = selectors.customer_usage_by(
        organization=priced, customer="", start=OCT[0], end=OCT[1], group_by="provider"
    )
    assert {k: t.requests for k, t in nobody.items()} == {"openai": 1}
    months = selectors.customer_usage_by_month(
        organization=priced,
        customer="acme",
        start=datetime(2026, 10, 15, tzinfo=UTC),
        end=datetime(2026, 11, 5, tzinfo=UTC),
    )
    # Whole months: October's two requests and November's one.
    assert {k.isoformat(): t.requests for k, t in months.items()} == {
        "2026-10-01": 2,
        "2026-11-01": 1,
    }


def test_organization_has_usage(priced, other_org):
    assert not selectors.organization_has_usage(organization=priced)
    use(other_org, utc(2026, 10, 2))
    assert not selectors.organization_has_usage(organization=priced)
    use(priced, utc(2026, 10, 2))
    assert selectors.organization_has_usage(organization=priced)
