"""The demo organization's budgets, as a customer of Costr would set them, sized from the demo's
own spend so the Budgets page, the overview and the customer pages show them in use: a monthly
cap for the organization with room left, a daily default per customer, its biggest customer's
own monthly budget past its first alert threshold, and an alert-only budget on the priciest
feature, already over. Written through the budgets app's services, as a person would."""

from datetime import datetime
from decimal import ROUND_UP, Decimal
from zoneinfo import ZoneInfo

from django.db.models import Sum

from apps.accounts.models import Organization
from apps.budgets.policy import Rule, period_of
from apps.budgets.services import budget_create
from apps.budgets.spend import period_spend
from apps.usage.models import DailyRollup

CENT = Decimal("0.01")
# The feature the alert-only budget watches: reasoning models make it the priciest per request.
WATCHED_FEATURE = "code-review"


def _spend(organization: Organization, scope: str, period: str, end: datetime, **target):
    rule = Rule(
        id="",
        scope=scope,
        customer=target.get("customer", ""),
        token_id=None,
        property_name=target.get("property_name", ""),
        property_value=target.get("property_value", ""),
        period=period,
        limit=Decimal(0),
        enforce=False,
        fail_closed=False,
    )
    return period_spend(
        organization.pk, rule, "", period_of(period, ZoneInfo(organization.time_zone), end)
    )


def _limit(amount: Decimal, factor: str) -> str:
    """``amount`` times ``factor``, in whole cents, at least $1."""
    return str(max((amount * Decimal(factor)).quantize(CENT, rounding=ROUND_UP), Decimal(1)))


def demo_budgets_create(*, organization: Organization, end: datetime) -> int:
    """Four budgets over the demo's traffic; returns how many were made."""
    top = (
        DailyRollup.objects.for_org(organization)
        .exclude(customer="")
        .values("customer")
        .annotate(cost=Sum("cost_usd"))
        .order_by("-cost", "customer")
        .first()
    )
    made = [
        budget_create(
            organization=organization,
            actor=None,
            scope="organization",
            period="month",
            limit_usd=_limit(_spend(organization, "organization", "month", end), "1.6"),
        ),
        budget_create(
            organization=organization,
            actor=None,
            scope="each_customer",
            period="day",
            limit_usd="25",
            alert_thresholds=[50, 80, 100],
        ),
        budget_create(
            organization=organization,
            actor=None,
            scope="property",
            property_name="feature",
            property_value=WATCHED_FEATURE,
            period="month",
            enforce=False,
            limit_usd=_limit(
                _spend(
                    organization,
                    "property",
                    "month",
                    end,
                    property_name="feature",
                    property_value=WATCHED_FEATURE,
                ),
                "0.9",
            ),
        ),
    ]
    if top is not None:
        spent = _spend(organization, "customer", "month", end, customer=top["customer"])
        made.append(
            budget_create(
                organization=organization,
                actor=None,
                scope="customer",
                customer=top["customer"],
                period="month",
                limit_usd=_limit(spent, "1.15"),
            )
        )
    return len(made)
