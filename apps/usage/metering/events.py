"""Writes for usage: events, the daily rollups kept in step with them, the customers they name,
refusal counts, and re-pricing.

How a batch is written (``usage_events_write``), in one transaction:

1. A record that names an ``attribution_from`` and no customer or properties takes them from
   that earlier event (``_attributed``: a background response's usage goes to its creator).
   Each record is priced here (never on the proxy's path, never by a client): ``event_price``
   says which price source applies and why.
2. The rows are inserted with ``ON CONFLICT (request_id) DO NOTHING RETURNING request_id``
   (PostgreSQL: COPY into a temporary table, then one ``INSERT … SELECT``; SQLite ≥ 3.35: multi-row
   ``VALUES``). The ids returned are exactly the rows this transaction stored: a replayed batch, or
   the same record written by two writers at once, comes back from only one of them.
3. Those rows, and only those, are summed per (org, day, customer, provider, model), per (org,
   day, provider, model) with a latency histogram, and per (org, day, property name, value), and
   added to the three rollups with one ``INSERT … ON CONFLICT (…) DO UPDATE SET col = col +
   excluded.col`` each (PostgreSQL: summed by the database from the staged rows whose ids came
   back; SQLite: summed here, multi-row ``VALUES``).

So an event is in its rollup if and only if it is stored, whatever is replayed or raced.
docs/metering.md has the whole picture.
"""

import json
import logging
import sqlite3
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from itertools import islice
from operator import itemgetter

from django.db import connection, transaction

from apps.accounts.models import Organization
from apps.keys.models import ProxyToken
from apps.usage.batches import tracked_batches_record
from apps.usage.metering.contract import (
    ERROR_OUTCOMES,
    MAX_PROPERTIES,
    NON_BILLABLE_ENDPOINTS,
    USAGE_DETAIL_KEYS,
    UsageRecord,
)
from apps.usage.metering.counters import (
    COUNTED_FIELDS,
    ERROR_STATUS,
    LATENCY_BUCKETS,
    ROLLUP_COUNTERS,
    SQL_COUNTERS,
    SQL_LATENCY_HISTOGRAM,
    counters_add,
    counters_of,
)
from apps.usage.models import (
    PROPERTY_NAME_MAX_LENGTH,
    PROPERTY_VALUE_MAX_LENGTH,
    Customer,
    DailyRollup,
    OrganizationDailyRollup,
    PriceOverride,
    PriceSource,
    PropertyDailyRollup,
    RefusalCount,
    UsageEvent,
)
from apps.usage.pricing import Overrides, price_tokens

logger = logging.getLogger("costr.usage")

# Namespace of the PostgreSQL advisory lock that keeps a rollup rebuild and the writer apart.
ROLLUP_LOCK_NAMESPACE = 0x5553  # "US"

_EVENT_FIELDS = [f for f in UsageEvent._meta.concrete_fields if f.attname != "id"]
EVENT_COLUMNS = [f.column for f in _EVENT_FIELDS]
# What a record that leaves a field out gets: the model's default, as bulk_create would give.
_COLUMN_DEFAULTS = [
    (f.attname, f.get_default() if f.has_default() or f.null or f.empty_strings_allowed else None)
    for f in _EVENT_FIELDS
]
_INDEX = {f.attname: index for index, f in enumerate(_EVENT_FIELDS)}
# Text fields are cut to their column's length: one over-long model name from a client must not
# make a whole batch fail again and again. The request id is never cut (it is the dedupe key).
_MAX_LENGTH_INDEXES = [
    (index, f.max_length)
    for index, f in enumerate(_EVENT_FIELDS)
    if getattr(f, "max_length", None) and f.attname != "request_id"
]
_CUSTOMER_MAX_LENGTH = Customer._meta.get_field("external_id").max_length

_ROLLUP_KEY = ["organization_id", "day", "customer", "provider", "model"]
_ORG_ROLLUP_KEY = ["organization_id", "day", "provider", "model"]
_ORG_ROLLUP_COUNTERS = ROLLUP_COUNTERS + LATENCY_BUCKETS
_PROPERTY_ROLLUP_KEY = ["organization_id", "day", "name", "value"]

# The largest usage detail stored (as the ingest API bounds token counts): past it, a value is a
# client's mistake or an attack, not usage.
MAX_USAGE_DETAIL = 10**12
_NO_COST = Decimal(0)


