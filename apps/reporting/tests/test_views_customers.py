"""The customers table (sort, search, pages of 50, margin columns) and a customer's page."""

import re
from datetime import date
from html import unescape

import pytest

from apps.reporting.tests.dashboard_data import (
    OCTOBER,
    STRIPE_OCTOBER,
    build_october,
    chart_data,
    connect_stripe,
    price,
    text_of,
    url,
    use,
    utc,
)
from apps.usage.models import Customer

pytestmark = pytest.mark.django_db


@pytest.fixture
def october(org):
    return build_october(org)


@pytest.fixture
def with_stripe(october, owner, fake_stripe, django_capture_on_commit_callbacks):
    Customer.objects.create(organization=october, external_id="dave", name="Dave KK")
    connect_stripe(october, owner, fake_stripe, django_capture_on_commit_callbacks, STRIPE_OCTOBER)
    return october


def _rows(html: str) -> list[str]:
    body = html[html.index('<table class="customers">') :]
    body = body[body.index("<tbody>") : body.index("</tbody>")]
    rows = re.split(r"<tr\b[^>]*>", body)[1:]
    return [" ".join(re.sub(r"<[^>]+>", " ", row).split()) for row in rows if "empty" not in row]


def _names(html: str) -> list[str]:
    return [row.split(" ")[0] for row in _rows(html)]


def test_the_table_shows_each_customers_usage_in_the_period(client, october, member):
    client.force_login(member)
    rows = _rows(client.get(url("customers", october), OCTOBER).content.decode())

    # acme: 3 x $0.0012 priced + 1 unpriced; 4 requests; 4 x 1,100 tokens; last seen Oct 7
    # globex: $1.00 + $0.0012; 2 requests; 1,000,000 + 1,100 tokens; last seen Oct 8
    assert rows == [
        "globex $1.00 2 1,001,100 Oct 8, 2026",
        "acme $0.0036 1 unpriced 4 4,400 Oct 7, 2026",
    ]


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("-spend", ["globex", "acme"]),
        ("spend", ["acme", "globex"]),
        ("-requests", ["acme", "globex"]),
        ("-tokens", ["globex", "acme"]),
        ("tokens", ["acme", "globex"]),
        ("last_seen", ["acme", "globex"]),
        ("-last_seen", ["globex", "acme"]),
        ("customer", ["acme", "globex"]),
        ("-customer", ["globex", "acme"]),
    ],
)
def test_the_table_sorts(client, october, member, sort, order):
    client.force_login(member)
    html = client.get(url("customers", october), {**OCTOBER, "sort": sort}).content.decode()
    assert _names(html) == order


def test_search_matches_external_id_or_name(client, october, member):
    Customer.objects.for_org(october).filter(external_id="acme").update(name="Acme Rockets")
    client.force_login(member)

    def found(q):
        page = client.get(url("customers", october), {**OCTOBER, "q": q}).content.decode()
        return _names(page)

    assert found("GLOB") == ["globex"]
    assert found("rocket") == ["acme"]
    assert found("nobody") == []


def test_pages_hold_fifty_customers(client, org, member):
    for n in range(120):
        Customer.objects.create(organization=org, external_id=f"c{n:03}")
    use(org, utc(2026, 10, 1), customer="c000")
    client.force_login(member)

    def page(number):
        params = {**OCTOBER, "sort": "customer", "page": number}
        return client.get(url("customers", org), params).content.decode()

    first, third = page(1), page(3)
    assert _names(first) == [f"c{n:03}" for n in range(50)]
    assert _names(page(2))[0] == "c050"
    assert _names(third) == [f"c{n:03}" for n in range(100, 120)]
    assert "Page 3 of 3 · 120 customers" in third
    assert "sort=customer" in first[first.index('class="pager"') :]


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        # Net USD revenue: acme $9.41, globex $0.50; dave's yen is no USD revenue: last.
        ("-revenue", ["acme", "globex", "dave"]),
        ("revenue", ["globex", "acme", "dave"]),
        # Margin %: globex -100.24, acme 99.96.
        ("margin_pct", ["globex", "acme", "dave"]),
        ("-margin_pct", ["acme", "globex", "dave"]),
        # Cost / revenue: globex 200.24%, acme 0.04%.
        ("-cost_pct", ["globex", "acme", "dave"]),
        ("cost_pct", ["acme", "globex", "dave"]),
    ],
)
def test_the_table_sorts_by_revenue_and_margin_columns(client, with_stripe, member, sort, order):
    client.force_login(member)
    html = client.get(url("customers", with_stripe), {**OCTOBER, "sort": sort}).content.decode()
    assert _names(html) == order
    # Every column heading is a sort link that keeps the period.
    head = html[html.index('<table class="customers">') : html.index("</thead>")]
    for field in ("customer", "spend", "requests", "tokens", "last_seen", "revenue", "margin"):
        assert re.search(rf'href="\?[^"]*period=custom[^"]*sort=-?{field}"', head), field
    assert re.search(r"sort=-?margin_pct\"", head) and re.search(r"sort=-?cost_pct\"", head)


