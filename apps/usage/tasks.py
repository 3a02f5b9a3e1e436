from datetime import datetime

from celery import shared_task

from apps.accounts.models import Organization
from apps.usage import lifecycle, repricing
from costr.db import TASK_RETRY_ON_CONNECTION_ERRORS


@shared_task(
    name="usage.reprice", **TASK_RETRY_ON_CONNECTION_ERRORS, time_limit=3600, soft_time_limit=3540
)
def reprice(organization_id: int, since_iso: str | None = None) -> int:
    """Re-price an organization's events (from ``since_iso``, an ISO 8601 moment, or all) and
    rebuild the rollups of the days that changed. Safe to run twice: a second run finds the
    prices already right and changes nothing. An organization deleted meanwhile is skipped."""
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        return 0
    since = datetime.fromisoformat(since_iso) if since_iso else None
    return repricing.usage_reprice(organization, since)


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