def usage_details_storable(details) -> dict | None:
    """What of ``details`` is stored and priced: the ``USAGE_DETAIL_KEYS`` whose value is a
    finite number from 0 to ``MAX_USAGE_DETAIL`` (an int, or a float for seconds), in that key
    order; None when nothing is left. Anything else (another key, a string, a bool, a negative
    count, NaN, a nested object, not a mapping at all) is dropped, never refused: a hostile value
    must not fail its batch, and a number PostgreSQL's JSON cannot hold (NaN, Infinity) never
    reaches it."""
    if type(details) is not dict or not details:
        return None
    kept = {}
    for name in USAGE_DETAIL_KEYS:
        value = details.get(name)
        kind = type(value)
        # The range also drops NaN and infinities, which compare false or too large.
        if (kind is int or kind is float) and 0 <= value <= MAX_USAGE_DETAIL:
            kept[name] = value
    return kept or None


def event_price(
    provider: str,
    model: str,
    input_tokens: int | None,
    cached_input_tokens: int | None,
    cache_write_tokens: int | None,
    cache_write_1h_tokens: int | None,
    output_tokens: int | None,
    reasoning_tokens: int | None,
    usage_details: dict | None,
    timestamp: datetime,
    service_tier: str,
    overrides: Overrides | None,
    endpoint: str,
    status: int,
    outcome: str,
    billable: bool | None,
) -> tuple[Decimal | None, str]:
    """An event's cost and price source (DESIGN.md, "Usage event"), for the writer and for
    ``usage_reprice``, so a re-pricing classifies old events as the writer classifies new ones.

    - Usage known (a token count, or a usage detail): priced by ``pricing.price_tokens``:
      ``catalog`` or ``override``, or ``unpriced`` (cost None) when no price applies.
    - No usage at all, and the provider bills nothing for the request: ``no_usage``, cost 0.
      That is a record marked not ``billable`` (a realtime session that made no response), an
      endpoint in ``NON_BILLABLE_ENDPOINTS`` (models lists, ``count_tokens``, file and batch
      management), or a request that failed (status >= ``ERROR_STATUS``, or an error outcome:
      the provider refused it, or Costr or the upstream broke it off).
    - No usage, otherwise: a billable call that succeeded (a client that left after a successful
      status included) whose usage could not be read: ``usage_unknown``, cost None.

    ``billable`` is the record's flag, None when absent. An event already stored as
    ``no_usage`` is re-priced with ``billable=False``: its record's flag is not stored, and
    its usage cannot have appeared since.
    """
    if (
        input_tokens is None
        and output_tokens is None
        and cached_input_tokens is None
        and cache_write_tokens is None
        and cache_write_1h_tokens is None
        and reasoning_tokens is None
        and not usage_details
    ):
        if (
            billable is False
            or endpoint in NON_BILLABLE_ENDPOINTS
            or status >= ERROR_STATUS
            or outcome in ERROR_OUTCOMES
        ):
            return _NO_COST, PriceSource.NO_USAGE.value
        return None, PriceSource.USAGE_UNKNOWN.value
    return price_tokens(
        provider,
        model,
        input_tokens,
        cached_input_tokens,
        cache_write_tokens,
        cache_write_1h_tokens,
        output_tokens,
        timestamp,
        service_tier,
        overrides,
        usage_details,
    )


def usage_events_write(records: list[UsageRecord]) -> int:
    """Store a batch of usage records and add them to the daily rollups; returns how many were
    newly stored.

    Idempotent by ``request_id``: a record already stored (or repeated within the batch) is
    skipped and not counted again. Customers named for the first time are created. Records of an
    organization that no longer exists are dropped, and a token deleted since is stored as null
    (what ``SET_NULL`` would have done): either would otherwise fail the whole batch on every
    retry. ``timestamp`` may be a datetime or an ISO 8601 string; a naive one is UTC.
    """
    records = _unique_by_request_id(records)
    if not records:
        return 0
    organizations = set(
        Organization.objects.filter(pk__in={r["organization_id"] for r in records}).values_list(
            "pk", flat=True
        )
    )
    records = [r for r in records if r["organization_id"] in organizations]
    if not records:
        return 0
    records = _attributed(records)
    # Request-id order: two writers with overlapping batches take the unique index's locks in
    # the same order, so one waits for the other instead of deadlocking.
    records.sort(key=itemgetter("request_id"))
    # Priced before the transaction: locks are held for the writing only.
    tokens = _existing_tokens(records)
    prepared = _prepare(records, tokens, overrides_for(organizations))
    # Batch creations start being tracked with their event (apps.usage.batches); rare.
    batches_created = [r for r in records if "batch" in r]
    with transaction.atomic():
        _lock_rollups_shared(organizations)
        _name_customers(prepared)
        if batches_created:
            tracked_batches_record(batches_created, tokens=tokens)
        if connection.vendor == "postgresql":
            return _write_postgresql(prepared)
        inserted = set(_insert_events_values(prepared.rows))
        if inserted:
            _rollups_add(prepared, inserted)
    return len(inserted)


