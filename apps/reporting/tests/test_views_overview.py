"""The overview: its numbers against hand-computed figures, the period picker, the empty and
getting-started states, the margin card, and a query count that does not grow with the data."""

import pytest

from apps.reporting.tests.dashboard_data import (
    OCTOBER,
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


def _overview(client, org, **params):
    return client.get(url("org_home", org), {**OCTOBER, **params})


def test_cards_show_the_periods_totals_and_their_change(client, october, member):
    client.force_login(member)
    html = _overview(client, october).content.decode()

    # $0.0036 + $1.00 + $0.0012 = $1.0048 priced, shown to the cent from $1 up; the unknown
    # model counted, flagged, not priced.
    spend = text_of(html, "card-spend")
    assert "$1.00 " in spend
    assert "1 unpriced" in spend
    # vs $0.0012 in September: (1.0048 - 0.0012) / 0.0012 = +83,633%
    assert "▲ 83633%" in spend
    requests = text_of(html, "card-requests")
    assert "6" in requests and "▲ 500%" in requests  # 6 vs 1
    tokens = text_of(html, "card-tokens")
    # input: 3 x 1,000 + 1,000,000 + 1,000 + 1,000; output: 3 x 100 + 0 + 100 + 100
    assert "1M in / 500 out" in tokens  # 1,005,000 to three significant digits
    assert "1,005,000 in, incl. 0 cached · 500 out, incl. 0 reasoning" in tokens
    errors = text_of(html, "card-errors")
    assert "16.7%" in errors and "1 error ·" in errors  # 1 of 6
    assert "▲ 16.7 pts" in errors  # September had no error
    latency = text_of(html, "card-latency")
    # Approximate, from the latency histograms (see test_views_selectors).
    assert "≈38 ms p50" in latency and "p99 ≈100 ms" in latency


def test_top_customers_and_models_rank_by_spend(client, october, member):
    client.force_login(member)
    html = _overview(client, october).content.decode()

    customers = text_of(html, "top-customers")
    assert customers.index("globex") < customers.index("acme")
    assert "$1.00 " in customers  # globex: $1.00 + $0.0012
    assert "new" in customers  # globex had nothing in September
    assert "$0.0036" in customers and "▲ 200%" in customers  # acme: 0.0036 vs 0.0012
    models = text_of(html, "top-models")
    assert models.index("test-large") < models.index("test-small") < models.index("mystery-model")
    assert "1 unpriced" in models
    properties = text_of(html, "top-properties")
    assert "chat" in properties and "$0.0012" in properties
    assert "(not set)" in properties  # the five requests without the property


def test_spend_chart_is_per_local_day_stacked_by_provider_or_model(client, october, member):
    client.force_login(member)

    by_provider = chart_data(_overview(client, october).content.decode(), "spend-chart")
    assert len(by_provider["labels"]) == 31
    assert by_provider["labels"][4] == "2026-10-05"
    assert [s["label"] for s in by_provider["datasets"]] == ["openai"]
    day = dict(zip(by_provider["labels"], by_provider["datasets"][0]["data"], strict=True))
    assert (day["2026-10-05"], day["2026-10-06"], day["2026-10-07"]) == (0.0036, 1.0, 0)

    by_model = chart_data(_overview(client, october, split="model").content.decode(), "spend-chart")
    labels = [s["label"] for s in by_model["datasets"]]
    assert labels[:2] == ["test-large", "test-small"]


def test_days_are_counted_in_the_organizations_time_zone(client, october, member):
    october.time_zone = "America/Los_Angeles"
    october.save()
    client.force_login(member)

    chart = chart_data(_overview(client, october).content.decode(), "spend-chart")
    day = dict(zip(chart["labels"], chart["datasets"][0]["data"], strict=True))
    # 09:00 UTC on Oct 5 is 02:00 in Los Angeles; 12:00 UTC on Oct 6 is 05:00 there.
    assert day["2026-10-05"] == 0.0036
    assert day["2026-10-06"] == 1.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"period": "custom", "start": "2026-10-31", "end": "2026-10-01"}, "after the last day"),
        ({"period": "custom", "start": "2026-10-01"}, "Choose both a first and a last day"),
        ({"period": "custom", "start": "2020-01-01", "end": "2026-10-01"}, "at most 731 days"),
        ({"period": "fortnight"}, "Select a valid choice"),
        ({"period": "custom", "start": "2026-13-01", "end": "2026-10-01"}, "Enter a valid date"),
    ],
)
def test_a_bad_period_is_explained_and_the_default_shown(client, october, member, params, message):
    client.force_login(member)
    response = client.get(url("org_home", october), params)

    assert response.status_code == 400
    html = response.content.decode()
    assert message in html
    assert 'id="card-spend"' in html  # the default period is still shown


