"""``GET /api/v1/reports/spend/`` against figures worked out by hand. Prices come from an
override ($1 per million input tokens, $2 per million output tokens for test-* models), so each
priced request here (1,000 input, 100 output tokens) costs $0.0012; a model without a price is
counted as unpriced and adds nothing to the cost, and a group of unpriced requests only has a
null cost."""

from datetime import UTC, datetime, time, timedelta

import pytest
from django.utils import timezone

from apps.usage.tests.factories import NO_TOKENS, store_usage

pytestmark = pytest.mark.django_db

URL = "/api/v1/reports/spend/"
PERIOD = {"start": "2026-11-01T12:00:00Z", "end": "2026-11-04T06:00:00Z"}
ZERO = "0.000000000000"


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def use(org, when: datetime, **overrides):
    overrides.setdefault("model", "test-a")
    return store_usage(org, timestamp=when.isoformat(), **overrides)


@pytest.fixture
def traffic(priced, other_org):
    """Five requests inside ``PERIOD`` (a partial first day, two whole days, a partial last day),
    and three outside it."""
    use(priced, utc(2026, 11, 1, 18), customer="acme", properties={"feature": "chat"})
    use(priced, utc(2026, 11, 2, 0), customer="acme")
    use(
        priced,
        utc(2026, 11, 2, 12),
        customer="globex",
        model="test-b",
        provider="anthropic",
        properties={"feature": "search"},
    )
    use(
        priced,
        utc(2026, 11, 3, 23, 59),
        customer=None,
        model="nobody-knows-this-model",
        cached_input_tokens=200,
        cache_write_tokens=100,
        reasoning_tokens=30,
    )
    use(priced, utc(2026, 11, 4, 5, 59), customer="globex", properties={"feature": "chat"})
    # Outside: before the start, at the end instant, and another organization's.
    use(priced, utc(2026, 11, 1, 11, 59), customer="acme")
    use(priced, utc(2026, 11, 4, 6), customer="acme")
    use(other_org, utc(2026, 11, 2, 12), customer="acme")
    return priced


def figures(requests, cost, *, unpriced=0, usage_unknown=0, cached=0, writes=0, reasoning=0):
    return {
        "requests": requests,
        "input_tokens": 1000 * requests,
        "cached_input_tokens": cached,
        "cache_write_tokens": writes,
        "output_tokens": 100 * requests,
        "reasoning_tokens": reasoning,
        "cost_usd": cost,
        "unpriced_requests": unpriced,
        "usage_unknown_requests": usage_unknown,
    }


UNPRICED_TOKENS = {"cached": 200, "writes": 100, "reasoning": 30}
TOTAL = figures(5, "0.004800000000", unpriced=1, **UNPRICED_TOKENS)


def test_by_day(api, traffic):
    body = api.get(URL, {**PERIOD, "group_by": "day"}).json()

    assert body == {
        "group_by": "day",
        "start": "2026-11-01T12:00:00Z",
        "end": "2026-11-04T06:00:00Z",
        "rows": [
            {"key": "2026-11-01", **figures(1, "0.001200000000")},
            {"key": "2026-11-02", **figures(2, "0.002400000000")},
            {"key": "2026-11-03", **figures(1, None, unpriced=1, **UNPRICED_TOKENS)},
            {"key": "2026-11-04", **figures(1, "0.001200000000")},
        ],
        "total": TOTAL,
    }


def test_by_customer_costliest_first_and_no_customer_as_null(api, traffic):
    body = api.get(URL, {**PERIOD, "group_by": "customer"}).json()

    assert body["rows"] == [
        {"key": "acme", **figures(2, "0.002400000000")},
        {"key": "globex", **figures(2, "0.002400000000")},
        {"key": None, **figures(1, None, unpriced=1, **UNPRICED_TOKENS)},
    ]
    assert body["total"] == TOTAL


def test_by_model_and_by_provider(api, traffic):
    by_model = api.get(URL, {**PERIOD, "group_by": "model"}).json()
    by_provider = api.get(URL, {**PERIOD, "group_by": "provider"}).json()

    assert by_model["rows"] == [
        {"key": "test-a", **figures(3, "0.003600000000")},
        {"key": "test-b", **figures(1, "0.001200000000")},
        {"key": "nobody-knows-this-model", **figures(1, None, unpriced=1, **UNPRICED_TOKENS)},
    ]
    assert by_provider["rows"] == [
        {"key": "openai", **figures(4, "0.003600000000", unpriced=1, **UNPRICED_TOKENS)},
        {"key": "anthropic", **figures(1, "0.001200000000")},
    ]
    assert by_model["total"] == by_provider["total"] == TOTAL


