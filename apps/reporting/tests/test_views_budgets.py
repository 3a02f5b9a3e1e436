"""Budget use on the reporting pages: a customer's page lists the budgets its requests fall
under with this period's use, and the overview shows the budgets nearest their limit (or a
one-line hint when there are none). Spend is stored through the real writer at $1 per million
input tokens (apps/budgets/tests/budget_data.py)."""

import pytest
from django.urls import reverse

from apps.budgets.services import budget_create
from apps.budgets.tests.budget_data import price, seed_counter, spend
from apps.reporting.tests.dashboard_data import text_of

pytestmark = pytest.mark.django_db


def _budget(org, **fields):
    fields.setdefault("period", "month")
    fields.setdefault("limit_usd", "50")
    return budget_create(organization=org, actor=None, **fields)


def test_a_customer_page_lists_the_budgets_that_apply_to_it(client, org, member):
    price(org)
    own = _budget(org, scope="customer", customer="acme", period="day", limit_usd="4")
    _budget(org, scope="each_customer", period="day", limit_usd="1")  # acme has its own
    _budget(org, scope="each_customer", period="month", limit_usd="10")
    _budget(org, scope="organization", limit_usd="100")
    _budget(org, scope="customer", customer="globex", limit_usd="2")
    _budget(org, scope="property", property_name="feature", property_value="chat")
    spend(org, "3", customer="acme")
    spend(org, "5", customer="globex")
    seed_counter(org, own, "3.6", reserved="0.1")
    client.force_login(member)

    page = client.get(reverse("customer_detail", args=[org.slug, "acme"])).content.decode()

    rows = text_of(page, "customer-budgets")
    assert "Its own Day" in rows and "$3.60 $4.00 90.0% Refuse" in rows
    assert "Default for each customer Month" in rows and "$3.00 $10.00 30.0%" in rows
    assert "Whole organization Month" in rows and "$8.00 all customers $100.00 8.0%" in rows
    assert rows.count("Refuse") == 3  # the day default and globex's and the property's are not
    assert "$2.00" not in rows and "$1.00" not in rows


def test_a_customer_without_budgets_says_so(client, org, member):
    price(org)
    spend(org, "1", customer="acme")
    client.force_login(member)

    page = client.get(reverse("customer_detail", args=[org.slug, "acme"])).content.decode()

    assert "No budget applies to this customer." in text_of(page, "customer-budgets")


def test_the_overview_shows_the_budgets_nearest_their_limit(client, org, member):
    price(org)
    _budget(org, scope="organization", limit_usd="1000")
    _budget(org, scope="each_customer", period="day", limit_usd="4")
    _budget(org, scope="customer", customer="initech", period="day", limit_usd="10")
    spend(org, "3", customer="acme")
    spend(org, "1", customer="globex")
    spend(org, "9.5", customer="initech")
    client.force_login(member)

    page = client.get(reverse("org_home", args=[org.slug])).content.decode()

    card = text_of(page, "budgets-nearest")
    assert card.index("initech") < card.index("acme") < card.index("globex")
    # initech has a day budget of its own: the day default does not list it.
    assert "initech Day $9.50 $10.00 95.0%" in card
    assert card.count("initech") == 1
    assert "acme (default cap per customer) Day $3.00 $4.00 75.0%" in card
    assert "$13.50 $1,000.00 1.4%" in card
    assert f'href="{reverse("budgets", args=[org.slug])}"' in page
    assert 'id="budgets-hint"' not in page


def test_the_overview_hints_at_budgets_when_there_are_none(client, org, member):
    price(org)
    spend(org, "1", customer="acme")
    client.force_login(member)

    page = client.get(reverse("org_home", args=[org.slug])).content.decode()

    assert 'id="budgets-nearest"' not in page
    hint = text_of(page, "budgets-hint")
    assert "No budgets yet" in hint
    assert f'<a href="{reverse("budgets", args=[org.slug])}">cap spend' in page