@pytest.mark.parametrize("period", ["today", "7d", "30d", "this_month", "last_month"])
def test_every_named_period_renders(client, october, member, period):
    client.force_login(member)
    response = client.get(url("org_home", october), {"period": period})
    assert response.status_code == 200


def test_a_period_without_requests_says_so(client, october, member):
    client.force_login(member)
    html = client.get(
        url("org_home", october), {"period": "custom", "start": "2026-06-01", "end": "2026-06-30"}
    ).content.decode()

    assert "No requests in this period." in html
    assert "$0.00" in text_of(html, "card-spend")
    assert "No customers in this period." in html


def test_an_org_without_traffic_gets_started(client, org, member, settings):
    settings.ALLOWED_HOSTS = ["costr.example.com"]
    client.force_login(member)
    html = client.get(
        url("org_home", org), secure=True, HTTP_HOST="costr.example.com"
    ).content.decode()

    assert "Getting started" in html
    for base in ("openai/v1", "anthropic", "google"):
        assert f"https://costr.example.com/p/{org.slug}/{base}" in html
    assert f'href="{url("tokens", org)}"' in html
    assert html.count("X-Costr-Customer") >= 4  # the steps and every snippet
    assert 'id="card-spend"' not in html


def test_margin_card_sets_usd_revenue_against_its_customers_cost(
    client, october, member, owner, fake_stripe, django_capture_on_commit_callbacks
):
    Customer.objects.create(organization=october, external_id="dave")
    connect_stripe(
        october,
        owner,
        fake_stripe,
        django_capture_on_commit_callbacks,
        [
            ("acme", 1000, "usd", 59, utc(2026, 10, 10)),  # net $9.41
            ("globex", 50, "usd", 0, utc(2026, 10, 10)),  # net $0.50 < cost $1.0012
            ("dave", 5000, "jpy", 180, utc(2026, 10, 10)),  # ¥4820 net, not converted
        ],
    )
    client.force_login(member)
    card = text_of(_overview(client, october).content.decode(), "card-margin")

    # revenue 9.41 + 0.50 = 9.91; cost 0.0036 + 1.0012 = 1.0048; margin 8.9052 = 89.86%
    assert "$8.91" in card and "89.86%" in card
    assert "Revenue $9.91" in card and "AI cost $1.00 " in card
    assert "1 unprofitable customer" in card
    assert "4820 JPY" in card


def test_no_margin_card_without_stripe(client, october, member):
    client.force_login(member)
    assert 'id="card-margin"' not in _overview(client, october).content.decode()


def _traffic(org, customers: int, per_customer: int):
    for n in range(customers):
        for k in range(per_customer):
            use(
                org,
                utc(2026, 10, 1 + (n + k) % 28, k % 24),
                customer=f"c{n}",
                model=f"test-{k % 3}",
                provider=("openai", "anthropic")[n % 2],
                properties={"feature": f"f{k % 4}"},
            )
            use(org, utc(2026, 9, 1 + k % 28), customer=f"c{n}")


@pytest.mark.parametrize("split", ["provider", "model"])
def test_query_count_does_not_grow_with_customers_or_events(
    client, org, member, django_assert_num_queries, split
):
    price(org)
    client.force_login(member)
    params = {**OCTOBER, "split": split}
    _traffic(org, customers=2, per_customer=2)
    with django_assert_num_queries(_overview_queries()):
        assert client.get(url("org_home", org), params).status_code == 200
    _traffic(org, customers=30, per_customer=6)
    with django_assert_num_queries(_overview_queries()):
        assert client.get(url("org_home", org), params).status_code == 200


# Session and user (2), membership (1), the nav's organizations (1), has usage (1), latency
# histograms of both periods (1), spend per day (1), customers and models of both periods (2;
# the totals are the models' sum), recent property names (1), values of both periods (2: the
# totals and the property rollups), refusals (1), Stripe connection (1), the organization's
# budgets (1: none here, so nothing more). A custom period of whole UTC days reads rollups
# alone, the same on every database.
def _overview_queries() -> int:
    return 15


@pytest.mark.parametrize(("page", "args"), [("org_home", ()), ("customer_detail", ("acme",))])
def test_the_property_picker_keeps_the_period_and_lists_the_names_sent(
    client, october, member, page, args
):
    client.force_login(member)
    html = client.get(url(page, october, *args), OCTOBER).content.decode()

    form = html[html.index('<form method="get" class="inline-form">') :]
    form = form[: form.index("</form>")]
    for name, value in OCTOBER.items():
        assert f'<input type="hidden" name="{name}" value="{value}">' in form
    assert '<option value="feature" selected>feature</option>' in form
