"""Writes for usage: events and the customers they name."""

from datetime import datetime

from django.db import transaction

from apps.usage.models import Customer, PriceOverride, UsageEvent
from apps.usage.pricing import TokenCounts, price_usage

EVENT_FIELDS = {
    f.attname for f in UsageEvent._meta.concrete_fields if f.attname not in ("id", "customer_id")
}


def usage_events_write(records: list[dict]) -> int:
    """Store a batch of usage records, priced here (never on the proxy's path, never by a client);
    a request id already stored is skipped, so a batch written twice is stored once."""
    with transaction.atomic():
        customers = _customers_for(records)
        overrides = _overrides_for(records)
        events = []
        for record in records:
            values = {k: v for k, v in record.items() if k in EVENT_FIELDS}
            if isinstance(values.get("timestamp"), str):
                values["timestamp"] = datetime.fromisoformat(values["timestamp"])
            price = price_usage(
                provider=values["provider"],
                model=values.get("model") or "",
                tokens=TokenCounts(
                    input_tokens=values.get("input_tokens"),
                    cached_input_tokens=values.get("cached_input_tokens"),
                    cache_write_tokens=values.get("cache_write_tokens"),
                    cache_write_1h_tokens=values.get("cache_write_1h_tokens"),
                    output_tokens=values.get("output_tokens"),
                ),
                timestamp=values["timestamp"],
                service_tier=values.get("service_tier") or "",
                overrides=overrides.get(values["organization_id"], []),
            )
            values["cost_usd"], values["price_source"] = price.cost_usd, price.source
            external_id = record.get("customer")
            customer = customers.get((record["organization_id"], external_id))
            events.append(UsageEvent(customer_id=customer, **values))
        created = UsageEvent.objects.bulk_create(events, ignore_conflicts=True)
    return len(created)


def _customers_for(records: list[dict]) -> dict[tuple[int, str], int]:
    """Ids of the customers the records name, creating the ones seen for the first time."""
    wanted = {(r["organization_id"], r["customer"]) for r in records if r.get("customer")}
    if not wanted:
        return {}
    reason = "a batch of usage spans organizations"
    Customer.objects.bulk_create(
        [Customer(organization_id=org, external_id=ext) for org, ext in wanted],
        ignore_conflicts=True,
    )
    found = Customer.objects.unscoped(reason=reason).filter(
        organization_id__in={org for org, _ in wanted},
        external_id__in={ext for _, ext in wanted},
    )
    return {(c.organization_id, c.external_id): c.pk for c in found}


def _overrides_for(records: list[dict]) -> dict[int, list]:
    organization_ids = {r["organization_id"] for r in records}
    found: dict[int, list] = {}
    for override in PriceOverride.objects.filter(organization_id__in=organization_ids):
        found.setdefault(override.organization_id, []).append(override.as_price())
    return found
