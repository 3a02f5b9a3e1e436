"""A budget's spend in a period, from what the database holds: the seed of a store counter that
does not exist (a new period, a restart, a Redis flush) and the figure the budgets page and the
alerts read.

Whole UTC days inside the period come from the daily rollups (customer, property and
organization scopes); the rest, the period's partial days at either end when the organization's
zone is not UTC, and every day of a token budget (rollups do not keep the token), from the
events. Unpriced requests have no cost in the database, so they count here at zero (the proxy's
counter holds their reservation estimate instead).
"""

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Q, Sum
from django.db.models.fields.json import KeyTextTransform

from apps.budgets.policy import Match, Period, Rule
from apps.usage.models import DailyRollup, OrganizationDailyRollup, PropertyDailyRollup, UsageEvent


def period_spend(organization_id: int, rule: Rule, subject: str, period: Period) -> Decimal:
    """USD spent under ``rule`` (for ``subject``, the customer of an each_customer rule) from the
    period's start to now."""
    start = period.start.astimezone(UTC)
    end = period.end.astimezone(UTC)
    events = UsageEvent.objects.for_org(organization_id).filter(cost_usd__isnull=False)
    if rule.scope == "property":
        events = events.alias(
            property_value=KeyTextTransform(rule.property_name, "properties")
        ).filter(property_value=rule.property_value)
    else:
        events = events.filter(_event_filter(rule, subject))
    rollups = _rollups(organization_id, rule, subject)
    if rollups is None:
        return _sum(events.filter(timestamp__gte=start, timestamp__lt=end))
    first_day = (start + timedelta(days=1)).date() if start.time() != time.min else start.date()
    end_day = end.date()  # whole days run up to the UTC midnight at or before the end
    if first_day >= end_day:
        return _sum(events.filter(timestamp__gte=start, timestamp__lt=end))
    whole_from = datetime.combine(first_day, time.min, UTC)
    whole_to = datetime.combine(end_day, time.min, UTC)
    total = _sum(rollups.filter(day__gte=first_day, day__lt=end_day))
    total += _sum(events.filter(timestamp__gte=start, timestamp__lt=whole_from))
    total += _sum(events.filter(timestamp__gte=whole_to, timestamp__lt=end))
    return total


def match_spend(organization_id: int, match: Match, period: Period) -> Decimal:
    return period_spend(organization_id, match.rule, match.subject, period)


def _event_filter(rule: Rule, subject: str) -> Q:
    if rule.scope == "customer":
        return Q(customer__external_id=rule.customer)
    if rule.scope == "each_customer":
        return Q(customer__external_id=subject)
    if rule.scope == "token":
        return Q(token_id=rule.token_id)
    return Q()


def _rollups(organization_id: int, rule: Rule, subject: str):
    if rule.scope == "organization":
        return OrganizationDailyRollup.objects.for_org(organization_id)
    if rule.scope in ("customer", "each_customer"):
        customer = rule.customer if rule.scope == "customer" else subject
        return DailyRollup.objects.for_org(organization_id).filter(customer=customer)
    if rule.scope == "property":
        return PropertyDailyRollup.objects.for_org(organization_id).filter(
            name=rule.property_name, value=rule.property_value
        )
    return None  # token: only events know the token


def _sum(queryset) -> Decimal:
    return queryset.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)
