"""Revenue per Costr customer and the margin on it, against figures worked out by hand from
the account in ``factories.py``."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from apps.billing.currency import to_major
from apps.billing.selectors import (
    Revenue,
    margin,
    revenue_by_customer,
    revenue_by_customer_month,
    revenue_for_customer,
)

pytestmark = pytest.mark.django_db

D = Decimal


def usd(gross, fees, net):
    return Revenue("usd", D(gross), D(fees), D(net), "balance")


def test_minor_units_become_exact_major_units():
    assert to_major(1999, "usd") == D("19.99")
    assert to_major(-2500, "eur") == D("-25.00")
    assert to_major(6712, "jpy") == D("6712")  # zero-decimal: yen are whole
    assert to_major(4820, "JPY") == D("4820")
    assert to_major(1234, "kwd") == D("1.234")  # three decimals


def test_revenue_per_customer_over_whole_months(connected, org, costr_customers):
    revenue = revenue_by_customer(organization=org, start=date(2026, 1, 1), end=date(2026, 3, 1))

    alice, bob, dave = (costr_customers[k].pk for k in ("alice", "cus_Bob0001", "dave"))
    # alice: Jan gross 75.00 fees 19.08 net 55.92; Feb gross 50.00 fees 1.75 net 48.25
    assert revenue[alice] == [usd("125.00", "20.83", "104.17")]
    assert revenue[bob] == [usd("30.00", "16.17", "13.83")]
    assert revenue[dave] == [Revenue("jpy", D("7000"), D("288"), D("6712"), "balance")]
    assert costr_customers["zed"].pk not in revenue  # no Stripe customer maps to zed
    assert len(revenue) == 3  # carol and the guest charge map to nobody


def test_a_range_cutting_months_adds_the_partial_edges_from_transactions(
    connected, org, costr_customers
):
    alice = costr_customers["alice"].pk
    start = datetime(2026, 1, 10, tzinfo=UTC)

    wide = revenue_for_customer(
        organization=org, customer_id=alice, start=start, end=date(2026, 3, 5)
    )
    inside_january = revenue_for_customer(
        organization=org,
        customer_id=alice,
        start=datetime(2026, 1, 6, tzinfo=UTC),
        end=datetime(2026, 1, 21, tzinfo=UTC),
    )

    # from Jan 10: refund -25.00/0, charge 20.00/0.88, dispute -20.00/15.00, Feb charge 50.00/1.75
    assert wide == [usd("25.00", "17.63", "7.37")]
    # Jan 6 to 21: the refund and the Jan 20 charge
    assert inside_january == [usd("-5.00", "0.88", "-5.88")]


def test_revenue_per_month(connected, org, costr_customers):
    months = revenue_by_customer_month(
        organization=org, start=date(2026, 1, 1), end=date(2026, 3, 1)
    )

    assert months[costr_customers["alice"].pk] == {
        date(2026, 1, 1): [usd("75.00", "19.08", "55.92")],
        date(2026, 2, 1): [usd("50.00", "1.75", "48.25")],
    }
    assert months[costr_customers["dave"].pk][date(2026, 2, 1)] == [
        Revenue("jpy", D("2000"), D("108"), D("1892"), "balance")
    ]


def test_margin_on_usd_revenue():
    # net revenue 104.17 USD, AI cost 12.345678901234 USD
    result = margin(D("12.345678901234"), [usd("125.00", "20.83", "104.17")])

    assert result.margin_usd == D("91.824321098766")
    assert result.margin_pct == D("88.15")  # 91.824321098766 / 104.17 = 0.881485…
    assert result.cost_pct == D("11.85")  # 12.345678901234 / 104.17 = 0.118515…
    assert not result.unprofitable
    assert result.unconverted == []


def test_an_unprofitable_customer():
    # net revenue 13.83 USD, AI cost 20 USD
    result = margin(D("20"), [usd("30.00", "16.17", "13.83")])

    assert result.margin_usd == D("-6.17")
    assert result.margin_pct == D("-44.61")  # -6.17 / 13.83 = -0.446131…
    assert result.cost_pct == D("144.61")  # 20 / 13.83 = 1.446131…
    assert result.unprofitable


def test_other_currencies_are_listed_unconverted_and_left_out_of_the_margin():
    yen = Revenue("jpy", D("7000"), D("288"), D("6712"), "balance")
    euro = Revenue("eur", D("30.00"), D("1.20"), D("28.80"), "balance")

    only_yen = margin(D("3.5"), [yen])
    mixed = margin(D("10"), [usd("52.00", "2.00", "50.00"), euro])

    assert only_yen.margin_usd is None and only_yen.margin_pct is None
    assert only_yen.revenue_usd is None and only_yen.unconverted == [yen]
    assert mixed.margin_usd == D("40.00") and mixed.margin_pct == D("80.00")
    assert mixed.cost_pct == D("20.00")
    assert mixed.unconverted == [euro]


def test_no_percentages_without_positive_revenue():
    refunded = margin(D("2"), [usd("0.00", "0.00", "0.00")])
    no_cost_known = margin(None, [usd("10.00", "0.59", "9.41")])

    assert refunded.margin_usd == D("-2.00") and refunded.margin_pct is None
    assert refunded.unprofitable
    assert no_cost_known.margin_usd is None and no_cost_known.revenue_usd == D("9.41")


def test_no_connection_means_no_revenue(org, costr_customers):
    assert revenue_by_customer(organization=org, start=date(2026, 1, 1), end=date(2026, 3, 1)) == {}
