"""The demo organization's Stripe revenue: a made-up Stripe account as Costr's sync would have
mirrored it, priced from each customer's AI cost so that margins look like a real business's."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction

from apps.accounts.models import Organization
from apps.billing.models import (
    RevenueSource,
    StripeBalanceTransaction,
    StripeCharge,
    StripeConnection,
    StripeCustomer,
    SyncStatus,
)
from apps.billing.services import stripe_mappings_resolve
from apps.billing.sync import revenue_rebuild
from apps.demo.profiles import DEFAULT_SEED, demo_random
from apps.keys.keyring import seal
from apps.reporting.selectors import usage_by

PLAN_TIERS = (29, 49, 99, 249, 499, 999, 1999, 4999, 9999, 19999)  # monthly, major units
EUR_RANK = 5  # this customer pays in euros: its margin is not computed (no USD revenue)
UNPROFITABLE_RANKS = (1, 6)  # these pay less than their AI costs
WITHOUT_STRIPE = 4  # the smallest customers are on a free trial: no Stripe customer


def _fee(amount: int, currency: str) -> int:
    """Stripe's card fee in minor units: 2.9% + 30¢ (USD), 1.5% + 25c (EUR)."""
    rate, fixed = (Decimal("0.029"), 30) if currency == "usd" else (Decimal("0.015"), 25)
    return int((amount * rate).quantize(Decimal(1), ROUND_HALF_UP)) + fixed


def _months_back(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


@transaction.atomic
def demo_revenue_create(
    *, organization: Organization, end: datetime, days: int, seed: int = DEFAULT_SEED
) -> dict:
    """A Stripe account as Costr's sync would have mirrored it: a read-only connection, one
    Stripe customer per paying Costr customer (mapped by the ``costr_customer_id`` metadata),
    and a monthly subscription charge for the last three months, priced from each customer's
    AI cost over the window so margins look like a real business's: most customers pay several
    times their cost, two pay less (unprofitable), one pays in EUR (no margin: no USD revenue),
    the smallest have no Stripe customer. One charge is partly refunded.

    Returns counts of what was created. Nothing here talks to Stripe."""
    rng = demo_random(f"{seed}:revenue")
    end = end.astimezone(UTC)
    start = end - timedelta(days=days)
    costs = {
        key: totals.cost
        for key, totals in usage_by(
            organization=organization, start=start, end=end, group_by="customer"
        ).items()
        if key
    }
    ranked = sorted(costs, key=lambda key: (-costs[key], key))
    paying = ranked[: max(len(ranked) - WITHOUT_STRIPE, 0)]
    monthly_cost_scale = Decimal(30) / Decimal(days)

    connection = StripeConnection(
        organization=organization,
        livemode=False,
        last4="demo",
        account_id="acct_demo",
        account_name="Demo account (no Stripe calls)",
        is_demo=True,
        permissions=dict.fromkeys(
            ("customers", "charges", "disputes", "balance_transactions", "invoices"), True
        ),
        revenue_source=RevenueSource.BALANCE,
        sync_status=SyncStatus.OK,
        last_success_at=end,
    )
    seal(connection, "rk_test_" + secrets.token_hex(16))  # a placeholder: never used
    connection.save()

    stripe_customers, charges, transactions = [], [], []
    first_month = _months_back(end.date(), 3)
    for rank, external_id in enumerate(paying):
        currency = "eur" if rank == EUR_RANK else "usd"
        monthly_cost = costs[external_id] * monthly_cost_scale
        if rank in UNPROFITABLE_RANKS:
            # A discounted early deal that no longer covers what the customer uses.
            plan = max(1, int(monthly_cost * Decimal(rng.uniform(0.45, 0.8))))
        else:
            wanted = monthly_cost * Decimal(rng.uniform(2.5, 6))
            plan = min([t for t in PLAN_TIERS if t >= wanted] or [PLAN_TIERS[-1]])
        stripe_id = f"cus_demo{rank:05d}"
        billing_day = rng.randint(1, 28)
        stripe_customers.append(
            StripeCustomer(
                organization=organization,
                stripe_id=stripe_id,
                email=f"billing@{external_id}.example.com",
                name=external_id.replace("-", " ").title(),
                metadata={"costr_customer_id": external_id},
                currency=currency,
                created=datetime.combine(_months_back(first_month, 1), time(9), tzinfo=UTC),
            )
        )
        for month_offset in range(4):
            month = _months_back(end.date(), 3 - month_offset)
            created = datetime(month.year, month.month, billing_day, 10, tzinfo=UTC) + timedelta(
                minutes=rng.randrange(600)
            )
            if created >= end:
                continue
            amount = plan * 100
            charge_id = f"ch_demo{rank:05d}{month:%Y%m}"
            fee = _fee(amount, currency)
            charges.append(
                StripeCharge(
                    organization=organization,
                    stripe_id=charge_id,
                    stripe_customer_id=stripe_id,
                    amount=amount,
                    currency=currency,
                    created=created,
                )
            )
            transactions.append(
                StripeBalanceTransaction(
                    organization=organization,
                    stripe_id=f"txn_demo{rank:05d}{month:%Y%m}",
                    type="charge",
                    reporting_category="charge",
                    amount=amount,
                    fee=fee,
                    net=amount - fee,
                    currency=currency,
                    created=created,
                    source_id=charge_id,
                    charge_id=charge_id,
                    stripe_customer_id=stripe_id,
                )
            )
    # One unhappy customer got a fifth of its last charge back.
    refunded = next((t for t in reversed(transactions) if t.currency == "usd"), None)
    if refunded is not None:
        refund = refunded.amount // 5
        transactions.append(
            StripeBalanceTransaction(
                organization=organization,
                stripe_id=f"txn_demo_refund_{refunded.charge_id}",
                type="refund",
                reporting_category="refund",
                amount=-refund,
                fee=0,
                net=-refund,
                currency="usd",
                created=min(refunded.created + timedelta(days=2), end - timedelta(minutes=1)),
                source_id=f"re_demo_{refunded.charge_id}",
                charge_id=refunded.charge_id,
                stripe_customer_id=refunded.stripe_customer_id,
            )
        )
    StripeCustomer.objects.for_org(organization).bulk_create(stripe_customers)
    StripeCharge.objects.for_org(organization).bulk_create(charges)
    StripeBalanceTransaction.objects.for_org(organization).bulk_create(transactions)
    stripe_mappings_resolve(organization=organization)
    revenue_rebuild(organization=organization)
    return {
        "stripe_customers": len(stripe_customers),
        "charges": len(charges),
        "balance_transactions": len(transactions),
    }
