"""Usage metadata as files people take away: CSV and JSON, streamed row by row from the database
in chunks, so an export of millions of events never sits in memory. The events explorer's CSV
and the export offered before account deletion both come from here."""

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal

# (column, the event field it reads): the usage event as DESIGN.md names it.
COLUMNS = [
    ("timestamp", "timestamp"),
    ("request_id", "request_id"),
    ("provider", "provider"),
    ("endpoint", "endpoint"),
    ("model", "model"),
    ("requested_model", "requested_model"),
    ("customer", "customer__external_id"),
    ("properties", "properties"),
    ("status", "status"),
    ("stream", "stream"),
    ("outcome", "outcome"),
    ("source", "source"),
    ("input_tokens", "input_tokens"),
    ("cached_input_tokens", "cached_input_tokens"),
    ("cache_write_tokens", "cache_write_tokens"),
    ("cache_write_1h_tokens", "cache_write_1h_tokens"),
    ("output_tokens", "output_tokens"),
    ("reasoning_tokens", "reasoning_tokens"),
    ("usage_details", "usage_details"),
    ("service_tier", "service_tier"),
    ("cost_usd", "cost_usd"),
    ("price_source", "price_source"),
    ("latency_ms", "latency_ms"),
    ("ttfb_ms", "ttfb_ms"),
    ("overhead_ms", "overhead_ms"),
]
# A cell starting with one of these is read as a formula by spreadsheets; customer ids, models
# and property values come from request headers, i.e. from anyone.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CHUNK = 2000


def _rows(events) -> Iterator[tuple]:
    return events.values_list(*(source for _, source in COLUMNS)).iterator(chunk_size=CHUNK)


def _plain(value):
    """A value as JSON has it: times in ISO 8601 UTC, money as a decimal string."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def _csv_cell(value):
    """A cell; text (not a number: -0.5 stays a number) a spreadsheet would take for a formula
    is quoted."""
    text_given = isinstance(value, str | dict)
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if text_given and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class _Echo:
    """A file whose write returns the line, for csv.writer inside a generator."""

    def write(self, value):
        return value


def events_csv(events) -> Iterator[str]:
    """The header, then one line per event of ``events``, in its order."""
    return rows_csv([name for name, _ in COLUMNS], _rows(events))


def rows_csv(header: list[str], rows: Iterable[tuple]) -> Iterator[str]:
    """CSV lines: ``header``, then each row, cells as JSON has them (times in ISO 8601 UTC, money
    as decimal strings), a cell a spreadsheet would read as a formula quoted."""
    writer = csv.writer(_Echo())
    yield writer.writerow(header)
    for values in rows:
        yield writer.writerow([_csv_cell(value) for value in values])


def events_json(events) -> Iterator[str]:
    """A JSON array of the events of ``events``, in its order, one per line."""
    names = [name for name, _ in COLUMNS]
    yield "[\n"
    separator = ""
    for values in _rows(events):
        row = dict(zip(names, (_plain(value) for value in values), strict=True))
        yield separator + json.dumps(row, ensure_ascii=False)
        separator = ",\n"
    yield "\n]\n"