class _Prepared:
    """The batch as rows in ``EVENT_COLUMNS`` order, plus what the rollups need of each."""

    def __init__(self):
        self.rows: list[list] = []
        self.customers: list[str] = []  # external id, "" for none
        self.days: list[date] = []
        self.properties: list = []  # as stored (at most MAX_PROPERTIES), before JSON encoding


def _unique_by_request_id(records: Iterable[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for record in records:
        seen.setdefault(record["request_id"], record)
    return list(seen.values())


def _attributed(records: list[dict]) -> list[dict]:
    """The records, each one that names an ``attribution_from`` (``contract.UsageRecord``) and
    no customer or no properties given what it lacks of the customer and properties of that
    earlier event of its organization: looked up among the batch's records first, then among
    the stored events (one query for the batch, scoped to the organizations). A record whose
    earlier event is neither in the batch nor stored yet (still on its way, or in the batch of
    another writer that has not committed) keeps what it named. Records are copied, never
    changed in place: a batch that fails is retried as it came."""
    wanting = [
        record
        for record in records
        if record.get("attribution_from")
        and (not record.get("customer") or not record.get("properties"))
    ]
    if not wanting:
        return records
    in_batch = {(r["organization_id"], r["request_id"]): r for r in records}
    sources: dict[tuple[int, str], tuple[str | None, dict]] = {}
    missing: set[tuple[int, str]] = set()
    for record in wanting:
        key = (record["organization_id"], record["attribution_from"])
        source = in_batch.get(key)
        if source is not None:
            sources[key] = (source.get("customer"), source.get("properties") or {})
        else:
            missing.add(key)
    if missing:
        stored = (
            UsageEvent.objects.unscoped(reason="a batch of usage spans organizations")
            .filter(
                organization_id__in={org for org, _ in missing},
                request_id__in={request_id for _, request_id in missing},
            )
            .values_list("organization_id", "request_id", "customer__external_id", "properties")
        )
        for organization_id, request_id, customer, properties in stored:
            if (organization_id, request_id) in missing:
                sources[(organization_id, request_id)] = (customer, properties or {})
    attributed = []
    for record in records:
        source = sources.get((record["organization_id"], record.get("attribution_from")))
        if source is not None:
            record = dict(record)
            if not record.get("customer"):
                record["customer"] = source[0]
            if not record.get("properties"):
                record["properties"] = source[1]
        attributed.append(record)
    return attributed


def _existing_tokens(records: list[dict]) -> set[int]:
    wanted = {r.get("token_id") for r in records} - {None}
    if not wanted:
        return set()
    return set(
        ProxyToken.objects.unscoped(reason="a batch of usage spans organizations")
        .filter(pk__in=wanted)
        .values_list("pk", flat=True)
    )


def overrides_for(organization_ids: Iterable[int]) -> dict[int, Overrides]:
    found: dict[int, list] = {}
    overrides = PriceOverride.objects.unscoped(
        reason="a writer's batch holds records of several organizations"
    )
    for override in overrides.filter(organization_id__in=list(organization_ids)):
        found.setdefault(override.organization_id, []).append(override.as_price())
    return {org: Overrides(prices) for org, prices in found.items()}


def _json_dumps(value) -> str:
    """JSON as Django's JSONField would write it; an empty dict (most requests' properties)
    without going through the encoder."""
    if value == {} and type(value) is dict:
        return "{}"
    return json.dumps(value)


def _customer_of(record: dict) -> str:
    return (record.get("customer") or "")[:_CUSTOMER_MAX_LENGTH]


def _prepare(records: list[dict], tokens: set[int], overrides: dict[int, Overrides]) -> _Prepared:
    """Price each record and lay it out as a row (customer ids come later, from
    ``_name_customers``). This loop is the writer's hot path: no model instances, no per-field
    preparation beyond what each column needs."""
    prepared = _Prepared()
    sqlite = connection.vendor == "sqlite"
    adapt_datetime = connection.ops.adapt_datetimefield_value
    columns = _COLUMN_DEFAULTS
    cut = _MAX_LENGTH_INDEXES
    i = _INDEX
    dumps = _json_dumps
    for record in records:
        get = record.get
        row = [get(name, default) for name, default in columns]
        timestamp = row[i["timestamp"]]
        if isinstance(timestamp, str):
            timestamp = datetime.fromisoformat(timestamp)
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        elif timestamp.tzinfo is not UTC:
            timestamp = timestamp.astimezone(UTC)
        for index, length in cut:
            text = row[index]
            if text is not None and len(text) > length:
                row[index] = text[:length]
        organization_id = row[i["organization_id"]]
        details = row[i["usage_details"]]
        if details is not None:
            details = usage_details_storable(details)
            row[i["usage_details"]] = None if details is None else dumps(details)
        row[i["cost_usd"]], row[i["price_source"]] = event_price(
            row[i["provider"]],
            row[i["model"]] or "",
            row[i["input_tokens"]],
            row[i["cached_input_tokens"]],
            row[i["cache_write_tokens"]],
            row[i["cache_write_1h_tokens"]],
            row[i["output_tokens"]],
            row[i["reasoning_tokens"]],
            details,
            timestamp,
            row[i["service_tier"]] or "",
            overrides.get(organization_id),
            row[i["endpoint"]],
            row[i["status"]],
            row[i["outcome"]],
            get("billable"),
        )
        row[i["timestamp"]] = adapt_datetime(timestamp) if sqlite else timestamp
        row[i["customer_id"]] = None  # set by _name_customers, in the transaction
        customer = _customer_of(record)
        if row[i["token_id"]] not in tokens:
            row[i["token_id"]] = None
        properties = row[i["properties"]]
        if type(properties) is dict and len(properties) > MAX_PROPERTIES:
            properties = dict(islice(properties.items(), MAX_PROPERTIES))
        row[i["properties"]] = dumps(properties)
        prepared.properties.append(properties)
        raw_usage = row[i["raw_usage"]]
        row[i["raw_usage"]] = None if raw_usage is None else dumps(raw_usage)
        prepared.rows.append(row)
        prepared.customers.append(customer)
        prepared.days.append(timestamp.date())
    return prepared


def _name_customers(prepared: _Prepared) -> None:
    """Set each row's customer id, creating the customers seen for the first time."""
    org, column = _INDEX["organization_id"], _INDEX["customer_id"]
    wanted = {
        (row[org], customer)
        for row, customer in zip(prepared.rows, prepared.customers, strict=True)
        if customer
    }
    if not wanted:
        return
    ids = _customers_for(wanted)
    for row, customer in zip(prepared.rows, prepared.customers, strict=True):
        if customer:
            row[column] = ids[(row[org], customer)]


def _customers_for(wanted: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Ids of the (organization, external id) customers, creating the ones seen for the first
    time."""

    def lookup() -> dict[tuple[int, str], int]:
        found = Customer.objects.unscoped(reason="a batch of usage spans organizations").filter(
            organization_id__in={org for org, _ in wanted},
            external_id__in={ext for _, ext in wanted},
        )
        return {
            (org, ext): pk
            for org, ext, pk in found.values_list("organization_id", "external_id", "pk")
            if (org, ext) in wanted
        }

    known = lookup()
    missing = wanted - known.keys()
    if missing:
        Customer.objects.bulk_create(
            [Customer(organization_id=org, external_id=ext) for org, ext in sorted(missing)],
            ignore_conflicts=True,
        )
        known = lookup()
    return known


_INCOMING = "usage_event_incoming"


def _write_postgresql(prepared: _Prepared) -> int:
    """PostgreSQL: COPY the batch into a session-local temporary table; insert the events from
    it with ``ON CONFLICT (request_id) DO NOTHING RETURNING request_id``; then add the sums of
    exactly the returned rows to the rollups with one ``INSERT … SELECT … GROUP BY … ON
    CONFLICT (…) DO UPDATE SET c = c + excluded.c``.

    COPY is the cheapest way in, and summing in the database spares Python a pass over the rows
    (the sums are ``metering.counters``' SQL rendering, whose Python twin ``_rollups_add`` uses
    for SQLite; the tests hold both to the events). Rows are inserted in request-id order and
    rollup rows in key order, so concurrent writers lock in the same order. Everything goes
    through Django's cursor, so execute wrappers and query logging see it.
    """
    sql = _statements()
    with connection.cursor() as cursor:
        # ON COMMIT DELETE ROWS: empty at the start of every transaction, created once per
        # connection (and again if a rolled-back transaction took its creation with it).
        cursor.execute(sql["incoming_create"])
        with cursor.copy(sql["incoming_copy"]) as copy:
            for row, customer in zip(prepared.rows, prepared.customers, strict=True):
                row.append(customer)
                copy.write_row(row)
        cursor.execute(sql["events_from_incoming"])
        inserted = [request_id for (request_id,) in cursor.fetchall()]
        if inserted:
            cursor.execute(sql["rollups_from_incoming"], [inserted])
            cursor.execute(sql["org_rollups_from_incoming"], [inserted])
            if any(prepared.properties):
                cursor.execute(sql["property_rollups_from_incoming"], [inserted])
        # Empty for a caller's transaction that goes on (DELETE, not TRUNCATE: no new file, no
        # catalog row); commit empties it anyway.
        cursor.execute(sql["incoming_clear"])
    return len(inserted)


@cache
def _statements() -> dict[str, str]:
    """The writer's SQL, built once from the models' own table and column names: nothing from
    outside reaches these strings, values always go as parameters. Identifiers are quoted the
    same way on PostgreSQL and SQLite."""

    def quote(name: str) -> str:
        return f'"{name}"'

    events = quote(UsageEvent._meta.db_table)
    columns = ", ".join(quote(c) for c in EVENT_COLUMNS)
    definitions = ", ".join(f"{quote(f.column)} {_incoming_type(f)}" for f in _EVENT_FIELDS)
    rollups = quote(DailyRollup._meta.db_table)
    refusals = quote(RefusalCount._meta.db_table)
    org_rollups = quote(OrganizationDailyRollup._meta.db_table)
    property_rollups = quote(PropertyDailyRollup._meta.db_table)

    def upsert(table: str, key: list[str], counters: list[str]) -> tuple[str, str, str]:
        """INSERT … VALUES head, ON CONFLICT tail and one row's placeholder for a rollup."""
        tail = f" ON CONFLICT ({', '.join(quote(c) for c in key)}) DO UPDATE SET " + ", ".join(
            f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in counters
        )
        head = f"INSERT INTO {table} ({', '.join(quote(c) for c in key + counters)}) "
        return head, tail, "(" + ", ".join(["%s"] * (len(key) + len(counters))) + ")"

    rollups_head, rollups_tail, rollup_placeholder = upsert(rollups, _ROLLUP_KEY, ROLLUP_COUNTERS)
    org_head, org_tail, org_placeholder = upsert(org_rollups, _ORG_ROLLUP_KEY, _ORG_ROLLUP_COUNTERS)
    property_head, property_tail, property_placeholder = upsert(
        property_rollups, _PROPERTY_ROLLUP_KEY, ROLLUP_COUNTERS
    )
    utc_day = "(\"timestamp\" AT TIME ZONE 'UTC')::date"
    stored = f'FROM {_INCOMING} WHERE "request_id" = ANY(%s::text[]) '
    return {
        "org_rollups_from_incoming": (
            f'{org_head}SELECT "organization_id", {utc_day}, '
            f'"provider" COLLATE "C", "model" COLLATE "C", {SQL_COUNTERS}, {SQL_LATENCY_HISTOGRAM} '
            f"{stored}GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4{org_tail}"
        ),
        # One row per (request, property) from the staged JSON (a non-object adds none), the
        # way PropertyDailyRollup defines names and values.
        "property_rollups_from_incoming": (
            f'{property_head}SELECT "organization_id", {utc_day}, '  # noqa: S608
            f'"property"."key" COLLATE "C", '
            f'left("property"."value", {PROPERTY_VALUE_MAX_LENGTH}) COLLATE "C", {SQL_COUNTERS} '
            f"FROM {_INCOMING} CROSS JOIN LATERAL jsonb_each_text(CASE WHEN "
            "jsonb_typeof(\"properties\") = 'object' THEN \"properties\" ELSE '{}'::jsonb END) "
            'AS "property"("key", "value") WHERE "request_id" = ANY(%s::text[]) '
            f'AND "property"."value" IS NOT NULL '
            f'AND length("property"."key") <= {PROPERTY_NAME_MAX_LENGTH} '
            f"GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4{property_tail}"
        ),
        "org_rollups_values": org_head + "VALUES ",
        "org_rollups_tail": org_tail,
        "org_rollup_placeholder": org_placeholder,
        "property_rollups_values": property_head + "VALUES ",
        "property_rollups_tail": property_tail,
        "property_rollup_placeholder": property_placeholder,
        "incoming_create": (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_INCOMING} ({definitions}, "
            '"customer_external" text) ON COMMIT DELETE ROWS'
        ),
        "incoming_copy": f'COPY {_INCOMING} ({columns}, "customer_external") FROM STDIN',
        "incoming_clear": f"DELETE FROM {_INCOMING}",  # noqa: S608 - names from the models
        "events_from_incoming": (
            f"INSERT INTO {events} ({columns}) "  # noqa: S608
            f'SELECT {columns} FROM {_INCOMING} ORDER BY "request_id" COLLATE "C" '
            'ON CONFLICT ("request_id") DO NOTHING RETURNING "request_id"'
        ),
        "rollups_from_incoming": (
            f'{rollups_head}SELECT "organization_id", {utc_day}, "customer_external" COLLATE "C", '
            f'"provider" COLLATE "C", "model" COLLATE "C", {SQL_COUNTERS} '
            f"{stored}GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5{rollups_tail}"
        ),
        "events_values": f"INSERT INTO {events} ({columns}) VALUES ",  # noqa: S608
        "events_values_tail": ' ON CONFLICT ("request_id") DO NOTHING RETURNING "request_id"',
        "event_placeholder": "(" + ", ".join(["%s"] * len(EVENT_COLUMNS)) + ")",
        "rollups_values": rollups_head + "VALUES ",
        "rollups_tail": rollups_tail,
        "rollup_placeholder": rollup_placeholder,
        "refusals_values": (
            f'INSERT INTO {refusals} ("organization_id", "day", "status", "code", "count") '  # noqa: S608
            "VALUES "
        ),
        "refusals_tail": (
            ' ON CONFLICT ("organization_id", "day", "status", "code") DO UPDATE SET '
            f'"count" = {refusals}."count" + excluded."count"'
        ),
    }


def _incoming_type(field) -> str:
    """The staging column's type: the event column's type, without its checks."""
    return field.db_type(connection)


def _insert_events_values(rows: list[list]) -> list[str]:
    """Multi-row INSERT … VALUES … ON CONFLICT DO NOTHING RETURNING (SQLite ≥ 3.35), as many
    rows a statement as the database takes parameters."""
    sql = _statements()
    per_statement = max(1, _max_query_params() // len(EVENT_COLUMNS))
    inserted: list[str] = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            cursor.execute(
                sql["events_values"]
                + ", ".join([sql["event_placeholder"]] * len(chunk))
                + sql["events_values_tail"],
                [value for row in chunk for value in row],
            )
            inserted.extend(request_id for (request_id,) in cursor.fetchall())
    return inserted


def _max_query_params() -> int:
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        try:
            return connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except AttributeError:  # pragma: no cover - Python < 3.11
            return connection.features.max_query_params
    return connection.features.max_query_params or 65535


def _rollups_add(prepared: _Prepared, inserted: set[str]) -> None:
    """SQLite: sum the newly stored rows per rollup key here and add the sums with one upsert per
    rollup table, with ``metering.counters``' Python rendering. (PostgreSQL sums in the database:
    ``rollups_from_incoming`` and the statements after it, with its SQL rendering.)"""
    index = {name: EVENT_COLUMNS.index(name) for name in EVENT_COLUMNS}
    i_request, i_org = index["request_id"], index["organization_id"]
    i_provider, i_model = index["provider"], index["model"]
    fields = [index[name] for name in COUNTED_FIELDS]
    by_customer: dict[tuple, list] = {}
    by_model: dict[tuple, list] = {}
    by_property: dict[tuple, list] = {}
    for row, customer, day, properties in zip(
        prepared.rows, prepared.customers, prepared.days, prepared.properties, strict=True
    ):
        if row[i_request] not in inserted:
            continue
        counted = counters_of(*(row[position] for position in fields))
        org, provider, model = row[i_org], row[i_provider], row[i_model]
        counters_add(by_customer, (org, day, customer, provider, model), counted)
        counters_add(by_model, (org, day, provider, model), counted, histogram=True)
        for name, value in property_pairs(properties):
            counters_add(by_property, (org, day, name, value), counted)
    _rollups_upsert(sorted(by_customer.items()))
    _rollups_upsert(sorted(by_model.items()), table="org_rollup")
    _rollups_upsert(sorted(by_property.items()), table="property_rollup")


def property_pairs(properties) -> list[tuple[str, str]]:
    """(name, value) pairs a request adds to the property rollups, as ``PropertyDailyRollup``
    defines them (the PostgreSQL writer reads them with ``jsonb_each_text``)."""
    if type(properties) is not dict or not properties:
        return []
    pairs = []
    for name, value in islice(properties.items(), MAX_PROPERTIES):
        if value is None or len(name) > PROPERTY_NAME_MAX_LENGTH:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        pairs.append((name, text[:PROPERTY_VALUE_MAX_LENGTH]))
    return pairs


_UPSERTS = {
    "rollup": ("rollups_values", "rollups_tail", "rollup_placeholder"),
    "org_rollup": ("org_rollups_values", "org_rollups_tail", "org_rollup_placeholder"),
    "property_rollup": (
        "property_rollups_values",
        "property_rollups_tail",
        "property_rollup_placeholder",
    ),
}


def _rollups_upsert(rows: list[tuple[tuple, list]], table: str = "rollup") -> None:
    """One multi-row ``INSERT … VALUES … ON CONFLICT (key) DO UPDATE SET c = c + excluded.c``
    (as many rows a statement as SQLite takes parameters), in key order."""
    if not rows:
        return
    sql = _statements()
    head, tail, placeholder = (sql[name] for name in _UPSERTS[table])
    width = len(rows[0][0]) + len(rows[0][1])
    with connection.cursor() as cursor:
        per_statement = max(1, _max_query_params() // width)
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            params = []
            for (organization_id, day, *key), total in chunk:
                params += [organization_id, day.isoformat(), *key, *total]
            cursor.execute(head + ", ".join([placeholder] * len(chunk)) + tail, params)


def _lock_rollups_shared(organization_ids: Iterable[int]) -> None:
    """Writers share a per-organization lock that a rollup rebuild takes exclusively (see
    ``rollups_rebuild_day``). Writers never wait for each other on it. SQLite needs none: its
    writers are serialised by the database lock."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock_shared(%s, (x %% 2147483647)::int) "
            "FROM unnest(%s::bigint[]) AS x ORDER BY x",
            [ROLLUP_LOCK_NAMESPACE, sorted(organization_ids)],
        )


def refusals_record(counts: list[dict]) -> int:
    """Add counts of requests refused before forwarding (DESIGN.md: counted per org for the
    dashboard). Each item: ``{"org_slug", "day": "YYYY-MM-DD", "status", "code", "count"}``.
    Items naming an unknown organization are dropped. Returns the number of refusals added.

    One upsert adds to the existing counts, so two processes reporting the same day both count.
    """
    slugs = {item["org_slug"] for item in counts}
    if not slugs:
        return 0
    organizations = dict(Organization.objects.filter(slug__in=slugs).values_list("slug", "pk"))
    sums: dict[tuple[int, date, int, str], int] = {}
    for item in counts:
        organization_id = organizations.get(item["org_slug"])
        if organization_id is None or item["count"] <= 0:
            continue
        key = (
            organization_id,
            date.fromisoformat(item["day"]),
            int(item["status"]),
            str(item["code"])[:64],
        )
        sums[key] = sums.get(key, 0) + int(item["count"])
    if not sums:
        return 0
    sql = _statements()
    sqlite = connection.vendor == "sqlite"
    params = []
    for (organization_id, day, status, code), count in sorted(sums.items()):
        params += [organization_id, day.isoformat() if sqlite else day, status, code, count]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            sql["refusals_values"]
            + ", ".join(["(%s, %s, %s, %s, %s)"] * len(sums))
            + sql["refusals_tail"],
            params,
        )
    return sum(sums.values())
