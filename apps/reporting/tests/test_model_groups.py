"""One model, one row (DESIGN.md, "Usage event"): reports group by the price catalogue's model
id, the exact names beneath on the models page; model and customer filters match a prefix.

gpt-4o-mini: $0.15 per million input tokens, $0.60 output, so 1,000 in and 100 out cost
$0.00021 under either of its names. claude-haiku-4-5: $1 in, $5 out: $0.0015.
"""

from datetime import UTC, timedelta
from decimal import Decimal

import pytest

from apps.reporting import selectors
from apps.reporting.tests.dashboard_data import text_of, url, use, utc
from apps.usage.tests.factories import NO_TOKENS

pytestmark = pytest.mark.django_db

MINI = Decimal("0.00021")
HAIKU = Decimal("0.0015")
# Whole days Nov 2 and 3 from rollups, the edges (Nov 1 from 12:00, Nov 4 to 12:00) from events.
START, END = utc(2026, 11, 1, 12), utc(2026, 11, 4, 12)
PERIOD = {"period": "custom", "start": "2026-11-01", "end": "2026-11-04"}


@pytest.fixture
def models(org):
    """The same model under its dated name (answered) and the requested one (a failed call),
    on a whole day and at an edge; a dated Anthropic model; a model the catalogue does not know.
    """
    for when in (utc(2026, 11, 2, 12), utc(2026, 11, 4, 6)):
        use(org, when, model="gpt-4o-mini-2024-07-18", requested_model="gpt-4o-mini")
        use(
            org,
            when,
            model="gpt-4o-mini",
            status=429,
            outcome="upstream_error",
            customer="acme-eu",
            **NO_TOKENS,
        )
    use(
        org,
        utc(2026, 11, 3, 9),
        provider="anthropic",
        model="claude-haiku-4-5-20251001",
        customer="Acme",
    )
    use(org, utc(2026, 11, 1, 18), model="my-llama", customer="xacme")
    return org


def _figures(totals):
    return (totals.requests, totals.errors, totals.cost, totals.unpriced_requests)


def test_reports_group_by_the_catalogues_model_id(models):
    by_model = selectors.usage_by(organization=models, start=START, end=END, group_by="model")

    assert {key: _figures(totals) for key, totals in by_model.items()} == {
        "gpt-4o-mini": (4, 2, 2 * MINI, 0),
        "claude-haiku-4-5": (1, 0, HAIKU, 0),
        "my-llama": (1, 0, Decimal(0), 1),
    }


def test_the_exact_names_are_kept_beneath_their_model(models):
    found = selectors.usage_by_model_name(organization=models, start=START, end=END)

    assert {
        group: {name: _figures(totals) for name, totals in names.items()}
        for group, names in found.items()
    } == {
        "gpt-4o-mini": {
            "gpt-4o-mini-2024-07-18": (2, 0, 2 * MINI, 0),
            "gpt-4o-mini": (2, 2, Decimal(0), 0),
        },
        "claude-haiku-4-5": {"claude-haiku-4-5-20251001": (1, 0, HAIKU, 0)},
        "my-llama": {"my-llama": (1, 0, Decimal(0), 1)},
    }


def test_days_split_by_model_and_a_customers_models_group_the_same_way(models):
    by_day = selectors.usage_by_day(
        organization=models, start=START, end=END, zone=UTC, split_by="model"
    )
    customer = selectors.customer_usage_by(
        organization=models, customer="acme-eu", start=START, end=END, group_by="model"
    )

    assert sorted((day.isoformat(), key, t.requests) for (day, key), t in by_day.items()) == [
        ("2026-11-01", "my-llama", 1),
        ("2026-11-02", "gpt-4o-mini", 2),
        ("2026-11-03", "claude-haiku-4-5", 1),
        ("2026-11-04", "gpt-4o-mini", 2),
    ]
    assert {key: t.requests for key, t in customer.items()} == {"gpt-4o-mini": 2}


def test_the_models_page_shows_one_row_per_model_and_its_names_beneath(client, models, member):
    client.force_login(member)

    html = client.get(url("models", models), PERIOD).content.decode()

    table = text_of(html, "models-table")
    # The model: 4 requests, 2 of them failed (50 %); beneath it, each name as recorded.
    # Columns: provider, requests, input, cache reads, cache writes, output, spend.
    assert "gpt-4o-mini openai 4 2,000 0 0 200 $0.00042" in table
    assert "50.0%" in table
    assert "↳ gpt-4o-mini-2024-07-18 2 2,000 0 0 200 $0.00042" in table
    assert "↳ gpt-4o-mini 2 0 0 0 0 $0.00" in table
    assert "↳ claude-haiku-4-5-20251001" in table
    # A name that is its own model has no line beneath.
    assert "↳ my-llama" not in table


