"""Batches Costr follows: how one starts being tracked.

The proxy cannot meter a batch's items when it forwards the request that creates the batch:
they run at the provider later, for up to a day, and their results may be downloaded through
Costr many times or never. So the record of a successful creation carries the batch's id
(``contract.BatchCreated``), and the usage writer, in the transaction that stores that record's
event, starts tracking the batch here (``tracked_batches_record``). From then on
``apps.usage.batch_polling`` polls the provider with the organization's own key until the batch
ends, reads its results and stores one event per item, whatever the client does.

This module imports nothing of the writer (``metering.events`` imports it), so the imports run
one way: events -> batches, batch_polling -> events and batches.
"""

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from apps.usage.metering.contract import MAX_BATCH_ID_LENGTH, UsageRecord
from apps.usage.models import TrackedBatch

# A new batch is first looked at this long after its creation (a batch takes minutes at least).
FIRST_CHECK_AFTER = timedelta(minutes=1)


def tracked_batches_record(records: Iterable[UsageRecord], *, tokens: set[int]) -> None:
    """Start tracking the batches whose creation ``records`` report.

    Called by the usage writer inside the transaction that stores the records' events, for the
    records of organizations that exist; ``tokens`` are the token ids that still exist (another
    is stored as null, as the event's is). A batch already tracked (a replayed record) is left
    as it is. A hand-over that does not name a batch id in the contract's bounds is ignored: the
    proxy never sends one, and a record from anywhere else must not make its batch fail.
    """
    rows = []
    for record in records:
        batch = record.get("batch")
        if not isinstance(batch, dict):
            continue
        batch_id = batch.get("id")
        if not isinstance(batch_id, str) or not 0 < len(batch_id) <= MAX_BATCH_ID_LENGTH:
            continue
        created_at = _moment(record.get("timestamp"))
        token_id = record.get("token_id")
        rows.append(
            TrackedBatch(
                organization_id=record["organization_id"],
                provider=record.get("provider") or "",
                batch_id=batch_id,
                key_secret_id=_uuid_or_none(batch.get("key_secret_id")),
                customer=(record.get("customer") or "")[:255],
                properties=record.get("properties") or {},
                token_id=token_id if token_id in tokens else None,
                created_at=created_at,
                next_check_at=created_at + FIRST_CHECK_AFTER,
            )
        )
    if rows:
        TrackedBatch.objects.bulk_create(rows, ignore_conflicts=True)


def _moment(value) -> datetime:
    """A record's timestamp as an aware datetime (ISO 8601 on the wire; naive is UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, datetime):
        return datetime.now(UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _uuid_or_none(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
