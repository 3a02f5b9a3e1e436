"""The budgets API's shapes (DESIGN.md "Budgets, limits and alerts").

Answers are built from ``selectors.BudgetUse``; requests are described here for the OpenAPI
document only and checked by ``services`` (one set of rules, with their messages, for the API and
the pages). Money leaves as decimal strings, never as JSON numbers.
"""

from decimal import Decimal

from rest_framework import serializers

from apps.budgets.models import Period, Scope
from apps.budgets.selectors import BudgetUse
from apps.budgets.services import MAX_THRESHOLDS


def plain(amount: Decimal | None) -> str | None:
    """A decimal string without trailing zeros or exponent: 250, 19.99, 0.00021."""
    if amount is None:
        return None
    text = format(amount.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _money(**kwargs):
    return serializers.DecimalField(
        max_digits=30, decimal_places=None, coerce_to_string=True, **kwargs
    )


class TopCustomerSerializer(serializers.Serializer):
    customer = serializers.CharField(help_text="The customer's external id.")
    spent_usd = _money(help_text="Its spend in the current period.")
    reserved_usd = _money(help_text="Held for its requests still running.")
    percent = serializers.DecimalField(
        max_digits=12,
        decimal_places=1,
        coerce_to_string=True,
        help_text="Its spend as a percentage of the budget's limit.",
    )


class BudgetSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The budget's id, `bud_…`.")
    scope = serializers.ChoiceField(choices=Scope.choices)
    customer = serializers.CharField(
        allow_null=True, help_text="The customer's external id (scope `customer`), else null."
    )
    token = serializers.CharField(
        allow_null=True, help_text="The proxy token's prefix (scope `token`), else null."
    )
    property_name = serializers.CharField(allow_null=True, help_text="Scope `property`, else null.")
    property_value = serializers.CharField(
        allow_null=True, help_text="Scope `property`, else null."
    )
    period = serializers.ChoiceField(
        choices=Period.choices,
        help_text="A calendar day or month in the organization's time zone.",
    )
    limit_usd = _money(help_text="The cap, in dollars.")
    enforce = serializers.BooleanField(
        help_text="True: requests are refused (429 `budget_exceeded`) once the limit is reached. "
        "False: alerts only."
    )
    fail_closed = serializers.BooleanField(
        help_text="True: while the budget store cannot be reached, requests under this budget "
        "are refused instead of forwarded and counted later."
    )
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(), help_text="Percentages of the limit that fire an alert."
    )
    spent_usd = _money(
        allow_null=True,
        help_text="Spent in the current period. Null for `each_customer`, where every customer "
        "has a counter of its own: see `top_customers` on the budget's own endpoint.",
    )
    reserved_usd = _money(
        allow_null=True,
        help_text="Held for requests still running (null for `each_customer`).",
    )
    period_start = serializers.DateTimeField(
        help_text="The current period's first instant, with the organization's UTC offset."
    )
    period_end = serializers.DateTimeField(
        help_text="The current period's end (excluded), with the organization's UTC offset."
    )


class BudgetDetailSerializer(BudgetSerializer):
    top_customers = TopCustomerSerializer(
        many=True,
        help_text="For `each_customer`: the customers with the most spend in the current "
        "period (up to 20), each against the cap; empty for other scopes.",
    )


def budget_body(use: BudgetUse, *, detail: bool = False) -> dict:
    budget = use.budget
    body = {
        "id": budget.public_id,
        "scope": budget.scope,
        "customer": budget.customer if budget.scope == Scope.CUSTOMER else None,
        "token": budget.token.prefix if budget.token_id else None,
        "property_name": budget.property_name if budget.scope == Scope.PROPERTY else None,
        "property_value": budget.property_value if budget.scope == Scope.PROPERTY else None,
        "period": budget.period,
        "limit_usd": plain(budget.limit_usd),
        "enforce": budget.enforce,
        "fail_closed": budget.fail_closed,
        "alert_thresholds": budget.alert_thresholds,
        "spent_usd": plain(use.spent),
        "reserved_usd": plain(use.reserved),
        # In the organization's zone, so the calendar day or month reads as it is.
        "period_start": use.period.start.isoformat(),
        "period_end": use.period.end.isoformat(),
    }
    if detail:
        body["top_customers"] = [
            {
                "customer": c.customer,
                "spent_usd": plain(c.spent),
                "reserved_usd": plain(c.reserved),
                "percent": c.percent,
            }
            for c in use.top_customers
        ]
    return body


# --- Requests (for the schema; ``services`` checks them) ---------------------------------------


class BudgetCreateSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=Scope.choices)
    customer = serializers.CharField(
        required=False, help_text="Scope `customer`: the external id, as X-Costr-Customer sends it."
    )
    token = serializers.CharField(
        required=False, help_text="Scope `token`: the prefix of one of the organization's tokens."
    )
    property_name = serializers.CharField(
        required=False, help_text="Scope `property`: the name, as in X-Costr-Property-<name>."
    )
    property_value = serializers.CharField(required=False, help_text="Scope `property`.")
    period = serializers.ChoiceField(choices=Period.choices)
    limit_usd = serializers.DecimalField(
        max_digits=16,
        decimal_places=6,
        coerce_to_string=True,
        help_text="More than 0, at most 1,000,000,000, at most 6 decimal places.",
    )
    enforce = serializers.BooleanField(required=False, default=True)
    fail_closed = serializers.BooleanField(required=False, default=False)
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000),
        max_length=MAX_THRESHOLDS,
        required=False,
        help_text="Whole percentages from 1 to 1000 (default [80, 100]).",
    )


class BudgetUpdateSerializer(serializers.Serializer):
    """What a budget may change; its scope and what it names may not."""

    period = serializers.ChoiceField(choices=Period.choices, required=False)
    limit_usd = serializers.DecimalField(
        max_digits=16, decimal_places=6, coerce_to_string=True, required=False
    )
    enforce = serializers.BooleanField(required=False)
    fail_closed = serializers.BooleanField(required=False)
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000),
        max_length=MAX_THRESHOLDS,
        required=False,
    )
