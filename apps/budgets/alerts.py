"""Which alerts are due: budget thresholds crossed, and spend anomalies (DESIGN.md "Budgets,
limits and alerts").

**Thresholds.** A budget's spend in its current period is the larger of what the database holds
(``spend.period_spend``: rollups for whole UTC days, events for the rest) and the ``spent`` of its
counter in the budget store, which is ahead of the database by the requests whose events are
still on their way to it and holds the reservation estimate of unpriced requests. Each of the
budget's ``alert_thresholds`` (percents of the limit) that the spend has reached fires once per
budget, period and, for an ``each_customer`` budget, customer. A threshold under 100 fires
``budget.threshold_crossed``; one of 100 or more fires ``budget.exceeded`` (spend reached or
passed the limit; with the default thresholds [80, 100] that is the moment an enforced budget
starts refusing). Only the thresholds the budget lists fire: a budget whose thresholds stop at
80 never sends ``budget.exceeded``.

**Anomalies.** A customer whose spend today (the organization's calendar day, so far) is over
``COSTR_ANOMALY_FACTOR`` times its mean daily spend over the 7 days before today (days without
spend count as 0, so a customer with no history has a mean of 0), and over
``COSTR_ANOMALY_FLOOR_USD``, fires ``spend.anomaly`` once that day.

**Once.** An alert's ``dedupe_key`` names what it is about (threshold, budget, period kind and
start, customer; or customer and day); the unique constraint on it makes every scan after the
first, and any scan running at the same moment in another process, find it taken. A period that
begins afresh has a new key and fires again.

Firing writes the alert and one ``Delivery`` per channel in one transaction, and queues each
delivery once it commits (``delivery``).
"""

import hashlib
import logging
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from apps.accounts.models import Organization
from apps.budgets import delivery
from apps.budgets.models import Alert, Budget, EventType
from apps.budgets.policy import DAY, Period, period_of, rule_of
from apps.budgets.spend import period_spend
from apps.budgets.store import StoreUnavailable, counter_key, get_store, usd
from apps.usage.models import DailyRollup, UsageEvent

logger = logging.getLogger("costr.budgets.alerts")

CENT = Decimal("0.000001")
TRAILING_DAYS = 7
EXCEEDED_AT = 100
# Longer customer ids are named by a hash in the dedupe key, which has room for 400 characters.
SUBJECT_IN_KEY = 200


def money(amount: Decimal) -> str:
    """USD as the API writes it: a decimal string, to the micro-dollar."""
    return str(Decimal(amount).quantize(CENT))


def _subject_key(subject: str) -> str:
    if len(subject) <= SUBJECT_IN_KEY:
        return subject
    return "sha256:" + hashlib.sha256(subject.encode()).hexdigest()


def threshold_type(percent: int) -> str:
    return EventType.EXCEEDED if percent >= EXCEEDED_AT else EventType.THRESHOLD


def threshold_key(budget: Budget, period: Period, subject: str, percent: int) -> str:
    start = period.key
    return f"threshold:{budget.public_id}:{budget.period}:{start}:{percent}:{_subject_key(subject)}"


def anomaly_key(customer: str, day: date) -> str:
    return f"anomaly:{day.isoformat()}:{_subject_key(customer)}"


# --- Spend per customer -------------------------------------------------------------------------


