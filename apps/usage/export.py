"""Usage metadata as files people can take away: CSV and JSON, streamed row by row, so an export
of millions of events never sits in memory."""

import csv
import json
from collections.abc import Iterable, Iterator

from apps.usage.models import UsageEvent

# The usage event as DESIGN.md names its fields (the events API returns the same).
EXPORT_FIELDS = (
    "request_id",
    "timestamp",
    "provider",
    "endpoint",
    "model",
    "requested_model",
    "customer",
    "properties",
    "status",
    "stream",
    "outcome",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "price_source",
    "latency_ms",
    "ttfb_ms",
    "overhead_ms",
)


def event_as_dict(event: UsageEvent) -> dict:
    """One event with JSON-safe values: times in ISO 8601 UTC, money as a decimal string."""
    return {
        **{name: getattr(event, name) for name in EXPORT_FIELDS},
        "timestamp": event.timestamp.isoformat().replace("+00:00", "Z"),
        "customer": event.customer.external_id if event.customer_id else None,
        "cost_usd": None if event.cost_usd is None else f"{event.cost_usd:.12f}",
    }


def export_queryset(events) -> Iterable[UsageEvent]:
    return events.select_related("customer").order_by("timestamp", "pk").iterator(chunk_size=2000)


class _Line:
    """csv.writer needs a file; this one hands back what was written."""

    def write(self, value: str) -> str:
        return value


def events_csv(events) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(EXPORT_FIELDS)
    for event in export_queryset(events):
        row = event_as_dict(event)
        row["properties"] = json.dumps(row["properties"], ensure_ascii=False, sort_keys=True)
        yield writer.writerow(["" if row[name] is None else row[name] for name in EXPORT_FIELDS])


def events_json(events) -> Iterator[str]:
    """A JSON array, one event per line."""
    yield "[\n"
    separator = ""
    for event in export_queryset(events):
        yield separator + json.dumps(event_as_dict(event), ensure_ascii=False)
        separator = ",\n"
    yield "\n]\n"
