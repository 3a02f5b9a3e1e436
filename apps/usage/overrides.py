"""Writes for an organization's own prices: add, delete, and re-price past events after a change.

An override changes the cost of events written from then on; events already stored keep the
cost they were given until they are re-priced, which the person asks for explicitly (it can touch
many rows, so it runs as a task).
"""

from datetime import datetime
from decimal import Decimal

from django.db import transaction

from apps.accounts.models import Organization, User
from apps.accounts.services import audit_event_record
from apps.keys import keycache
from apps.usage.models import PendingReprice, PriceOverride
from costr.tasks import Enqueued, enqueue_on_commit


class PriceOverrideError(Exception):
    """Refused input about an override; the message is for the person who typed it."""


def _invalidate_on_commit(organization_id: int) -> None:
    """The proxy prices budget reservations with the organization's overrides, which it loads
    with its tokens: drop them everywhere once the change is committed."""
    transaction.on_commit(lambda: keycache.invalidate_organization(organization_id))


def _describe(override: PriceOverride) -> str:
    provider = override.provider or "any provider"
    return f"{override.model_pattern} ({provider}) from {override.valid_from:%Y-%m-%d %H:%M} UTC"


def _price_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def price_override_create(
    *,
    organization: Organization,
    model_pattern: str,
    provider: str,
    valid_from: datetime,
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
    cached_input_per_mtok: Decimal | None = None,
    cache_write_per_mtok: Decimal | None = None,
    actor: User | None,
    ip: str | None = None,
) -> PriceOverride:
    model_pattern = model_pattern.strip()
    if not model_pattern:
        raise PriceOverrideError("Name the model, or a pattern such as gpt-4o*.")
    with transaction.atomic():
        clash = PriceOverride.objects.for_org(organization).filter(
            model_pattern__iexact=model_pattern, provider=provider, valid_from=valid_from
        )
        if clash.exists():
            raise PriceOverrideError(
                "An override for this pattern and provider from the same moment exists: delete "
                "it first, or choose another valid-from."
            )
        override = PriceOverride.objects.create(
            organization=organization,
            model_pattern=model_pattern,
            provider=provider,
            valid_from=valid_from,
            input_per_mtok=input_per_mtok,
            cached_input_per_mtok=cached_input_per_mtok,
            cache_write_per_mtok=cache_write_per_mtok,
            output_per_mtok=output_per_mtok,
        )
        audit_event_record(
            organization=organization,
            actor=actor,
            action="price_override.created",
            target=_describe(override),
            ip=ip,
            details={
                "model_pattern": model_pattern,
                "provider": provider,
                "valid_from": valid_from.isoformat(),
                "input_per_mtok": _price_text(input_per_mtok),
                "cached_input_per_mtok": _price_text(cached_input_per_mtok),
                "cache_write_per_mtok": _price_text(cache_write_per_mtok),
                "output_per_mtok": _price_text(output_per_mtok),
            },
        )
        _invalidate_on_commit(organization.pk)
    return override


def price_override_delete(
    *, override: PriceOverride, actor: User | None, ip: str | None = None
) -> None:
    with transaction.atomic():
        description = _describe(override)
        organization = override.organization
        override.delete()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="price_override.deleted",
            target=description,
            ip=ip,
        )
        _invalidate_on_commit(organization.pk)


def usage_reprice_request(
    *, organization: Organization, since: datetime, actor: User | None, ip: str | None = None
) -> Enqueued:
    """Queue the re-pricing of the organization's events from ``since`` on, once the audit
    record of the request is committed. The request is kept in the database until the task has
    done it (``PendingReprice``), so if the task cannot be queued now (the broker is down) the
    sweep ``usage.reprices_resume`` runs it within minutes."""

    since_iso = since.isoformat()
    with transaction.atomic():
        audit_event_record(
            organization=organization,
            actor=actor,
            action="usage.reprice_requested",
            target=f"events since {since:%Y-%m-%d %H:%M} UTC",
            ip=ip,
            details={"since": since_iso},
        )
        pending = PendingReprice.objects.create(organization=organization, since=since)
        return enqueue_on_commit(
            "usage.reprice",
            organization.pk,
            since_iso,
            pending.pk,
            fallback="the re-pricing sweep (usage.reprices_resume) queues it",
        )
