"""What each budget has used (apps/budgets/selectors.py): live from the store's counter when it
holds one, else from the stored events; an each_customer budget as its customers nearest the
cap; the budgets that apply to one customer; the overview's budgets nearest their limit. Every
cost is worked out by hand (budget_data: $1 per million input tokens)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from apps.budgets import selectors
from apps.budgets.policy import period_of
from apps.budgets.services import budget_create
from apps.budgets.tests.budget_data import price, seed_counter, spend
from apps.keys import services as keys

pytestmark = pytest.mark.django_db


def _budget(org, **fields):
    fields.setdefault("period", "month")
    fields.setdefault("limit_usd", "10")
    return budget_create(organization=org, actor=None, **fields)


def _by_id(found):
    return {use.budget.public_id: use for use in found.uses}


def test_without_a_counter_spend_comes_from_the_stored_events_of_the_period(org):
    price(org)
    org_budget = _budget(org, scope="organization")
    acme = _budget(org, scope="customer", customer="acme", period="day", limit_usd="4")
    feature = _budget(org, scope="property", property_name="feature", property_value="chat")
    spend(org, "1.5")
    spend(org, "0.25", customer="globex", properties={"feature": "chat"})
    spend(org, "2", customer="acme", when=datetime.now(UTC) - timedelta(days=40))

    found = selectors.budget_uses(organization=org)

    uses = _by_id(found)
    assert found.store_available is True
    assert uses[org_budget.public_id].spent == Decimal("1.75")
    assert uses[acme.public_id].spent == Decimal("1.5")
    assert uses[acme.public_id].percent == Decimal("37.5")
    assert uses[feature.public_id].spent == Decimal("0.25")
    assert all(use.reserved == 0 and not use.live for use in found.uses)


def test_a_token_budget_counts_only_that_tokens_requests(org):
    price(org)
    token = keys.proxy_token_create(organization=org, name="cron", scopes=["proxy"], actor=None)
    budget = _budget(org, scope="token", token=token.token.prefix)
    spend(org, "3", token_id=token.token.pk)
    spend(org, "5")

    use = selectors.budget_use(organization=org, budget=budget).uses[0]

    assert use.spent == Decimal("3")
    assert use.target == f"cron ({token.token.prefix}…)"


def test_a_live_counter_is_read_with_its_reservations(org):
    price(org)
    budget = _budget(org, scope="organization", limit_usd="8")
    spend(org, "1")  # the database says $1; the counter, which the proxy keeps, says more
    seed_counter(org, budget, "2.5", reserved="0.75")

    use = selectors.budget_uses(organization=org).uses[0]

    assert (use.spent, use.reserved, use.live) == (Decimal("2.5"), Decimal("0.75"), True)
    assert use.percent == Decimal("31.3")  # 2.5 / 8 = 31.25 %, rounded half up


def test_each_customer_has_no_single_figure_but_its_customers_nearest_the_cap(org):
    price(org)
    budget = _budget(org, scope="each_customer", limit_usd="4")
    # beta has a month budget of its own: the default does not apply to it.
    _budget(org, scope="customer", customer="beta", limit_usd="100")
    for customer, dollars in [("acme", "3"), ("beta", "9"), ("globex", "1"), ("initech", "2")]:
        spend(org, dollars, customer=customer)
    spend(org, "7", customer=None)
    seed_counter(org, budget, "3.5", reserved="0.5", subject="globex")

    use = selectors.budget_use(organization=org, budget=budget).uses[0]

    assert (use.spent, use.reserved) == (None, None)
    assert [(c.customer, c.spent, c.reserved, c.percent) for c in use.top_customers] == [
        ("globex", Decimal("3.5"), Decimal("0.5"), Decimal("87.5")),
        ("acme", Decimal("3"), Decimal("0"), Decimal("75.0")),
        ("initech", Decimal("2"), Decimal("0"), Decimal("50.0")),
    ]


def test_the_top_customers_are_limited_and_the_list_page_asks_for_the_highest_only(org):
    price(org)
    budget = _budget(org, scope="each_customer", limit_usd="100")
    for n in range(1, 24):
        spend(org, str(n), customer=f"c{n:02d}")

    detail = selectors.budget_use(organization=org, budget=budget).uses[0]
    listed = selectors.budget_uses(organization=org, top=1).uses[0]

    assert len(detail.top_customers) == selectors.TOP_CUSTOMERS == 20
    assert detail.top_customers[0].customer == "c23"
    assert detail.top_customers[-1].customer == "c04"
    assert [c.customer for c in listed.top_customers] == ["c23"]


def test_spend_by_customer_adds_rollup_days_and_the_zones_partial_edges():
    from apps.accounts.tests.factories import OrganizationFactory

    org = price(OrganizationFactory(time_zone="Asia/Kolkata"))  # days start 18:30 UTC
    kolkata = ZoneInfo("Asia/Kolkata")
    moments = {
        datetime(2026, 10, 31, 18, 0, tzinfo=UTC): False,  # Oct 31 23:30 local: before
        datetime(2026, 10, 31, 19, 0, tzinfo=UTC): True,  # Nov 1 00:30 local
        datetime(2026, 11, 15, 9, 0, tzinfo=UTC): True,
        datetime(2026, 11, 30, 18, 0, tzinfo=UTC): True,  # Nov 30 23:30 local
        datetime(2026, 11, 30, 19, 0, tzinfo=UTC): False,  # Dec 1 00:30 local: after
    }
    for n, moment in enumerate(moments):
        spend(org, str(2**n), customer="acme", when=moment)
        spend(org, "0.5", customer="bob", when=moment)
    period = period_of("month", kolkata, datetime(2026, 11, 10, tzinfo=UTC))

    totals = selectors.customer_spend_in_period(organization_id=org.pk, period=period)

    assert totals == {"acme": Decimal(2 + 4 + 8), "bob": Decimal("1.5")}


def test_a_customer_falls_under_its_own_budgets_the_defaults_it_has_none_for_and_the_org(org):
    price(org)
    own_day = _budget(org, scope="customer", customer="acme", period="day", limit_usd="2")
    each_day = _budget(org, scope="each_customer", period="day", limit_usd="1")
    each_month = _budget(org, scope="each_customer", period="month", limit_usd="20")
    whole = _budget(org, scope="organization", period="month", limit_usd="100")
    _budget(org, scope="customer", customer="globex", period="month", limit_usd="50")
    _budget(org, scope="property", property_name="feature", property_value="chat")
    spend(org, "1.5", customer="acme")
    spend(org, "4", customer="globex")

    acme = selectors.customer_budget_uses(organization=org, customer="acme")
    globex = selectors.customer_budget_uses(organization=org, customer="globex")

    # acme has its own day budget, so the day default does not apply; the month default does.
    assert [(u.budget.public_id, u.spent) for u in acme.uses] == [
        (own_day.public_id, Decimal("1.5")),
        (each_month.public_id, Decimal("1.5")),
        (whole.public_id, Decimal("5.5")),
    ]
    assert [u.budget.public_id for u in globex.uses][1:] == [each_day.public_id, whole.public_id]
    assert globex.uses[1].spent == Decimal("4")
    assert globex.uses[1].percent == Decimal("400.0")
    assert globex.uses[1].bar == 100


def test_the_requests_without_a_customer_fall_only_under_organization_budgets(org):
    price(org)
    _budget(org, scope="each_customer", limit_usd="1")
    whole = _budget(org, scope="organization")
    spend(org, "2", customer=None)

    uses = selectors.customer_budget_uses(organization=org, customer="").uses

    assert [(u.budget.public_id, u.spent) for u in uses] == [(whole.public_id, Decimal("2"))]


def test_the_budgets_nearest_their_limit_put_customers_of_a_default_cap_in_line(org):
    price(org)
    _budget(org, scope="organization", limit_usd="100")
    _budget(org, scope="customer", customer="acme", limit_usd="10")
    _budget(org, scope="each_customer", limit_usd="4")
    spend(org, "6", customer="acme")
    spend(org, "3", customer="globex")
    spend(org, "1", customer="initech")

    nearest = selectors.budgets_nearest_limit(organization=org, count=3)

    # globex 75 % of the default cap, acme 60 % of its own, initech 25 %; the org 10 % is 4th.
    assert nearest.budgets == 3
    assert [(line.target, line.percent) for line in nearest.lines] == [
        ("globex", Decimal("75.0")),
        ("acme", Decimal("60.0")),
        ("initech", Decimal("25.0")),
    ]


def test_an_organization_without_budgets_has_no_uses_and_asks_no_store(org):
    found = selectors.budget_uses(organization=org)

    assert found.uses == [] and found.store_available is True
    nearest = selectors.budgets_nearest_limit(organization=org)
    assert (nearest.lines, nearest.budgets) == ([], 0)
