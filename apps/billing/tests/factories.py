"""A Stripe account with known revenue, and the figures it must produce, worked out by hand.

Times are noon UTC on the named day of 2026. Fees are given explicitly so every expected figure
below can be checked with pen and paper.

    customer  Costr customer it maps to        balance transactions (amount / fee, minor units)
    alice     "alice" (metadata)               Jan 5 charge 10000/320, Jan 10 refund -2500/0,
                                               Jan 20 charge 2000/88, Jan 25 dispute -2000/1500,
                                               Feb 3 charge 5000/175
    bob       "cus_Bob0001" (its own Stripe id Jan 7 charge 3000/117, Jan 12 dispute -3000/1500,
              sent as X-Costr-Customer)         Jan 13 dispute won +3000/0
    carol     none: metadata names "carol-co",  Jan 8 charge 1000/59
              which Costr has not seen
    dave      "dave" (metadata), settles in JPY Jan 15 charge ¥5000/180, Feb 2 charge ¥3000/108,
                                               Feb 4 refund ¥-1000/0
    (guest)   a charge without a customer      Jan 9 charge 500/45
    erin, frank, gina: customers without charges; a payout on Jan 31 (nobody's revenue).
"""

from datetime import UTC, date, datetime

from tests.fakes.stripe import FakeAccount

JAN, FEB = 1, 2


def at(month: int, day: int, hour: int = 12) -> int:
    return int(datetime(2026, month, day, hour, tzinfo=UTC).timestamp())


def build_account(account: FakeAccount) -> dict:
    """Fill ``account``; returns its customers by name."""
    customers = {
        "alice": account.customer(
            email="alice@example.com",
            name="Alice Ltd",
            metadata={"costr_customer_id": "alice"},
            created=at(JAN, 1, 1),
        ),
        "bob": account.customer(
            id="cus_Bob0001", email="bob@example.com", name="Bob Inc", created=at(JAN, 1, 2)
        ),
        "carol": account.customer(
            email="carol@example.com",
            metadata={"costr_customer_id": "carol-co"},
            created=at(JAN, 1, 3),
        ),
        "dave": account.customer(
            email="dave@example.jp",
            metadata={"costr_customer_id": "dave"},
            currency="jpy",
            created=at(JAN, 1, 4),
        ),
        "erin": account.customer(email="erin@example.com", created=at(JAN, 1, 5)),
        "frank": account.customer(
            email="frank@example.com",
            metadata={"costr_customer_id": "nobody"},
            created=at(JAN, 1, 6),
        ),
        "gina": account.customer(email="gina@example.com", created=at(JAN, 1, 7)),
    }
    alice, bob, carol, dave = (customers[n] for n in ("alice", "bob", "carol", "dave"))
    ch1 = account.charge(alice, 10000, fee=320, created=at(JAN, 5))
    account.refund(ch1, 2500, created=at(JAN, 10))
    ch2 = account.charge(alice, 2000, fee=88, created=at(JAN, 20))
    account.dispute(ch2, fee=1500, created=at(JAN, 25))
    account.charge(alice, 5000, fee=175, created=at(FEB, 3))
    ch4 = account.charge(bob, 3000, fee=117, created=at(JAN, 7))
    account.dispute(ch4, fee=1500, created=at(JAN, 12), won_later=True)
    account.charge(carol, 1000, fee=59, created=at(JAN, 8))
    account.charge(dave, 5000, "jpy", fee=180, created=at(JAN, 15))
    ch7 = account.charge(dave, 3000, "jpy", fee=108, created=at(FEB, 2))
    account.refund(ch7, 1000, created=at(FEB, 4))
    account.charge(None, 500, fee=45, created=at(JAN, 9))
    account.payout(8000, created=at(JAN, 31))
    return customers


# (stripe customer name or "" for the guest charge, month, currency) →
# (gross, fees, net, refunds, disputes, transactions), minor units.
EXPECTED_MONTHS = {
    ("alice", date(2026, 1, 1), "usd"): (7500, 1908, 5592, -2500, -2000, 4),
    ("alice", date(2026, 2, 1), "usd"): (5000, 175, 4825, 0, 0, 1),
    ("bob", date(2026, 1, 1), "usd"): (3000, 1617, 1383, 0, 0, 3),
    ("carol", date(2026, 1, 1), "usd"): (1000, 59, 941, 0, 0, 1),
    ("dave", date(2026, 1, 1), "jpy"): (5000, 180, 4820, 0, 0, 1),
    ("dave", date(2026, 2, 1), "jpy"): (2000, 108, 1892, -1000, 0, 2),
    ("", date(2026, 1, 1), "usd"): (500, 45, 455, 0, 0, 1),
}
# Balance transactions stored: 14 in Stripe, less the payout.
EXPECTED_TRANSACTIONS = 13
