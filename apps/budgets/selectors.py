"""What each budget has used in its current period: one place read by the Budgets pages, the
budgets API and the reporting pages (a customer's page, the overview).

The live figure is the store's counter (``apps.budgets.store``): it holds the spend the proxy
settled and the reservations of requests still running, across every worker. A counter that does
not exist yet (no request in the period since the store last started) is not a reason to show
nothing: the spend is then read from the database (``apps.budgets.spend``, rollups and events),
with nothing reserved. When the store does not answer, every figure comes from the database and
the caller is told (``BudgetUses.store_available``), so the Budgets page can say that requests
are being forwarded unchecked.

An ``each_customer`` budget has one counter per customer, so it has no single spent figure: its
``spent`` is None, and its customers with the most spend in the period are listed instead, each
against the cap.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from django.db.models import Sum
from django.utils import timezone

from apps.budgets import policy
from apps.budgets.models import Budget, Scope
from apps.budgets.spend import period_spend
from apps.budgets.store import StoreUnavailable, counter_key, get_store, usd
from apps.usage.models import DailyRollup, UsageEvent

# Customers listed under an each_customer budget (API detail, its page).
TOP_CUSTOMERS = 20
# Rows of the overview's Budgets card.
NEAREST = 5
HUNDRED = Decimal(100)
SCOPE_LABELS = {
    Scope.ORGANIZATION: "Organization",
    Scope.CUSTOMER: "Customer",
    Scope.EACH_CUSTOMER: "Each customer",
    Scope.TOKEN: "Token",
    Scope.PROPERTY: "Property",
}


def percent_of(amount: Decimal | None, limit: Decimal) -> Decimal | None:
    """``amount`` as a percentage of ``limit``, to one decimal place."""
    if amount is None or not limit:
        return None
    return (amount * HUNDRED / limit).quantize(Decimal("0.1"), ROUND_HALF_UP)


@dataclass(frozen=True)
class CustomerUse:
    """One customer's use of an each_customer budget's cap."""

    customer: str
    spent: Decimal
    reserved: Decimal
    limit: Decimal

    @property
    def percent(self) -> Decimal | None:
        return percent_of(self.spent, self.limit)

    @property
    def bar(self) -> Decimal | None:
        return None if self.percent is None else min(self.percent, HUNDRED)


@dataclass
class BudgetUse:
    budget: Budget
    period: policy.Period
    # None for an each_customer budget read as a whole (see the module's docstring).
    spent: Decimal | None
    reserved: Decimal | None
    # True when the figures came from the store's counter, False when from the database.
    live: bool = False
    top_customers: list[CustomerUse] = field(default_factory=list)
    # The customer whose counter this is, when an each_customer budget is read for one customer.
    subject: str = ""

    @property
    def percent(self) -> Decimal | None:
        return percent_of(self.spent, self.budget.limit_usd)

    @property
    def first_day(self):
        """The period's first day, in the organization's zone."""
        return self.period.start.date()

    @property
    def last_day(self):
        """The period's last day, in the organization's zone (its end is the next midnight)."""
        return (self.period.end - timedelta(days=1)).date()

    @property
    def bar(self) -> Decimal | None:
        """``percent`` held to 0 to 100, for a meter."""
        return None if self.percent is None else min(self.percent, HUNDRED)

    @property
    def highest(self) -> CustomerUse | None:
        return self.top_customers[0] if self.top_customers else None

    @property
    def target(self) -> str:
        return budget_target(self.budget)

    @property
    def scope_label(self) -> str:
        return SCOPE_LABELS[self.budget.scope]


@dataclass
class BudgetUses:
    uses: list[BudgetUse]
    store_available: bool


def budget_target(budget: Budget) -> str:
    """What a budget covers, in words for a table cell."""
    if budget.scope == Scope.ORGANIZATION:
        return "The whole organization"
    if budget.scope == Scope.CUSTOMER:
        return budget.customer
    if budget.scope == Scope.EACH_CUSTOMER:
        return "Every customer"
    if budget.scope == Scope.TOKEN:
        return f"{budget.token.name} ({budget.token.prefix}…)" if budget.token else "(token)"
    return f"{budget.property_name} = {budget.property_value}"


def _zone(organization) -> ZoneInfo:
    return ZoneInfo(organization.time_zone)


def _read(keys: list[str]) -> tuple[list[tuple[int, int] | None], bool]:
    """The store's counters for ``keys`` in one round trip, and whether the store answered."""
    if not keys:
        return [], True
    try:
        return get_store().read(keys), True
    except StoreUnavailable:
        return [None] * len(keys), False


