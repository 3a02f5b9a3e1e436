"""A budget as the proxy holds it, and which budgets one request falls under.

``load_policy`` runs where tokens are loaded (``keys.keycache``): an organization without budgets
gets None, so its requests do no budget work. A ``Policy`` is immutable and shared by every
request of the organization until the token cache entry is dropped (a budget or price override
changed, or its TTL ran out).
"""

import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from apps.usage.pricing import Overrides

DAY, MONTH = "day", "month"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str  # the budget's public id
    scope: str
    customer: str
    token_id: int | None
    property_name: str
    property_value: str
    period: str
    limit: Decimal
    enforce: bool
    fail_closed: bool


@dataclass(frozen=True, slots=True)
class Match:
    """A rule a request falls under, and whose counter it is: ``subject`` is the customer for an
    ``each_customer`` rule (every customer has its own counter), "" otherwise."""

    rule: Rule
    subject: str


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # aware, in the organization's zone
    end: datetime

    @property
    def key(self) -> str:
        return self.start.date().isoformat()

    def seconds_left(self, now: datetime) -> int:
        return max(1, int((self.end - now).total_seconds() + 0.999))


def period_of(kind: str, zone: zoneinfo.ZoneInfo, now: datetime) -> Period:
    """The calendar day or month holding ``now``, in ``zone``."""
    local = now.astimezone(zone)
    if kind == DAY:
        first = local.date()
        following = first + timedelta(days=1)
    else:
        first = date(local.year, local.month, 1)
        following = date(local.year + local.month // 12, local.month % 12 + 1, 1)
    return Period(
        datetime.combine(first, datetime.min.time(), zone),
        datetime.combine(following, datetime.min.time(), zone),
    )


@dataclass(frozen=True, slots=True)
class Policy:
    organization_id: int
    zone: zoneinfo.ZoneInfo
    rules: tuple[Rule, ...]
    overrides: Overrides
    # (customer, period) pairs that have a budget of their own: each_customer yields to them.
    own_customer_budgets: frozenset[tuple[str, str]]

    def matches(self, token_id: int, customer: str | None, properties: dict) -> list[Match]:
        found = []
        for rule in self.rules:
            if rule.scope == "each_customer":
                if customer and (customer, rule.period) not in self.own_customer_budgets:
                    found.append(Match(rule, customer))
            elif _applies(rule, token_id, customer, properties):
                found.append(Match(rule, ""))
        return found


def _applies(rule: Rule, token_id: int, customer: str | None, properties: dict) -> bool:
    if rule.scope == "organization":
        return True
    if rule.scope == "customer":
        return customer is not None and customer == rule.customer
    if rule.scope == "token":
        return rule.token_id == token_id
    if rule.scope == "property":
        return properties.get(rule.property_name) == rule.property_value
    return False


def rule_of(budget) -> Rule:
    return Rule(
        id=budget.public_id,
        scope=budget.scope,
        customer=budget.customer,
        token_id=budget.token_id,
        property_name=budget.property_name,
        property_value=budget.property_value,
        period=budget.period,
        limit=budget.limit_usd,
        enforce=budget.enforce,
        fail_closed=budget.fail_closed,
    )


def load_policy(organization) -> Policy | None:
    """The organization's budgets for the proxy, or None when it has none (one query then)."""
    from apps.budgets.models import Budget
    from apps.usage.metering.events import overrides_for

    budgets = list(Budget.objects.for_org(organization))
    if not budgets:
        return None
    rules = tuple(rule_of(budget) for budget in budgets)
    return Policy(
        organization_id=organization.pk,
        zone=zoneinfo.ZoneInfo(organization.time_zone),
        rules=rules,
        overrides=overrides_for([organization.pk]).get(organization.pk, Overrides()),
        own_customer_budgets=frozenset(
            (rule.customer, rule.period) for rule in rules if rule.scope == "customer"
        ),
    )
