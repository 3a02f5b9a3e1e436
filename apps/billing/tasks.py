from celery import shared_task

from apps.billing import sync
from apps.billing.models import StripeConnection
from costr.db import TASK_RETRY_ON_CONNECTION_ERRORS


@shared_task(
    name="billing.stripe_sync",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=sync.SYNC_TIME_LIMIT_SECONDS,
    soft_time_limit=sync.SYNC_TIME_LIMIT_SECONDS - 120,
)
def stripe_sync(organization_id: int) -> dict:
    """Sync one organization's Stripe data. Safe to run twice: a second run while one is going
    returns at once, and a run after it finds nothing new to store."""
    return sync.stripe_sync(organization_id=organization_id).as_dict()


@shared_task(
    name="billing.stripe_sync_all",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=300,
    soft_time_limit=270,
)
def stripe_sync_all() -> int:
    """Beat's hourly entry point: one sync task per connected organization (not the demo's)."""
    organization_ids = list(
        StripeConnection.objects.unscoped(reason="beat queues a sync for every connected org")
        .filter(is_demo=False)
        .order_by("organization_id")
        .values_list("organization_id", flat=True)
    )
    for organization_id in organization_ids:
        stripe_sync.delay(organization_id)
    return len(organization_ids)
