"""Deleting usage data: what an organization's retention has expired, and everything of an
organization that its owner deleted.

Both delete in batches of primary keys, so no statement holds locks on millions of rows and a
task can stop after a bounded amount of work and re-queue itself (Celery tasks in
``apps.usage.tasks``). Both are idempotent: running again after everything is gone deletes nothing
and records nothing.

Retention counts whole UTC days: with a retention of N days, usage from before midnight UTC N
days ago is deleted, events and the daily rollups alike, so a rollup never outlives the events it
summed and nothing newer than N days is touched.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Organization, User
from apps.accounts.services import audit_event_record, organization_deletion_mark
from apps.keys.services import organization_secrets_destroy
from apps.usage.models import (
    Customer,
    DailyRollup,
    OrganizationDailyRollup,
    PriceOverride,
    PropertyDailyRollup,
    RefusalCount,
    UsageEvent,
)
from costr.tasks import Enqueued, enqueue_on_commit

# Every rollup of usage, deleted with the events they summed.
ROLLUP_MODELS = (DailyRollup, OrganizationDailyRollup, PropertyDailyRollup)

# What the deletion page promises: everything of a deleted organization gone within this time
# (the task starts at once; an hourly sweep restarts any that was lost).
DELETION_DEADLINE_HOURS = 24
BATCH_SIZE = 5000
# How many batches one task run deletes before it re-queues itself.
BATCHES_PER_RUN = 20


@dataclass(frozen=True)
class PurgeResult:
    events: int
    rollups: int
    refusals: int
    done: bool  # False: the batch budget ran out and more remains


def retention_cutoff(organization: Organization, now: datetime | None = None) -> datetime:
    """Midnight UTC of the first day still kept."""
    today = (now or timezone.now()).astimezone(UTC).date()
    first_kept = today - timedelta(days=organization.retention_days)
    return datetime.combine(first_kept, time.min, tzinfo=UTC)


def usage_expired_counts(*, organization: Organization, retention_days: int) -> dict:
    """What a retention of ``retention_days`` would delete today: for the confirmation page."""
    probe = Organization(pk=organization.pk, retention_days=retention_days)
    cutoff = retention_cutoff(probe)
    return {
        "cutoff": cutoff,
        "events": UsageEvent.objects.for_org(organization).filter(timestamp__lt=cutoff).count(),
    }


def usage_purge_expired(
    *,
    organization: Organization,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    max_batches: int = BATCHES_PER_RUN,
) -> PurgeResult:
    """Delete the organization's usage older than its retention; audit how much went."""
    cutoff = retention_cutoff(organization, now)
    events, _, done = _delete_in_batches(
        UsageEvent.objects.for_org(organization).filter(timestamp__lt=cutoff),
        batch_size=batch_size,
        max_batches=max_batches,
    )
    rollups = refusals = 0
    if done:
        # Rollups after their events: a purge cut short never leaves events without their sums.
        rollups = sum(
            model.objects.for_org(organization).filter(day__lt=cutoff.date()).delete()[0]
            for model in ROLLUP_MODELS
        )
        refusals = (
            RefusalCount.objects.for_org(organization).filter(day__lt=cutoff.date()).delete()[0]
        )
    if events or rollups or refusals:
        audit_event_record(
            organization=organization,
            actor=None,
            action="retention.purged",
            target=f"before {cutoff.date().isoformat()}",
            details={
                "retention_days": organization.retention_days,
                "events": events,
                "rollups": rollups,
                "refused_request_counts": refusals,
            },
        )
    return PurgeResult(events=events, rollups=rollups, refusals=refusals, done=done)


def usage_purge_enqueue(*, organization: Organization) -> Enqueued:
    """Purge now rather than at the next daily run (after retention was shortened). If the task
    cannot be queued (the broker is down), the daily purge deletes the same usage."""
    return enqueue_on_commit(
        "usage.purge_expired",
        organization.pk,
        fallback="the daily retention purge (usage.purge_expired_all) deletes the same usage",
    )


def organization_delete(
    *, organization: Organization, actor: User | None, ip: str | None = None
) -> Enqueued:
    """Account deletion, first step: out of reach and its secrets destroyed at once (every
    worker's token cache is told on commit); the data goes with ``organization_data_delete``,
    which this enqueues. If it cannot be queued (the broker is down), the hourly sweep
    ``usage.organization_deletions_resume`` queues it, well within the deadline."""
    with transaction.atomic():
        organization_deletion_mark(organization=organization, actor=actor, ip=ip)
        organization_secrets_destroy(organization=organization)
        return enqueue_on_commit(
            "usage.organization_data_delete",
            organization.pk,
            fallback="the hourly deletion sweep (usage.organization_deletions_resume) queues it",
        )


def organization_data_delete(
    *, organization_id: int, batch_size: int = BATCH_SIZE, max_batches: int = BATCHES_PER_RUN
) -> bool:
    """Account deletion, second step: every row of an organization marked for deletion, the
    organization last. True when nothing is left; False when the batch budget ran out."""
    organization = Organization.objects.filter(
        pk=organization_id, deletion_requested_at__isnull=False
    ).first()
    if organization is None:
        return True  # already gone, or never marked: nothing to do
    budget = max_batches
    for model in (UsageEvent, *ROLLUP_MODELS, RefusalCount, Customer, PriceOverride):
        _, batches, done = _delete_in_batches(
            model.objects.for_org(organization), batch_size=batch_size, max_batches=budget
        )
        budget -= batches
        if not done:
            return False
    # What is left is small (members, invitations, audit events, billing mirrors): the
    # organization's delete cascades to it.
    organization.delete()
    return True


def _delete_in_batches(queryset, *, batch_size: int, max_batches: int) -> tuple[int, int, bool]:
    """Delete the rows of ``queryset`` by primary key, ``batch_size`` at a time, each batch in
    its own transaction. Returns (rows deleted, batches used, whether everything went)."""
    deleted = batches = 0
    while batches < max_batches:
        pks = list(queryset.values_list("pk", flat=True)[:batch_size])
        if not pks:
            return deleted, batches, True
        with transaction.atomic():
            deleted += (
                queryset.model.objects.unscoped(
                    reason="deleting a batch of rows selected from one organization"
                )
                .filter(pk__in=pks)
                .delete()[0]
            )
        batches += 1
    return deleted, batches, not queryset.exists()
