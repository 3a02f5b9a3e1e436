"""A budget's spend from the database (apps/budgets/spend.py): the organization's calendar day
or month, whatever its zone, each scope counting only its own requests. Costs are worked by
hand: gpt-4o-mini, 1,000 input and 100 output tokens, is $0.00021."""

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from apps.accounts.tests.factories import OrganizationFactory
from apps.budgets.policy import Rule, period_of
from apps.budgets.spend import period_spend
from apps.usage.tests.factories import store_usage

pytestmark = pytest.mark.django_db
ONE = Decimal("0.00021")
KOLKATA = ZoneInfo("Asia/Kolkata")  # UTC+05:30: a day starts at 18:30 UTC the day before


def _rule(scope: str, period: str, **target) -> Rule:
    return Rule(
        id="bud_test",
        scope=scope,
        customer=target.get("customer", ""),
        token_id=target.get("token_id"),
        property_name=target.get("property_name", ""),
        property_value=target.get("property_value", ""),
        period=period,
        limit=Decimal(1),
        enforce=True,
        fail_closed=False,
    )


def _at(*parts) -> str:
    return datetime(*parts, tzinfo=UTC).isoformat()


def test_a_day_in_the_organizations_zone_counts_its_own_hours_only():
    org = OrganizationFactory(time_zone="Asia/Kolkata")
    for moment in [
        (2026, 11, 1, 18, 0),
        (2026, 11, 1, 19, 0),
        (2026, 11, 2, 12, 0),
        (2026, 11, 2, 19, 0),
    ]:
        store_usage(org, timestamp=_at(*moment))
    period = period_of("day", KOLKATA, datetime(2026, 11, 2, 6, 0, tzinfo=UTC))
    assert period.start == datetime(2026, 11, 2, tzinfo=KOLKATA)
    assert period_spend(org.pk, _rule("organization", "day"), "", period) == 2 * ONE


def test_a_month_adds_whole_days_from_rollups_and_its_partial_edges_from_events():
    org = OrganizationFactory(time_zone="Asia/Kolkata")
    inside = [
        (2026, 10, 31, 19, 0),
        (2026, 11, 1, 0, 0),
        (2026, 11, 15, 9, 0),
        (2026, 11, 30, 18, 0),
    ]
    outside = [(2026, 10, 31, 18, 0), (2026, 11, 30, 18, 30), (2026, 12, 3, 1, 0)]
    for moment in inside + outside:
        store_usage(org, timestamp=_at(*moment))
    period = period_of("month", KOLKATA, datetime(2026, 11, 20, tzinfo=UTC))
    assert (period.start, period.end) == (
        datetime(2026, 11, 1, tzinfo=KOLKATA),
        datetime(2026, 12, 1, tzinfo=KOLKATA),
    )
    assert period_spend(org.pk, _rule("organization", "month"), "", period) == 4 * ONE


def test_each_scope_counts_its_own_requests_and_nothing_of_another_organization():
    from apps.keys import services

    org, other = OrganizationFactory(), OrganizationFactory()
    token = services.proxy_token_create(
        organization=org, name="t", scopes=["proxy"], expires_at=None, actor=None
    ).token
    moment = _at(2026, 11, 2, 12, 0)
    store_usage(
        org, timestamp=moment, customer="acme", token_id=token.pk, properties={"feature": "chat"}
    )
    store_usage(org, timestamp=moment, customer="acme", properties={"feature": "search"})
    store_usage(org, timestamp=moment, customer="globex", properties={"feature": "chat"})
    store_usage(org, timestamp=moment, customer=None)
    store_usage(other, timestamp=moment, customer="acme", properties={"feature": "chat"})
    period = period_of("month", ZoneInfo("UTC"), datetime(2026, 11, 20, tzinfo=UTC))

    def spend(rule, subject=""):
        return period_spend(org.pk, rule, subject, period)

    assert spend(_rule("organization", "month")) == 4 * ONE
    assert spend(_rule("customer", "month", customer="acme")) == 2 * ONE
    assert spend(_rule("each_customer", "month"), "globex") == ONE
    assert spend(_rule("token", "month", token_id=token.pk)) == ONE
    assert (
        spend(_rule("property", "month", property_name="feature", property_value="chat")) == 2 * ONE
    )
    # Unpriced requests have no cost to count.
    store_usage(org, timestamp=moment, customer="acme", model="no-such-model")
    assert spend(_rule("customer", "month", customer="acme")) == 2 * ONE


def test_periods_follow_the_calendar_across_a_daylight_saving_change():
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-10-25 has 25 hours in Berlin.
    day = period_of("day", berlin, datetime(2026, 10, 25, 12, 0, tzinfo=UTC))
    assert (day.end.astimezone(UTC) - day.start.astimezone(UTC)).total_seconds() == 25 * 3600
    december = period_of("month", berlin, datetime(2026, 12, 31, 23, 30, tzinfo=UTC))
    assert december.start == datetime(2027, 1, 1, tzinfo=berlin)  # already January there
    assert december.end == datetime(2027, 2, 1, tzinfo=berlin)
    assert day.seconds_left(datetime(2026, 10, 25, 22, 59, 59, 500000, tzinfo=UTC)) == 1
