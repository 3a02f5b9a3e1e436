"""``GET /api/v1/customers/`` and ``/customers/{external_id}/``: usage, Stripe revenue and margin
per customer against figures worked out by hand.

Usage is priced by an override ($1 per million input tokens, $2 per million output tokens for
test-* models): each request here (1,000 input, 100 output tokens) costs $0.0012. Revenue comes
from the fake Stripe account of ``apps/billing/tests/factories.py`` after a real sync; its
January 2026 figures, by hand: alice gross 75.00 USD, fees 19.08, net 55.92; cus_Bob0001 gross
30.00, net 13.83; dave ¥5000 gross, ¥4820 net (JPY, no USD revenue); zed no Stripe customer.
"""

from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import quote

import pytest

from apps.billing.tests import conftest as billing_fixtures
from apps.usage.models import PriceOverride
from apps.usage.tests.factories import store_usage

# The billing suite's fixtures: the fake Stripe account of its factories, connected and synced.
connected = billing_fixtures.connected
costr_customers = billing_fixtures.costr_customers
stripe_account = billing_fixtures.stripe_account
stripe_key = billing_fixtures.stripe_key

pytestmark = pytest.mark.django_db

LIST_URL = "/api/v1/customers/"
JANUARY = {"start": "2026-01-01", "end": "2026-01-31"}
ZERO = "0.000000000000"


def detail_url(external_id: str) -> str:
    return f"{LIST_URL}{quote(external_id, safe='')}/"


@pytest.fixture
def priced(org):
    PriceOverride.objects.create(
        organization=org,
        model_pattern="test-*",
        valid_from=datetime(2025, 1, 1, tzinfo=UTC),
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(2),
    )
    return org


def use(org, customer, day, *, count=1, model="test-small", month=1):
    for _ in range(count):
        store_usage(
            org,
            customer=customer,
            model=model,
            timestamp=datetime(2026, month, day, 12, tzinfo=UTC).isoformat(),
        )


@pytest.fixture
def january(priced, connected, costr_customers):
    """alice: 10 priced requests in January (and 5 in February, outside it); cus_Bob0001: 2
    priced and 1 unpriced; dave: 1; zed: none."""
    use(priced, "alice", 10, count=10)
    use(priced, "alice", 3, count=5, month=2)
    use(priced, "cus_Bob0001", 12, count=2)
    use(priced, "cus_Bob0001", 13, model="nobody-knows-this-model")
    use(priced, "dave", 20)
    return priced


def test_the_list_has_cost_revenue_and_margin_per_customer(api, january, stripe_account):
    body = api.get(LIST_URL, JANUARY).json()

    assert body["next"] is None and body["previous"] is None
    assert body["results"] == [
        {
            "external_id": "alice",
            "name": "",
            "stripe_customer_id": stripe_account.named["alice"]["id"],
            "requests": 10,
            "cost_usd": "0.012000000000",
            "unpriced_requests": 0,
            "usage_unknown_requests": 0,
            "revenue": [{"currency": "usd", "gross": "75.00", "net": "55.92"}],
            # 55.92 - 0.012 = 55.908; 55.908 / 55.92 = 99.9785…%
            "margin_usd": "55.908000000000",
            "margin_pct": "99.98",
        },
        {
            "external_id": "cus_Bob0001",
            "name": "",
            "stripe_customer_id": "cus_Bob0001",
            "requests": 3,
            "cost_usd": "0.002400000000",
            "unpriced_requests": 1,
            "usage_unknown_requests": 0,
            "revenue": [{"currency": "usd", "gross": "30.00", "net": "13.83"}],
            # 13.83 - 0.0024 = 13.8276; 13.8276 / 13.83 = 99.9826…%
            "margin_usd": "13.827600000000",
            "margin_pct": "99.98",
        },
        {
            "external_id": "dave",
            "name": "",
            "stripe_customer_id": stripe_account.named["dave"]["id"],
            "requests": 1,
            "cost_usd": "0.001200000000",
            "unpriced_requests": 0,
            "usage_unknown_requests": 0,
            # Yen stay yen: listed, never converted, and no USD margin.
            "revenue": [{"currency": "jpy", "gross": "5000", "net": "4820"}],
            "margin_usd": None,
            "margin_pct": None,
        },
        {
            "external_id": "zed",
            "name": "",
            "stripe_customer_id": None,
            "requests": 0,
            "cost_usd": ZERO,
            "unpriced_requests": 0,
            "usage_unknown_requests": 0,
            "revenue": [],
            "margin_usd": None,
            "margin_pct": None,
        },
    ]


def test_the_detail_is_the_same_customer_over_the_same_period(api, january, stripe_account):
    listed = {c["external_id"]: c for c in api.get(LIST_URL, JANUARY).json()["results"]}

    for external_id in ("alice", "cus_Bob0001", "dave", "zed"):
        response = api.get(detail_url(external_id), JANUARY)
        assert response.status_code == 200, response.content
        assert response.json() == listed[external_id]


def test_a_wider_period_adds_february(api, january):
    alice = api.get(detail_url("alice"), {"start": "2026-01-01", "end": "2026-02-28"}).json()

    # January and February: 15 requests; revenue 125.00 gross, 104.17 net.
    assert (alice["requests"], alice["cost_usd"]) == (15, "0.018000000000")
    assert alice["revenue"] == [{"currency": "usd", "gross": "125.00", "net": "104.17"}]
    assert alice["margin_usd"] == "104.152000000000"
    assert alice["margin_pct"] == "99.98"


