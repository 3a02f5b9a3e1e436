"""Stripe amounts are integers in a currency's smallest unit; people read major units.

Stripe's own rules (its "Supported currencies" page): most currencies have two decimals; the
zero-decimal ones are sent as whole units (¥500 is ``500``); five currencies have three decimals.
ISK, HUF and TWD are sent with two decimals by Stripe for compatibility, so they are not special
here.
"""

from decimal import Decimal

ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
    | {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def exponent(currency: str) -> int:
    code = currency.lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_major(amount_minor: int, currency: str) -> Decimal:
    """Exact: 1999 usd → Decimal('19.99'); 500 jpy → Decimal('500'); 1234 kwd → Decimal('1.234')."""
    return Decimal(int(amount_minor)).scaleb(-exponent(currency))