def customer_spends(
    organization_id: int, start: datetime, end: datetime, customers=None
) -> dict[str, Decimal]:
    """USD spent per customer (external id) in [start, end): whole UTC days from the daily
    rollups, the partial days at either end from the events (as ``spend.period_spend``).
    ``customers``, when given, narrows the question to those."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    events = UsageEvent.objects.for_org(organization_id).filter(
        cost_usd__isnull=False, customer__isnull=False
    )
    rollups = DailyRollup.objects.for_org(organization_id).exclude(customer="")
    if customers is not None:
        events = events.filter(customer__external_id__in=list(customers))
        rollups = rollups.filter(customer__in=list(customers))
    totals: dict[str, Decimal] = {}

    def add_events(since, until):
        rows = (
            events.filter(timestamp__gte=since, timestamp__lt=until)
            .order_by()
            .values_list("customer__external_id")
            .annotate(total=Sum("cost_usd"))
        )
        for customer, total in rows:
            totals[customer] = totals.get(customer, Decimal(0)) + (total or 0)

    first_day = (start + timedelta(days=1)).date() if start.time() != time.min else start.date()
    end_day = end.date()
    if first_day >= end_day:
        add_events(start, end)
        return totals
    rows = (
        rollups.filter(day__gte=first_day, day__lt=end_day)
        .order_by()
        .values_list("customer")
        .annotate(total=Sum("cost_usd"))
    )
    for customer, total in rows:
        totals[customer] = totals.get(customer, Decimal(0)) + (total or 0)
    add_events(start, datetime.combine(first_day, time.min, UTC))
    add_events(datetime.combine(end_day, time.min, UTC), end)
    return totals


# --- Firing ------------------------------------------------------------------------------------


def alert_fire(
    *, organization: Organization, type: str, dedupe_key: str, data: dict, budget=None
) -> Alert | None:
    """The alert, written with its deliveries and queued, or None when it had fired already
    (here or in a scan running at the same time)."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    organization=organization,
                    type=type,
                    budget=budget,
                    dedupe_key=dedupe_key,
                    data=data,
                )
        except IntegrityError:
            return None
        delivery.deliveries_create(alert)
    logger.info("alert %s fired: %s for organization %s", alert.public_id, type, organization.pk)
    return alert


def _already_fired(organization: Organization, keys: list[str]) -> set[str]:
    if not keys:
        return set()
    return set(
        Alert.objects.for_org(organization)
        .filter(dedupe_key__in=keys)
        .values_list("dedupe_key", flat=True)
    )


# --- Thresholds --------------------------------------------------------------------------------


def _budget_data(budget: Budget) -> dict:
    return {
        "id": budget.public_id,
        "scope": budget.scope,
        "customer": budget.customer or None,
        "token": budget.token.prefix if budget.token_id else None,
        "property_name": budget.property_name or None,
        "property_value": budget.property_value or None,
        "period": budget.period,
        "limit_usd": money(budget.limit_usd),
        "enforce": budget.enforce,
    }


def _store_spent(organization_id: int, budget: Budget, period: Period, subjects) -> dict:
    """The counters' ``spent`` per subject, as far as the store answers (nothing when it is
    unavailable: the database's figure then stands alone)."""
    subjects = list(subjects)
    keys = [
        counter_key(organization_id, budget.public_id, budget.period, period.key, subject)
        for subject in subjects
    ]
    if not keys:
        return {}
    try:
        found = get_store().read(keys)
    except StoreUnavailable:
        return {}
    return {
        subject: usd(counter[0])
        for subject, counter in zip(subjects, found, strict=True)
        if counter is not None
    }


def budget_spends(organization: Organization, budget: Budget, period: Period, own_customers):
    """{subject: USD spent} for a budget's current period ("" for every scope but
    each_customer, whose subjects are the customers with spend and no budget of their own)."""
    rule = rule_of(budget)
    if budget.scope == "each_customer":
        spends = customer_spends(organization.pk, period.start, period.end)
        spends = {
            customer: spent
            for customer, spent in spends.items()
            if (customer, budget.period) not in own_customers
        }
    else:
        spends = {"": period_spend(organization.pk, rule, "", period)}
    for subject, spent in _store_spent(organization.pk, budget, period, spends).items():
        spends[subject] = max(spends.get(subject, Decimal(0)), spent)
    return spends


def organization_thresholds_check(organization: Organization, now: datetime) -> int:
    """Fire every threshold of the organization's budgets that its current period has reached
    and that has not fired yet; the number fired."""
    zone = zoneinfo.ZoneInfo(organization.time_zone)
    budgets = list(Budget.objects.for_org(organization).select_related("token"))
    own_customers = {(b.customer, b.period) for b in budgets if b.scope == "customer"}
    due = []
    for budget in budgets:
        period = period_of(budget.period, zone, now)
        spends = budget_spends(organization, budget, period, own_customers)
        for subject, spent in spends.items():
            for percent in sorted(budget.alert_thresholds):
                if spent * 100 >= budget.limit_usd * percent:
                    due.append((budget, period, subject, percent, spent))
    keys = [threshold_key(b, p, s, pc) for b, p, s, pc, _ in due]
    fired_before = _already_fired(organization, keys)
    fired = 0
    for (budget, period, subject, percent, spent), key in zip(due, keys, strict=True):
        if key in fired_before:
            continue
        data = {
            "budget": _budget_data(budget),
            "customer": subject or budget.customer or None,
            "threshold_percent": percent,
            "spent_usd": money(spent),
            "limit_usd": money(budget.limit_usd),
            "spent_percent": money(spent * 100 / budget.limit_usd) if budget.limit_usd else None,
            "period_start": period.start.isoformat(),
            "period_end": period.end.isoformat(),
        }
        alert = alert_fire(
            organization=organization,
            type=threshold_type(percent),
            dedupe_key=key,
            data=data,
            budget=budget,
        )
        fired += alert is not None
    return fired