def test_without_stripe_there_is_no_revenue_and_no_margin(api, priced, django_assert_num_queries):
    use(priced, "acme", 10, count=2)
    api.get(LIST_URL, JANUARY)  # warms the token cache

    # The organization, the page, its usage, and the revenue source (none: no more queries).
    with django_assert_num_queries(4):
        (acme,) = api.get(LIST_URL, JANUARY).json()["results"]

    assert acme["cost_usd"] == "0.002400000000"
    assert (acme["revenue"], acme["margin_usd"], acme["margin_pct"]) == ([], None, None)


@pytest.mark.parametrize(
    "external_id",
    ["team/a b", "a/b/", "100%", "ünïcødé 客户", "?x=1#y", "..", "trailing space ", "two\nlines"],
)
def test_external_ids_with_odd_characters_work_in_the_detail_url(api, priced, external_id):
    use(priced, external_id, 10)

    response = api.get(detail_url(external_id), JANUARY)

    assert response.status_code == 200, response.content
    assert (response.json()["external_id"], response.json()["requests"]) == (external_id, 1)


def test_an_unknown_customer_is_404(api, priced):
    use(priced, "acme", 10)

    for external_id in ("acm", "acme ", "ACME", "a\x00"):
        response = api.get(detail_url(external_id), JANUARY)
        assert response.status_code == 404, external_id
        assert response.json()["error"]["code"] == "not_found"


def test_another_organizations_customer_is_404_and_never_listed(api, priced, other_org):
    use(other_org, "their-customer", 10)
    use(priced, "ours", 10)

    listed = api.get(LIST_URL, JANUARY).json()["results"]
    response = api.get(detail_url("their-customer"), JANUARY)

    assert [c["external_id"] for c in listed] == ["ours"]
    assert response.status_code == 404
    assert "their-customer" not in response.content.decode()


def test_the_list_is_cursor_paginated_by_external_id(api, priced):
    names = [f"customer-{n:02}" for n in range(7)]
    for name in reversed(names):
        use(priced, name, 10)

    seen, response = [], api.get(LIST_URL, {**JANUARY, "page_size": 3})
    while True:
        assert response.status_code == 200, response.content
        seen.append([c["external_id"] for c in response.json()["results"]])
        if response.json()["next"] is None:
            break
        response = api.get(response.json()["next"])

    assert seen == [names[0:3], names[3:6], names[6:]]
    assert all(c["requests"] == 1 for c in api.get(LIST_URL, JANUARY).json()["results"])


def test_the_period_defaults_to_the_last_30_days(api, priced):
    use(priced, "acme", 10)  # January 2026: long before the last 30 days

    (acme,) = api.get(LIST_URL).json()["results"]

    assert acme["requests"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "soon"}, "start"),
        ({"start": "2026-02-01", "end": "2026-01-01"}, "end"),
        ({"cursor": "bm9wZQ=="}, "cursor"),
        ({"page_size": "-1"}, "page_size"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(api, priced, params, field):
    use(priced, "acme", 10)

    for url in (LIST_URL, detail_url("acme")):
        if url != LIST_URL and field in ("cursor", "page_size"):
            continue
        response = api.get(url, params)
        assert response.status_code == 400, (url, response.content)
        assert field in response.json()["error"]["details"]


def test_the_query_count_does_not_grow_with_customers(
    api,
    january,
    django_assert_num_queries,
    costr_customers,
):
    # The token's organization, the page of customers, their usage (whole days: rollups), and
    # their revenue: the revenue source, the mapped Stripe customers, the monthly revenue.
    queries = 6
    api.get(LIST_URL, JANUARY)  # warms the token cache
    with django_assert_num_queries(queries):
        small = api.get(LIST_URL, JANUARY).json()["results"]
    for n in range(40):
        use(january, f"more-{n:02}", 1 + n % 28)
    with django_assert_num_queries(queries):
        large = api.get(LIST_URL, {**JANUARY, "page_size": 500}).json()["results"]

    assert (len(small), len(large)) == (4, 44)


def test_the_detail_query_count_is_fixed(api, january, django_assert_num_queries):
    api.get(detail_url("alice"), JANUARY)
    # The organization, the customer, its usage (rollups), and its revenue (three queries).
    with django_assert_num_queries(6):
        api.get(detail_url("alice"), JANUARY)


def test_a_customer_whose_cost_is_unknown_has_a_null_cost_and_no_margin(
    api, priced, connected, costr_customers, stripe_account
):
    """cus_Bob0001's January: one request of a model without a price, one success whose usage
    could not be read. Its cost is unknown, not $0, so its margin is not its revenue."""
    use(priced, "cus_Bob0001", 13, model="nobody-knows-this-model")
    store_usage(
        priced,
        customer="cus_Bob0001",
        model="test-small",
        timestamp=datetime(2026, 1, 14, 12, tzinfo=UTC).isoformat(),
        input_tokens=None,
        cached_input_tokens=None,
        cache_write_tokens=None,
        output_tokens=None,
        reasoning_tokens=None,
    )

    body = api.get(detail_url("cus_Bob0001"), JANUARY).json()

    assert (
        body["requests"],
        body["cost_usd"],
        body["unpriced_requests"],
        body["usage_unknown_requests"],
    ) == (2, None, 1, 1)
    assert body["revenue"] == [{"currency": "usd", "gross": "30.00", "net": "13.83"}]
    assert (body["margin_usd"], body["margin_pct"]) == (None, None)