def _key(organization, budget: Budget, period: policy.Period, subject: str) -> str:
    return counter_key(organization.pk, budget.public_id, budget.period, period.key, subject)


def budget_uses(
    *, organization, budgets=None, now: datetime | None = None, top: int = 0
) -> BudgetUses:
    """Every budget of ``organization`` (or the ``budgets`` given) with its use in the current
    period; for each_customer budgets, the ``top`` customers with the most spend (none when 0).

    The store is asked once for every counter; the database only for counters it does not hold.
    """
    now = now or timezone.now()
    zone = _zone(organization)
    if budgets is None:
        budgets = Budget.objects.for_org(organization).select_related("token")
    budgets = list(budgets)
    periods = [policy.period_of(b.period, zone, now) for b in budgets]
    # each_customer: its customers with the most spend per the database, to read from the store.
    candidates: dict[int, list[tuple[str, Decimal]]] = {}
    for index, budget in enumerate(budgets):
        if budget.scope == Scope.EACH_CUSTOMER and top:
            candidates[index] = _top_customers(organization, budget, periods[index], top)
    keys, owners = [], []
    for index, budget in enumerate(budgets):
        if budget.scope == Scope.EACH_CUSTOMER:
            for customer, _ in candidates.get(index, []):
                keys.append(_key(organization, budget, periods[index], customer))
                owners.append((index, customer))
        else:
            keys.append(_key(organization, budget, periods[index], ""))
            owners.append((index, None))
    counters, available = _read(keys)
    found = dict(zip(owners, counters, strict=True))

    uses = []
    for index, budget in enumerate(budgets):
        period = periods[index]
        if budget.scope == Scope.EACH_CUSTOMER:
            customers = []
            for customer, spent_in_db in candidates.get(index, []):
                counter = found.get((index, customer))
                spent, reserved = (
                    (usd(counter[0]), usd(counter[1])) if counter else (spent_in_db, Decimal(0))
                )
                customers.append(CustomerUse(customer, spent, reserved, budget.limit_usd))
            customers.sort(key=lambda c: (-c.spent, c.customer))
            uses.append(BudgetUse(budget, period, None, None, top_customers=customers))
            continue
        counter = found.get((index, None))
        if counter is not None:
            uses.append(BudgetUse(budget, period, usd(counter[0]), usd(counter[1]), live=True))
        else:
            spent = period_spend(organization.pk, policy.rule_of(budget), "", period)
            uses.append(BudgetUse(budget, period, spent, Decimal(0)))
    return BudgetUses(uses, available)


def budget_use(*, organization, budget: Budget, now: datetime | None = None) -> BudgetUses:
    """One budget's use; an each_customer budget with its ``TOP_CUSTOMERS``."""
    return budget_uses(organization=organization, budgets=[budget], now=now, top=TOP_CUSTOMERS)


def customer_budget_uses(*, organization, customer: str, now: datetime | None = None) -> BudgetUses:
    """The budgets a request of ``customer`` falls under for its customer alone or the whole
    organization (as the proxy decides, ``policy.Policy.matches``): its own customer budgets,
    each_customer defaults for the periods it has no budget of its own for, and organization
    budgets; each with this customer's use (its own counter for an each_customer budget).
    Token and property budgets are left out: they do not follow the customer."""
    now = now or timezone.now()
    zone = _zone(organization)
    budgets = list(Budget.objects.for_org(organization).filter(scope__in=_CUSTOMER_SCOPES))
    own_periods = {
        b.period for b in budgets if b.scope == Scope.CUSTOMER and b.customer == customer
    }
    applying = [
        b
        for b in budgets
        if b.scope == Scope.ORGANIZATION
        or (b.scope == Scope.CUSTOMER and b.customer == customer)
        or (b.scope == Scope.EACH_CUSTOMER and customer and b.period not in own_periods)
    ]
    # The customer's own budgets first, then the defaults, then the organization's.
    applying.sort(key=lambda b: (_CUSTOMER_SCOPES.index(b.scope), b.period))
    periods = [policy.period_of(b.period, zone, now) for b in applying]
    subjects = [customer if b.scope == Scope.EACH_CUSTOMER else "" for b in applying]
    keys = [
        _key(organization, b, p, s) for b, p, s in zip(applying, periods, subjects, strict=True)
    ]
    counters, available = _read(keys)
    uses = []
    for budget, period, subject, counter in zip(applying, periods, subjects, counters, strict=True):
        if counter is not None:
            spent, reserved, live = usd(counter[0]), usd(counter[1]), True
        else:
            rule = policy.rule_of(budget)
            spent, reserved, live = period_spend(organization.pk, rule, subject, period), 0, False
        uses.append(BudgetUse(budget, period, spent, Decimal(reserved), live, subject=subject))
    return BudgetUses(uses, available)