def organizations_with_budgets():
    """The live organizations that have a budget (the scans' and the reconciling's)."""
    return _live_organizations(
        Budget.objects.unscoped(reason="looking at every org's budgets")
        .order_by()
        .values_list("organization_id", flat=True)
        .distinct()
    )


def _live_organizations(organization_ids):
    return Organization.objects.filter(
        pk__in=list(organization_ids), deletion_requested_at__isnull=True
    ).order_by("pk")


def _check_each(organizations, check, now: datetime, what: str) -> int:
    """``check(organization, now)`` for each, summing the alerts fired. One organization's
    trouble (a zone gone from the system's database, a bad row) must not keep the others'
    alerts from firing: it is logged and the scan goes on."""
    fired = 0
    for organization in organizations:
        try:
            fired += check(organization, now)
        except Exception:
            logger.exception("%s check failed for organization %s", what, organization.pk)
    return fired


def thresholds_scan(now: datetime | None = None) -> int:
    """Every organization with budgets, checked; the number of alerts fired."""
    return _check_each(
        organizations_with_budgets(),
        organization_thresholds_check,
        now or timezone.now(),
        "threshold",
    )


# --- Anomalies ---------------------------------------------------------------------------------


def anomaly_rule() -> tuple[Decimal, Decimal]:
    """(factor, floor in USD), read when the scan runs."""
    return (
        Decimal(str(settings.COSTR_ANOMALY_FACTOR)),
        Decimal(str(settings.COSTR_ANOMALY_FLOOR_USD)),
    )


def organization_anomalies_check(organization: Organization, now: datetime) -> int:
    zone = zoneinfo.ZoneInfo(organization.time_zone)
    factor, floor = anomaly_rule()
    today = period_of(DAY, zone, now)
    spent_today = customer_spends(organization.pk, today.start, today.end)
    over_floor = {c: s for c, s in spent_today.items() if s > floor}
    if not over_floor:
        return 0
    day = today.start.date()
    trailing_start = datetime.combine(day - timedelta(days=TRAILING_DAYS), time.min, zone)
    trailing = customer_spends(organization.pk, trailing_start, today.start, over_floor)
    due = []
    for customer, spent in sorted(over_floor.items()):
        mean = trailing.get(customer, Decimal(0)) / TRAILING_DAYS
        if spent > factor * mean:
            due.append((customer, spent, mean))
    keys = [anomaly_key(customer, day) for customer, _, _ in due]
    fired_before = _already_fired(organization, keys)
    fired = 0
    for (customer, spent, mean), key in zip(due, keys, strict=True):
        if key in fired_before:
            continue
        data = {
            "customer": customer,
            "day": day.isoformat(),
            "spent_today_usd": money(spent),
            "trailing_daily_mean_usd": money(mean),
            "trailing_days": TRAILING_DAYS,
            "factor": str(factor),
            "floor_usd": money(floor),
        }
        alert = alert_fire(
            organization=organization, type=EventType.ANOMALY, dedupe_key=key, data=data
        )
        fired += alert is not None
    return fired


def anomalies_scan(now: datetime | None = None) -> int:
    """Every organization with spend in the last two UTC days (the only ones whose customers
    can have spend today in any zone), checked; the number of alerts fired."""
    now = now or timezone.now()
    since = (now.astimezone(UTC) - timedelta(days=2)).date()
    organization_ids = (
        DailyRollup.objects.unscoped(reason="the anomaly scan looks for every org's spend")
        .filter(day__gte=since)
        .order_by()
        .values_list("organization_id", flat=True)
        .distinct()
    )
    return _check_each(
        _live_organizations(organization_ids), organization_anomalies_check, now, "anomaly"
    )
