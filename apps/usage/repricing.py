"""Re-pricing stored events with today's prices and overrides (``reprice`` command, the price
overrides page), then rebuilding the rollups of the days whose costs changed."""

import logging
from datetime import UTC, date, datetime

from django.db import transaction

from apps.accounts.models import Organization
from apps.usage.metering.contract import TOKEN_FIELDS
from apps.usage.metering.events import event_price, overrides_for
from apps.usage.models import PriceSource, UsageEvent
from apps.usage.rollups import rollups_rebuild_day

logger = logging.getLogger("costr.usage")

REPRICE_BATCH = 2000


def usage_reprice(organization: Organization, since: datetime | None = None) -> int:
    """Price the organization's events again (all, or those from ``since``) from their stored
    token counts, usage details, model, tier and timestamp, with today's catalog and overrides,
    by the writer's rule (``event_price``), so an event without usage is reclassified as
    ``no_usage`` or ``usage_unknown`` too; then rebuild the rollups of every day where a cost or
    price source changed. Returns the number of events re-priced.

    Events are read and updated in batches by id, each batch its own transaction, so a large
    organization never holds long locks. The writer never updates an event, so the two do not
    meet on event rows; they meet on rollups, which ``rollups_rebuild_day`` handles. An event
    written while a reprice runs was priced with the overrides its writer read; if that was
    before the change that prompted the reprice, run it again (the settings page does, on every
    change).
    """
    overrides = overrides_for([organization.pk]).get(organization.pk)
    events = UsageEvent.objects.for_org(organization)
    if since is not None:
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        events = events.filter(timestamp__gte=since)
    fields = (
        "id",
        "timestamp",
        "provider",
        "model",
        *TOKEN_FIELDS,
        "usage_details",
        "service_tier",
        "endpoint",
        "status",
        "outcome",
        "cost_usd",
        "price_source",
    )
    repriced = 0
    changed_days: set[date] = set()
    last_id = 0
    while True:
        batch = list(events.filter(id__gt=last_id).order_by("id").only(*fields)[:REPRICE_BATCH])
        if not batch:
            break
        last_id = batch[-1].id
        changed = []
        for event in batch:
            cost, source = event_price(
                event.provider,
                event.model,
                event.input_tokens,
                event.cached_input_tokens,
                event.cache_write_tokens,
                event.cache_write_1h_tokens,
                event.output_tokens,
                event.reasoning_tokens,
                event.usage_details,
                event.timestamp,
                event.service_tier,
                overrides,
                event.endpoint,
                event.status,
                event.outcome,
                False if event.price_source == PriceSource.NO_USAGE else None,
            )
            if (cost, source) != (event.cost_usd, event.price_source):
                event.cost_usd, event.price_source = cost, source
                changed.append(event)
                changed_days.add(event.timestamp.astimezone(UTC).date())
        with transaction.atomic():
            events.bulk_update(changed, ["cost_usd", "price_source"], batch_size=500)
        repriced += len(batch)
    for day in sorted(changed_days):
        rollups_rebuild_day(organization=organization, day=day)
    logger.info(
        "re-priced %d events of %s; %d days of rollups rebuilt",
        repriced,
        organization.slug,
        len(changed_days),
    )
    return repriced