def test_margin_columns_with_unprofitable_rows_highlighted(client, with_stripe, member):
    client.force_login(member)
    html = client.get(url("customers", with_stripe), {**OCTOBER, "sort": "margin"}).content.decode()

    rows = _rows(html)
    # globex: $0.50 - $1.0012 = -$0.5012 (-100.24%, cost 200.24% of revenue), written to three
    # significant digits below $1: -$0.501; lowest margin first
    assert (
        rows[0]
        == "globex $1.00 2 1,001,100 Oct 8, 2026 $0.50 -$0.501 unprofitable -100.24% 200.24%"
    )
    # acme: $9.41 - $0.0036 = $9.4064 (99.96%); cost 0.0036 / 9.41 = 0.04% of revenue
    assert rows[1] == "acme $0.0036 1 unpriced 4 4,400 Oct 7, 2026 $9.41 $9.41 99.96% 0.04%"
    # dave pays in yen: shown as it is, no margin
    assert rows[2] == "dave Dave KK $0.00 0 0 — 4820 JPY — — —"
    assert html.count('<tr class="unprofitable">') == 1
    assert "1 unprofitable" in html


def _customer_traffic(org, customers, per_customer):
    for n in range(customers):
        for k in range(per_customer):
            use(org, utc(2026, 10, 1 + k % 28, k % 24), customer=f"c{n}", model=f"test-{k % 3}")


def test_customers_query_count_does_not_grow(
    client, with_stripe, member, django_assert_num_queries
):
    client.force_login(member)
    _customer_traffic(with_stripe, 2, 2)
    with django_assert_num_queries(CUSTOMERS_QUERIES):
        client.get(url("customers", with_stripe), OCTOBER)
    _customer_traffic(with_stripe, 60, 4)
    with django_assert_num_queries(CUSTOMERS_QUERIES):
        response = client.get(url("customers", with_stripe), {**OCTOBER, "page": 2})
    # 60 customers, acme, globex and dave: 13 on the second page
    assert len(_rows(response.content.decode())) == 13


# Session, user, membership, nav (4); usage per customer (1), customers (1), last seen (1),
# Stripe connection (1); revenue: source (1), mapped Stripe customers (1), whole months (1).
CUSTOMERS_QUERIES = 11


# The customer page -------------------------------------------------------------------------


def test_customer_page_shows_its_spend_by_day_and_model(client, october, member):
    client.force_login(member)
    html = client.get(url("customer_detail", october, "acme"), OCTOBER).content.decode()

    assert "$0.0036" in text_of(html, "card-spend") and "1 unpriced" in text_of(html, "card-spend")
    assert "4" in text_of(html, "card-requests")
    models = text_of(html, "by-model")
    assert "test-small 3 3,000 300 $0.0036 100.0%" in models
    assert "mystery-model 1 1,000 100 unknown 1 unpriced" in models  # no known cost, not $0
    chart = chart_data(html, "customer-spend-chart")
    day = dict(zip(chart["labels"], chart["datasets"][0]["data"], strict=True))
    assert (day["2026-10-05"], day["2026-10-06"], day["2026-10-07"]) == (0.0036, 0, 0)
    assert "globex" not in html.split('id="card-spend"')[1]


