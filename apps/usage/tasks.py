from datetime import datetime, timedelta

from celery import shared_task
from django.db.models import Q
from django.utils import timezone

from apps.accounts.models import Organization
from apps.usage import batch_polling, lifecycle, repricing
from apps.usage.models import PendingReprice
from costr.db import TASK_RETRY_ON_CONNECTION_ERRORS
from costr.schedule import REPRICE_SWEEP_MINUTES

# A pending re-pricing that has not started a sweep interval after it was asked for was never
# queued or was lost before a worker took it (the page promises a start within two intervals);
# one that started longer ago than the task's time limit died with its worker. Either is queued
# again by ``reprices_resume``.
REPRICE_TIME_LIMIT_SECONDS = 3600
REPRICE_REQUEUE_AFTER = timedelta(minutes=REPRICE_SWEEP_MINUTES)


@shared_task(
    name="usage.reprice",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=REPRICE_TIME_LIMIT_SECONDS,
    soft_time_limit=REPRICE_TIME_LIMIT_SECONDS - 60,
)
def reprice(
    organization_id: int, since_iso: str | None = None, pending_id: int | None = None
) -> int:
    """Re-price an organization's events (from ``since_iso``, an ISO 8601 moment, or all) and
    rebuild the rollups of the days that changed. Safe to run twice: a second run finds the
    prices already right and changes nothing; one for a ``PendingReprice`` that is gone (done
    by an earlier copy of this message) does nothing at all. An organization deleted meanwhile
    is skipped."""
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        return 0
    pending = None
    if pending_id is not None:
        pending = PendingReprice.objects.filter(organization=organization, pk=pending_id)
        if not pending.update(started_at=timezone.now()):
            return 0  # already done
    since = datetime.fromisoformat(since_iso) if since_iso else None
    repriced = repricing.usage_reprice(organization, since)
    if pending is not None:
        pending.delete()
    return repriced


@shared_task(
    name="usage.reprices_resume",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=300,
    soft_time_limit=270,
)
def reprices_resume() -> int:
    """Every few minutes: queue every re-pricing that was asked for and neither started soon
    after nor finished within the task's time limit (its message was never sent, or lost)."""
    now = timezone.now()
    waiting = (
        PendingReprice.objects.unscoped(reason="the sweep looks for every org's lost re-pricing")
        .filter(organization__deletion_requested_at__isnull=True)
        .filter(
            Q(started_at__isnull=True, requested_at__lt=now - REPRICE_REQUEUE_AFTER)
            | Q(started_at__lt=now - timedelta(seconds=REPRICE_TIME_LIMIT_SECONDS))
        )
        .values_list("pk", "organization_id", "since")
    )
    queued = 0
    for pending_id, organization_id, since in list(waiting):
        reprice.delay(organization_id, since.isoformat() if since else None, pending_id)
        queued += 1
    return queued


@shared_task(
    name="usage.purge_expired",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=900,
    soft_time_limit=870,
)
def purge_expired(organization_id: int) -> int:
    """Delete one organization's usage older than its retention, a bounded amount per run; a
    run that did not finish queues the next."""
    organization = Organization.objects.filter(
        pk=organization_id, deletion_requested_at__isnull=True
    ).first()
    if organization is None:
        return 0
    result = lifecycle.usage_purge_expired(organization=organization)
    if not result.done:
        purge_expired.delay(organization_id)
    return result.events


@shared_task(
    name="usage.purge_expired_all",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=300,
    soft_time_limit=270,
)
def purge_expired_all() -> int:
    """Daily: queue the retention purge of every organization."""
    organization_ids = list(
        Organization.objects.filter(deletion_requested_at__isnull=True).values_list("pk", flat=True)
    )
    for organization_id in organization_ids:
        purge_expired.delay(organization_id)
    return len(organization_ids)


@shared_task(
    name="usage.organization_data_delete",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=900,
    soft_time_limit=870,
)
def organization_data_delete(organization_id: int) -> bool:
    """Delete a deleted organization's data, a bounded amount per run, the organization last;
    a run that did not finish queues the next."""
    done = lifecycle.organization_data_delete(organization_id=organization_id)
    if not done:
        organization_data_delete.delay(organization_id)
    return done


@shared_task(
    name="usage.organization_deletions_resume",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=300,
    soft_time_limit=270,
)
def organization_deletions_resume() -> int:
    """Hourly: queue the deletion of every organization still waiting for it, so a lost task
    (a worker restarted mid-run) never leaves data past the promised deadline."""
    organization_ids = list(
        Organization.objects.filter(deletion_requested_at__isnull=False).values_list(
            "pk", flat=True
        )
    )
    for organization_id in organization_ids:
        organization_data_delete.delay(organization_id)
    return len(organization_ids)


@shared_task(
    name="usage.batch_poll",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=batch_polling.POLL_TIME_LIMIT_SECONDS,
    soft_time_limit=batch_polling.POLL_TIME_LIMIT_SECONDS - 60,
)
def batch_poll(tracked_batch_id: int) -> str:
    """One look at a tracked provider batch: not ended yet, looked at again later; ended, its
    items metered once each. Safe to run twice: a poll takes its batch by a lease, and items
    are stored under request ids derived from the batch and their custom_id."""
    return batch_polling.tracked_batch_poll(tracked_batch_id=tracked_batch_id)


@shared_task(
    name="usage.batches_poll_due",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=120,
    soft_time_limit=100,
)
def batches_poll_due() -> int:
    """Every minute: queue a look at every tracked batch that is due (a new one a minute after
    its creation, then on its back-off, and one whose poll died once its lease ran out)."""
    due = batch_polling.tracked_batches_due()
    for tracked_batch_id in due:
        batch_poll.delay(tracked_batch_id)
    return len(due)