def test_by_property(api, traffic):
    body = api.get(URL, {**PERIOD, "group_by": "property:feature"}).json()

    assert body["group_by"] == "property:feature"
    assert body["rows"] == [
        {"key": "chat", **figures(2, "0.002400000000")},
        # Equal cost: more requests first.
        {"key": None, **figures(2, "0.001200000000", unpriced=1, **UNPRICED_TOKENS)},
        {"key": "search", **figures(1, "0.001200000000")},
    ]
    assert body["total"] == TOTAL


def test_a_property_nobody_sent_puts_everything_under_null(api, traffic):
    body = api.get(URL, {**PERIOD, "group_by": "property:no such/thing"}).json()

    assert [(row["key"], row["requests"]) for row in body["rows"]] == [(None, 5)]


def test_an_end_date_is_the_last_day_included(api, traffic):
    body = api.get(URL, {"start": "2026-11-02", "end": "2026-11-03", "group_by": "day"}).json()

    assert (body["start"], body["end"]) == ("2026-11-02T00:00:00Z", "2026-11-04T00:00:00Z")
    assert [(row["key"], row["requests"]) for row in body["rows"]] == [
        ("2026-11-02", 2),
        ("2026-11-03", 1),
    ]


def test_an_empty_period_has_no_rows_and_a_zero_total(api, traffic):
    body = api.get(URL, {"start": "2025-01-01", "end": "2025-01-31"}).json()

    assert body["rows"] == []
    assert body["total"] == {**figures(0, ZERO), "input_tokens": 0, "output_tokens": 0}


def test_without_a_period_the_last_30_utc_days_today_included(api, priced):
    now = timezone.now()
    first = datetime.combine(now.date() - timedelta(days=29), time.min, tzinfo=UTC)
    use(priced, first)
    use(priced, now - timedelta(seconds=1))
    use(priced, first - timedelta(microseconds=1))

    body = api.get(URL).json()
    only_end = api.get(URL, {"end": now.date().isoformat()}).json()

    assert body["group_by"] == "day"
    assert body["start"] == first.isoformat().replace("+00:00", "Z")
    assert body["end"] == (first + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    assert body["total"]["requests"] == 2
    assert (only_end["start"], only_end["end"]) == (body["start"], body["end"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"group_by": "property:"}, "group_by"),
        ({"group_by": "property:" + "x" * 256}, "group_by"),
        ({"group_by": "property:a\x00b"}, "group_by"),
        ({"start": "2026-11-02", "end": "2026-11-01"}, "end"),
        ({"start": "2026-02-30"}, "start"),
        ({"end": "0001-01-01"}, "end"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(api, priced, params, field):
    response = api.get(URL, params)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["details"], error


@pytest.mark.parametrize(
    ("params", "queries"),
    [
        # The token's organization, then the rollups of the whole days.
        ({"start": "2026-10-01", "end": "2026-11-30", "group_by": "customer"}, 2),
        ({"start": "2026-10-01", "end": "2026-11-30", "group_by": "day"}, 2),
        # ... and the events of the partial days at the edges.
        ({**PERIOD, "group_by": "model"}, 3),
        ({**PERIOD, "group_by": "day"}, 3),
        # A property: the totals and the property rollups of the whole days, and the edges.
        ({**PERIOD, "group_by": "property:feature"}, 4),
    ],
)
def test_the_query_count_does_not_grow_with_the_data(
    api, priced, django_assert_num_queries, params, queries
):
    def fill(count):
        for n in range(count):
            use(
                priced,
                utc(2026, 11, 1 + n % 3, n % 24, n % 60),
                customer=f"customer-{n}",
                model=f"test-{n % 5}",
                properties={"feature": f"f{n % 4}"},
            )

    fill(3)
    api.get(URL, params)  # warms the token cache
    with django_assert_num_queries(queries):
        small = api.get(URL, params).json()
    fill(60)
    with django_assert_num_queries(queries):
        large = api.get(URL, params).json()

    assert small["total"]["requests"] < large["total"]["requests"]


def test_usage_unknown_is_counted_apart_and_no_usage_as_neither(api, priced):
    """test-a: one priced request, one success without usage (usage unknown), one rate-limited
    request without usage (billed nothing); test-c: only a success without usage, so its cost is
    null, not $0."""
    when = utc(2026, 11, 10, 12)
    use(priced, when)
    use(priced, when, **NO_TOKENS)
    use(priced, when, status=429, outcome="upstream_error", **NO_TOKENS)
    use(priced, when, model="test-c", **NO_TOKENS)
    tokenless = {"input_tokens": 0, "output_tokens": 0}

    body = api.get(URL, {"start": "2026-11-10", "end": "2026-11-10", "group_by": "model"}).json()

    assert body["rows"] == [
        {
            "key": "test-a",
            **figures(1, "0.001200000000"),
            "requests": 3,
            "usage_unknown_requests": 1,
        },
        {"key": "test-c", **figures(1, None, usage_unknown=1), **tokenless},
    ]
    assert body["total"] == {
        **figures(1, "0.001200000000"),
        "requests": 4,
        "usage_unknown_requests": 2,
    }