def test_customer_page_revenue_and_margin_by_month(client, with_stripe, member):
    client.force_login(member)
    html = client.get(url("customer_detail", with_stripe, "globex"), OCTOBER).content.decode()

    assert "unprofitable" in text_of(html, "card-margin")
    assert "-$0.501 " in text_of(html, "card-margin")  # -$0.5012 to three significant digits
    assert "October 2026 $1.00 $0.50 -$0.501 -100.24% 200.24%" in text_of(html, "by-month")
    dave = client.get(url("customer_detail", with_stripe, "dave"), OCTOBER).content.decode()
    assert "4820 JPY net, not converted" in text_of(dave, "card-margin")


def test_another_orgs_or_an_unknown_customer_is_404(client, october, other_org, member):
    use(other_org, utc(2026, 10, 5), customer="secret-customer")
    client.force_login(member)

    assert client.get(url("customer_detail", october, "secret-customer")).status_code == 404
    assert client.get(url("customer_detail", october, "nobody")).status_code == 404


@pytest.mark.parametrize(
    "external_id",
    ["a/b", "..", ".", "100% ?x=1#frag", "ü ñ 中文", "trailing/", "%2F", "=cmd", "a b"],
)
def test_any_external_id_reaches_its_own_page(client, org, member, external_id):
    price(org)
    use(org, utc(2026, 10, 5), customer=external_id)
    use(org, utc(2026, 10, 5), customer="a")  # a prefix of some ids above
    client.force_login(member)

    listing = client.get(url("customers", org), OCTOBER).content.decode()
    link = url("customer_detail", org, external_id)
    # The link keeps the period: followed as it is, the page shows October.
    href = unescape(re.search(rf'href="({re.escape(link)}\?[^"]*)"', listing).group(1))
    assert "/../" not in link and not link.endswith("/./")
    response = client.get(href)
    assert response.status_code == 200
    assert response.context["customer"].external_id == external_id
    assert response.context["period_days"] == (date(2026, 10, 1), date(2026, 10, 31))


def test_customer_page_query_count_does_not_grow(
    client, with_stripe, member, django_assert_num_queries
):
    client.force_login(member)
    with django_assert_num_queries(CUSTOMER_QUERIES):
        client.get(url("customer_detail", with_stripe, "acme"), OCTOBER)
    for k in range(40):
        use(with_stripe, utc(2026, 10, 1 + k % 28), customer="acme", model=f"test-{k % 5}")
    with django_assert_num_queries(CUSTOMER_QUERIES):
        client.get(url("customer_detail", with_stripe, "acme"), OCTOBER)


# Session, user, membership, nav (4); customer (1); by model, by day (2); property names and
# the chosen property's values, from the customer's events (2: the property rollups keep no
# customer); Stripe connection (1); revenue: source, mapped, whole months (3); by month: source,
# mapped, months (3); cost by month (1); the budgets that apply to the customer (1).
CUSTOMER_QUERIES = 18


def test_admins_export_the_customers_of_the_period_as_csv(client, with_stripe, owner, member):
    client.force_login(owner)
    response = client.get(url("customers_export", with_stripe), {**OCTOBER, "sort": "margin"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "customers-20261001-20261101.csv" in response["Content-Disposition"]
    lines = response.content.decode().splitlines()
    assert lines[0] == (
        "external_id,name,requests,input_tokens,output_tokens,cost_usd,unpriced_requests,"
        "usage_unknown_requests,revenue_usd,revenue_other,margin_usd,margin_pct,last_seen"
    )
    # The same rows as the page, in its order (lowest margin first), figures unrounded:
    # globex 1,000,000 + 1,000 tokens in, $0.50 - $1.0012; acme 4 x 1,000 in with one unpriced
    # request, $9.41 - $0.0036; dave pays in yen: not converted, no margin.
    assert lines[1:] == [
        "globex,,2,1001000,100,1.001200000000,0,0,0.50,,-0.501200000000,-100.24,2026-10-08",
        "acme,,4,4000,400,0.003600000000,1,0,9.41,,9.406400000000,99.96,2026-10-07",
        "dave,Dave KK,0,0,0,0.000000000000,0,0,,4820 JPY,,,",
    ]
    # A member sees the page but may not take the export, as with events.
    client.force_login(member)
    assert client.get(url("customers_export", with_stripe), OCTOBER).status_code == 403
