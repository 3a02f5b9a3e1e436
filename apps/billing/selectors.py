"""Reads over Stripe revenue, for the settings page and for reporting (margin per customer).

Revenue is per Costr customer: the sum over the Stripe customers mapped to it, kept per
settlement currency and never converted. A range [start, end) is answered from the monthly rows
for the whole calendar months inside it and from the stored transactions (or paid invoices) for
the partial months at its edges, so any range is exact and a long one stays cheap.

Margin is computed only where it is honest: against net USD revenue, since costs are in USD.
Revenue in other currencies is listed as it is, unconverted: an exchange rate Costr picked would
make a margin look precise when it is not.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Sum

from apps.accounts.models import Organization
from apps.billing.currency import to_major
from apps.billing.models import (
    RevenueMonth,
    RevenueSource,
    StripeBalanceTransaction,
    StripeConnection,
    StripeCustomer,
    StripeInvoice,
)

USD = "usd"
PERCENT = Decimal("0.01")


@dataclass(frozen=True)
class Revenue:
    """Revenue in one currency, in major units (dollars, yen), exact."""

    currency: str
    gross: Decimal
    fees: Decimal
    net: Decimal
    source: str


@dataclass(frozen=True)
class Margin:
    """``margin_usd`` = net USD revenue minus AI cost; None without USD revenue or without a cost.
    ``margin_pct`` is the margin as a share of that revenue and ``cost_pct`` the cost as a share
    of it, both in percent to two places; None when the revenue is not positive.
    ``unconverted`` is the revenue in other currencies, left out of the margin."""

    cost_usd: Decimal | None
    revenue_usd: Decimal | None
    margin_usd: Decimal | None
    margin_pct: Decimal | None
    cost_pct: Decimal | None
    unconverted: list[Revenue] = field(default_factory=list)

    @property
    def unprofitable(self) -> bool:
        return self.margin_usd is not None and self.margin_usd < 0


def margin(cost_usd: Decimal | None, revenue: list[Revenue]) -> Margin:
    usd = [r for r in revenue if r.currency.lower() == USD]
    others = [r for r in revenue if r.currency.lower() != USD]
    revenue_usd = sum((r.net for r in usd), Decimal(0)) if usd else None
    if revenue_usd is None or cost_usd is None:
        return Margin(cost_usd, revenue_usd, None, None, None, others)
    margin_usd = revenue_usd - cost_usd
    margin_pct = cost_pct = None
    if revenue_usd > 0:
        margin_pct = (margin_usd * 100 / revenue_usd).quantize(PERCENT, ROUND_HALF_UP)
        cost_pct = (cost_usd * 100 / revenue_usd).quantize(PERCENT, ROUND_HALF_UP)
    return Margin(cost_usd, revenue_usd, margin_usd, margin_pct, cost_pct, others)


def revenue_source(*, organization: Organization) -> str:
    """Which stored data is the organization's revenue: balance transactions, or paid invoices
    when the key may not read balance transactions; "" when Stripe is not connected."""
    connection = StripeConnection.objects.for_org(organization).only("revenue_source").first()
    return connection.revenue_source if connection else ""


def _month_start(value: datetime) -> datetime:
    return datetime(value.year, value.month, 1, tzinfo=UTC)


def _next_month(value: datetime) -> datetime:
    return datetime(value.year + value.month // 12, value.month % 12 + 1, 1, tzinfo=UTC)


def _as_utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _split(start: datetime, end: datetime):
    """([start, end) as (whole months [m0, m1)), partial ranges at the edges)."""
    m0 = start if start == _month_start(start) else _next_month(start)
    m1 = _month_start(end)
    if m0 >= m1:
        return None, [(start, end)]
    edges = [(a, b) for a, b in ((start, m0), (m1, end)) if a < b]
    return (m0.date(), m1.date()), edges


def _minor_sums(organization, source, start, end, stripe_ids) -> dict[tuple[str, str], dict]:
    """(stripe customer id, currency) → {"gross", "fees", "net"} in minor units; ``stripe_ids``
    None means every Stripe customer."""
    totals: dict[tuple[str, str], dict] = defaultdict(lambda: {"gross": 0, "fees": 0, "net": 0})

    def narrowed(queryset):
        return (
            queryset if stripe_ids is None else queryset.filter(stripe_customer_id__in=stripe_ids)
        )

    def add(rows, gross, fees, net):
        for row in rows:
            total = totals[(row["stripe_customer_id"], row["currency"])]
            total["gross"] += row[gross] or 0
            total["fees"] += (row[fees] or 0) if fees else 0
            total["net"] += row[net] or 0

    months, edges = _split(start, end)
    if months is not None:
        rows = narrowed(
            RevenueMonth.objects.for_org(organization)
            .filter(source=source, month__gte=months[0], month__lt=months[1])
            .values("stripe_customer_id", "currency")
            .annotate(g=Sum("gross"), f=Sum("fees"), n=Sum("net"))
        )
        add(rows, "g", "f", "n")
    for a, b in edges:
        if source == RevenueSource.BALANCE:
            rows = narrowed(
                StripeBalanceTransaction.objects.for_org(organization)
                .filter(created__gte=a, created__lt=b)
                .values("stripe_customer_id", "currency")
                .annotate(g=Sum("amount"), f=Sum("fee"), n=Sum("net"))
            )
            add(rows, "g", "f", "n")
        else:
            rows = narrowed(
                StripeInvoice.objects.for_org(organization)
                .filter(status="paid", paid_at__gte=a, paid_at__lt=b)
                .values("stripe_customer_id", "currency")
                .annotate(g=Sum("amount_paid"), n=Sum("amount_paid"))
            )
            add(rows, "g", None, "n")
    return totals


def _as_revenue(per_currency: dict[str, dict], source: str) -> list[Revenue]:
    return [
        Revenue(
            currency=currency,
            gross=to_major(sums["gross"], currency),
            fees=to_major(sums["fees"], currency),
            net=to_major(sums["net"], currency),
            source=source,
        )
        for currency, sums in sorted(per_currency.items())
    ]


def _mapped_stripe_ids(organization, customer_ids=None) -> dict[str, int]:
    rows = StripeCustomer.objects.for_org(organization).filter(customer__isnull=False)
    if customer_ids is not None:
        rows = rows.filter(customer_id__in=list(customer_ids))
    return dict(rows.values_list("stripe_id", "customer_id"))


def revenue_by_customer(
    *,
    organization: Organization,
    start: datetime | date,
    end: datetime | date,
    customer_ids=None,
) -> dict[int, list[Revenue]]:
    """Costr customer pk → its revenue over [start, end), one entry per currency. Customers
    without mapped Stripe revenue are absent. ``customer_ids`` narrows to those customers."""
    source = revenue_source(organization=organization)
    if not source:
        return {}
    owner = _mapped_stripe_ids(organization, customer_ids)
    if not owner:
        return {}
    stripe_ids = None if customer_ids is None else list(owner)
    totals = _minor_sums(organization, source, _as_utc(start), _as_utc(end), stripe_ids)
    per_customer: dict[int, dict[str, dict]] = defaultdict(
        lambda: defaultdict(lambda: {"gross": 0, "fees": 0, "net": 0})
    )
    for (stripe_id, currency), sums in totals.items():
        if stripe_id not in owner:
            continue  # revenue of a Stripe customer that maps to no Costr customer
        target = per_customer[owner[stripe_id]][currency]
        for name in ("gross", "fees", "net"):
            target[name] += sums[name]
    return {pk: _as_revenue(currencies, source) for pk, currencies in per_customer.items()}


def revenue_for_customer(
    *, organization: Organization, customer_id: int, start: datetime | date, end: datetime | date
) -> list[Revenue]:
    found = revenue_by_customer(
        organization=organization, start=start, end=end, customer_ids=[customer_id]
    )
    return found.get(customer_id, [])


def revenue_by_customer_month(
    *, organization: Organization, start: datetime | date, end: datetime | date, customer_ids=None
) -> dict[int, dict[date, list[Revenue]]]:
    """Costr customer pk → calendar month (its first day) → revenue per currency, for the
    months that [start, end) touches, each month whole."""
    source = revenue_source(organization=organization)
    if not source:
        return {}
    owner = _mapped_stripe_ids(organization, customer_ids)
    if not owner:
        return {}
    first = _month_start(_as_utc(start)).date()
    rows = (
        RevenueMonth.objects.for_org(organization)
        .filter(source=source, month__gte=first, month__lt=_as_utc(end).date())
        .values("stripe_customer_id", "month", "currency")
        .annotate(g=Sum("gross"), f=Sum("fees"), n=Sum("net"))
    )
    grouped: dict[int, dict[date, dict[str, dict]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: {"gross": 0, "fees": 0, "net": 0}))
    )
    if customer_ids is not None:
        rows = rows.filter(stripe_customer_id__in=list(owner))
    for row in rows:
        if row["stripe_customer_id"] not in owner:
            continue
        target = grouped[owner[row["stripe_customer_id"]]][row["month"]][row["currency"]]
        target["gross"] += row["g"] or 0
        target["fees"] += row["f"] or 0
        target["net"] += row["n"] or 0
    return {
        pk: {month: _as_revenue(currencies, source) for month, currencies in sorted(months.items())}
        for pk, months in grouped.items()
    }


def stripe_connection_for(*, organization: Organization) -> StripeConnection | None:
    return StripeConnection.objects.for_org(organization).select_related("created_by").first()


def stripe_customers_for_mapping(*, organization: Organization, unmapped_only: bool):
    rows = StripeCustomer.objects.for_org(organization).select_related("customer")
    if unmapped_only:
        rows = rows.filter(customer__isnull=True)
    return rows.order_by("deleted", "-created", "stripe_id")


def stripe_mirror_counts(*, organization: Organization) -> dict[str, int]:
    customers = StripeCustomer.objects.for_org(organization)
    return {
        "customers": customers.count(),
        "mapped": customers.filter(customer__isnull=False).count(),
        "transactions": StripeBalanceTransaction.objects.for_org(organization).count(),
        "invoices": StripeInvoice.objects.for_org(organization).count(),
    }


def costr_customers_for_mapping(*, organization: Organization, limit: int = 1000) -> list:
    """Costr customers to offer in the mapping search, most recently seen first."""
    from apps.usage.models import Customer

    return list(
        Customer.objects.for_org(organization)
        .order_by("-created_at")
        .only("external_id", "name")[:limit]
    )


def costr_customer_by_external_id(*, organization: Organization, external_id: str):
    from apps.usage.models import Customer

    return Customer.objects.for_org(organization).filter(external_id=external_id).first()
