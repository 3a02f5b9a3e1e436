"""The budgets app's Celery tasks: finding alerts, delivering them, and reconciling the budget
store's counters with the database. Their schedules are in ``costr/schedule.py``.

What runs when: with a broker and beat, the threshold scan, the deliveries sweep and the counters'
reconciling run every minute, the anomaly scan every 15 minutes; a delivery is sent by its own
task as soon as its alert commits, and a failed one is queued again for its next attempt (and
found by the sweep if that message is lost). In the embedded mode (no broker, tasks run eagerly,
no beat) nothing periodic runs: no scan fires alerts and no failed delivery is retried, while the
proxy's own counters are still seeded from the database whenever they are missing.
"""

import logging
import zoneinfo
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from apps.accounts.models import Organization
from apps.budgets import alerts, delivery
from apps.budgets.guard import KEEP_AFTER_PERIOD_SECONDS
from apps.budgets.models import Alert, Budget, DeliveryState
from apps.budgets.policy import period_of, rule_of
from apps.budgets.spend import period_spend
from apps.budgets.store import StoreUnavailable, counter_key, get_store, nano
from apps.usage.lifecycle import retention_cutoff
from costr.db import TASK_RETRY_ON_CONNECTION_ERRORS
from costr.tasks import PUBLISH_RETRY_POLICY

logger = logging.getLogger("costr.budgets.tasks")

# A due delivery is left this long to its own queued message before the sweep sends it.
SWEEP_GRACE = timedelta(seconds=20)


@shared_task(
    name="budgets.thresholds_scan",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=300,
    soft_time_limit=270,
)
def thresholds_scan() -> int:
    """Every minute: fire each budget threshold reached in its current period, once."""
    return alerts.thresholds_scan()


@shared_task(
    name="budgets.anomalies_scan",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=600,
    soft_time_limit=570,
)
def anomalies_scan() -> int:
    """Every 15 minutes: fire ``spend.anomaly`` for each customer spending far above its norm
    today, once a day."""
    return alerts.anomalies_scan()


@shared_task(
    name=delivery.SEND_TASK,
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=300,
    soft_time_limit=270,
)
def delivery_send(organization_id: int, delivery_id: int) -> str:
    """One attempt at one delivery (nothing when it is not due: another copy has it). After a
    failed attempt the next is queued for when it falls due; the sweep finds it if not."""
    row = delivery.delivery_attempt(organization_id, delivery_id)
    if row is None:
        return "not due"
    if row.state == DeliveryState.PENDING and row.next_attempt_at is not None:
        _queue_retry(organization_id, delivery_id, row.next_attempt_at)
    return row.state


def _queue_retry(organization_id: int, delivery_id: int, when) -> None:
    if delivery_send.app.conf.task_always_eager:
        return  # eager (embedded): a countdown would run at once, before the attempt is due
    try:
        delivery_send.apply_async(
            (organization_id, delivery_id), eta=when, retry_policy=PUBLISH_RETRY_POLICY
        )
    except Exception as error:
        logger.warning(
            "could not queue the next attempt of delivery %s (%s); %s",
            delivery_id,
            type(error).__name__,
            delivery.SWEEP_FALLBACK,
        )


@shared_task(
    name="budgets.deliveries_sweep",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=120,
    soft_time_limit=110,
)
def deliveries_sweep() -> int:
    """Every minute: send each delivery whose attempt is overdue (its message was never sent,
    was lost, or its worker died mid-attempt)."""
    return deliveries_resend(timezone.now())


def deliveries_resend(now) -> int:
    """Attempt every delivery overdue at ``now``, each through its task (queued with a broker,
    run here when eager); the number queued."""
    due = delivery.deliveries_due(now, SWEEP_GRACE)
    for organization_id, delivery_id in due:
        delivery_send.delay(organization_id, delivery_id)
    return len(due)


@shared_task(
    name="budgets.counters_reconcile",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=120,
    soft_time_limit=110,
)
def counters_reconcile() -> int:
    """Every minute: bring every budget's current counters up to the database's figure."""
    return counters_reconcile_now()


def counters_reconcile_now(now=None) -> int:
    """For each budget's current period counter (for an each_customer budget, each customer
    with spend in the period and no budget of their own), create it if missing, or raise its
    ``spent`` to the database's figure: spend the proxy never saw (batch results, events the
    SDK reported while Costr was away) then counts against the budget. A counter is never
    lowered (the proxy's own figure includes what the database does not have yet). When the
    store does not answer, the run stops quietly with one log line; the next run tries again.
    Returns the number of counters written."""
    now = now or timezone.now()
    store = get_store()
    written = 0
    for organization in alerts.organizations_with_budgets():
        zone = zoneinfo.ZoneInfo(organization.time_zone)
        budgets = list(Budget.objects.for_org(organization))
        own = {(b.customer, b.period) for b in budgets if b.scope == "customer"}
        for budget in budgets:
            period = period_of(budget.period, zone, now)
            if budget.scope == "each_customer":
                spends = {
                    customer: spent
                    for customer, spent in alerts.customer_spends(
                        organization.pk, period.start, period.end
                    ).items()
                    if (customer, budget.period) not in own
                }
            else:
                spends = {"": period_spend(organization.pk, rule_of(budget), "", period)}
            ttl = int((period.end - now).total_seconds()) + KEEP_AFTER_PERIOD_SECONDS
            for subject, spent in spends.items():
                key = counter_key(
                    organization.pk, budget.public_id, budget.period, period.key, subject
                )
                try:
                    store.seed_sync(key, nano(spent), ttl)
                except StoreUnavailable as error:
                    logger.warning(
                        "budget counters not reconciled: the budget store is unavailable (%s)",
                        error,
                    )
                    return written
                written += 1
    return written


@shared_task(
    name="budgets.alerts_purge_expired",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=300,
    soft_time_limit=270,
)
def alerts_purge_expired() -> int:
    """Daily, with the usage purge: alerts (and their deliveries) older than each
    organization's retention are deleted, as the usage they describe is."""
    return alerts_purge_expired_now()


def alerts_purge_expired_now(now=None) -> int:
    """Delete every organization's alerts older than its retention; the number deleted."""
    deleted = 0
    for organization in Organization.objects.filter(deletion_requested_at__isnull=True):
        cutoff = retention_cutoff(organization, now)
        expired = Alert.objects.for_org(organization).filter(created_at__lt=cutoff)
        deleted += expired.delete()[1].get(Alert._meta.label, 0)
    return deleted