def test_the_spend_report_groups_by_the_catalogues_model_id(api, models):
    body = api.get(
        "/api/v1/reports/spend/",
        {"start": START.isoformat(), "end": END.isoformat(), "group_by": "model"},
    ).json()

    assert [(row["key"], row["requests"], row["cost_usd"]) for row in body["rows"]] == [
        ("claude-haiku-4-5", 1, "0.001500000000"),
        ("gpt-4o-mini", 4, "0.000420000000"),
        ("my-llama", 1, None),
    ]


def test_model_and_customer_filters_match_a_prefix(api, models):
    def found(**filters):
        events = selectors.events_filtered(organization=models, **filters)
        return sorted((event.model, event.customer.external_id) for event in events)

    def listed(**filters):
        body = api.get("/api/v1/events/", filters).json()
        return sorted((event["model"], event["customer"]) for event in body["results"])

    mini = [
        ("gpt-4o-mini", "acme-eu"),
        ("gpt-4o-mini", "acme-eu"),
        ("gpt-4o-mini-2024-07-18", "acme"),
        ("gpt-4o-mini-2024-07-18", "acme"),
    ]
    assert found(model="gpt-4o-mini") == listed(model="gpt-4o-mini") == mini
    assert found(model="gpt-4o-mini-2024") == mini[2:]
    # A prefix, case-sensitive on every database: not "Acme", not "xacme".
    assert found(customer="acme") == listed(customer="acme") == mini
    assert found(customer="acme-") == mini[:2]
    assert found(customer="Acme") == [("claude-haiku-4-5-20251001", "Acme")]
    assert found(model="GPT") == []


def test_the_model_filter_on_the_explorer_finds_every_name_of_a_model(client, models, member):
    client.force_login(member)

    html = client.get(url("events", models), {"model": "gpt-4o-mini"}).content.decode()

    assert html.count("gpt-4o-mini-2024-07-18</td>") == 2
    assert html.count(">gpt-4o-mini</td>") == 2
    assert "my-llama" not in html


def test_an_edge_only_period_groups_its_events_too(models):
    """A period within one day is read from events alone, and folds the same way."""
    start = utc(2026, 11, 4, 0)

    by_model = selectors.usage_by(
        organization=models, start=start, end=start + timedelta(hours=12), group_by="model"
    )

    assert {key: t.requests for key, t in by_model.items()} == {"gpt-4o-mini": 2}


def test_a_model_whose_names_do_not_begin_with_its_id_is_found_by_it(api, client, org, member):
    """claude-sonnet-4-20250514 is the catalogue's claude-sonnet-4-0: the report's key finds
    it, on the explorer and in the API, though it is no prefix of the name."""
    use(org, utc(2026, 11, 2, 12), provider="anthropic", model="claude-sonnet-4-20250514")
    use(org, utc(2026, 11, 2, 13), provider="anthropic", model="claude-sonnet-4-5")
    by_model = selectors.usage_by(organization=org, start=START, end=END, group_by="model")
    assert set(by_model) == {"claude-sonnet-4-0", "claude-sonnet-4-5"}
    client.force_login(member)

    found = selectors.events_filtered(organization=org, model="claude-sonnet-4-0")
    page = client.get(url("events", org), {"model": "claude-sonnet-4-0"}).content.decode()
    body = api.get("/api/v1/events/", {"model": "claude-sonnet-4-0"}).json()

    assert [event.model for event in found] == ["claude-sonnet-4-20250514"]
    assert "claude-sonnet-4-20250514" in page and "claude-sonnet-4-5" not in page
    assert [event["model"] for event in body["results"]] == ["claude-sonnet-4-20250514"]


def test_a_model_filter_costs_one_query_whatever_the_number_of_events(
    client, models, member, django_assert_num_queries
):
    """Session, user, membership, nav (4); the names of the model (1); the page of events (1)."""
    client.force_login(member)
    with django_assert_num_queries(6):
        client.get(url("events", models), {"model": "gpt-4o-mini"})
    for n in range(30):
        use(models, utc(2026, 11, 2, 1, n), model="gpt-4o-mini-2024-07-18")
    with django_assert_num_queries(6):
        response = client.get(url("events", models), {"model": "gpt-4o-mini"})
    assert len(response.context["events"]) == 34