_CUSTOMER_SCOPES = [Scope.CUSTOMER, Scope.EACH_CUSTOMER, Scope.ORGANIZATION]


@dataclass(frozen=True)
class NearLimit:
    """A line of the overview's Budgets card: a budget, or one customer under an each_customer
    budget, with its share of the limit."""

    budget: Budget
    target: str
    spent: Decimal
    percent: Decimal
    period: policy.Period

    @property
    def bar(self) -> Decimal:
        return min(self.percent, HUNDRED)


@dataclass
class Nearest:
    lines: list[NearLimit]
    budgets: int  # how many budgets the organization has


def budgets_nearest_limit(
    *, organization, now: datetime | None = None, count: int = NEAREST
) -> Nearest:
    """The ``count`` budgets nearest their limit (for an each_customer budget, its customers
    nearest the cap), highest share first."""
    uses = budget_uses(organization=organization, now=now, top=count).uses
    lines = []
    for use in uses:
        if use.budget.scope == Scope.EACH_CUSTOMER:
            lines.extend(
                NearLimit(use.budget, c.customer, c.spent, c.percent, use.period)
                for c in use.top_customers
            )
        else:
            lines.append(NearLimit(use.budget, use.target, use.spent, use.percent, use.period))
    lines.sort(key=lambda line: (-line.percent, line.target))
    return Nearest(lines[:count], len(uses))


def _top_customers(organization, budget: Budget, period: policy.Period, count: int):
    """The ``count`` customers with the most spend in ``period`` per the database, leaving out
    those with a customer budget of their own for the budget's period (the default yields to
    it), as (external id, spend), most first."""
    exempt = set(
        Budget.objects.for_org(organization)
        .filter(scope=Scope.CUSTOMER, period=budget.period)
        .values_list("customer", flat=True)
    )
    spend = customer_spend_in_period(organization_id=organization.pk, period=period)
    ranked = sorted(
        ((c, s) for c, s in spend.items() if c and c not in exempt and s > 0),
        key=lambda item: (-item[1], item[0]),
    )
    return ranked[:count]


def customer_spend_in_period(*, organization_id: int, period: policy.Period) -> dict[str, Decimal]:
    """Every customer's spend in ``period``, by external id: ``spend.period_spend`` for all
    customers at once (whole UTC days from the daily rollups, the partial days at the edges from
    the events), in three grouped queries at most instead of three per customer."""
    start, end = period.start.astimezone(UTC), period.end.astimezone(UTC)
    events = UsageEvent.objects.for_org(organization_id).filter(
        cost_usd__isnull=False, customer__isnull=False
    )
    totals: dict[str, Decimal] = defaultdict(Decimal)

    def add_events(since, until):
        grouped = (
            events.filter(timestamp__gte=since, timestamp__lt=until)
            .values("customer__external_id")
            .annotate(total=Sum("cost_usd"))
        )
        for row in grouped:
            totals[row["customer__external_id"]] += row["total"] or 0

    first_day = (start + timedelta(days=1)).date() if start.time() != time.min else start.date()
    end_day = end.date()
    if first_day >= end_day:
        add_events(start, end)
        return dict(totals)
    rollups = (
        DailyRollup.objects.for_org(organization_id)
        .filter(day__gte=first_day, day__lt=end_day)
        .values("customer")
        .annotate(total=Sum("cost_usd"))
    )
    for row in rollups:
        totals[row["customer"]] += row["total"] or 0
    add_events(start, datetime.combine(first_day, time.min, UTC))
    add_events(datetime.combine(end_day, time.min, UTC), end)
    return dict(totals)
