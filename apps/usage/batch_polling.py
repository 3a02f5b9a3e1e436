"""Following a tracked batch to its end, and metering its items: every item once, at batch
prices, attributed to the customer and properties of the request that created the batch.

``tracked_batch_poll`` is one look at one batch (the task ``usage.batch_poll``; the sweep
``usage.batches_poll_due`` queues every batch that is due, every minute):

1. It takes the batch by moving ``next_check_at`` past a lease (``POLL_LEASE``), so no second
   worker looks at it meanwhile; a worker that dies mid-poll leaves it due again once the lease
   has run out.
2. It asks the provider, with the organization's own key (the one the batch was created with,
   else the current default; decrypted in memory here and never logged), whether the batch has
   ended (``batch_results``).
3. Not ended, or the provider could not be reached or answered an error: the batch is looked at
   again later, after a wait that doubles from ``BACKOFF_START`` to ``BACKOFF_MAX``. Nothing is
   lost: the state is in the database, and only ``TRACKING_LIMIT`` after its creation is a batch
   given up (``abandoned``, with its last error).
4. Ended: each results file is read as a stream, line by line (a file can be hundreds of MB;
   one line at a time is held, at most ``MAX_LINE_BYTES`` of it), and the items are stored in
   groups of ``WRITE_GROUP`` through the usage writer, each with a request id derived from
   (organization, provider, batch id, custom_id): a second read, after a worker died half way or
   for any other reason, stores nothing twice (``ON CONFLICT (request_id)``). Then the batch is
   ``metered`` with the number of items read.

Costr reads the results files only for each item's ``custom_id``, status, model and usage
object; nothing of the content is kept (the security page says so).
"""

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
from django.conf import settings
from django.db.models import F
from django.views.decorators.debug import sensitive_variables

from apps.keys.keyring import open_secret
from apps.keys.models import ProviderKey
from apps.usage.batch_results import (
    BatchState,
    Item,
    anthropic_batch_state,
    anthropic_item,
    custom_id_from_head,
    openai_batch_state,
    openai_item,
)
from apps.usage.metering.contract import BATCH_TIER, MAX_CUSTOMER_LENGTH, UsageRecord, clean_text
from apps.usage.metering.events import usage_events_write
from apps.usage.metering.provider_usage import token_counts
from apps.usage.models import TrackedBatch

logger = logging.getLogger("costr.usage.batches")

BACKOFF_START = timedelta(minutes=1)
BACKOFF_MAX = timedelta(minutes=30)
# Providers end a batch within 24 hours of its creation (expired if need be); past this a batch
# whose end was never seen (a provider key deleted, an account closed) is given up.
TRACKING_LIMIT = timedelta(days=3)
# How long a poll holds its batch: longer than the task's time limit (``POLL_TIME_LIMIT``).
POLL_TIME_LIMIT_SECONDS = 30 * 60
POLL_LEASE = timedelta(seconds=POLL_TIME_LIMIT_SECONDS + 300)
# The sweep queues at most this many batches a minute.
MAX_DUE_PER_SWEEP = 500
# Items stored per call of the usage writer.
WRITE_GROUP = 1000
# The longest results line parsed; past it the item is stored with its usage unknown (its
# custom_id read from the line's first bytes), never held whole.
MAX_LINE_BYTES = 32 * 1024 * 1024
_LINE_HEAD_BYTES = 64 * 1024
_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=10.0)
_ANTHROPIC_VERSION = "2023-06-01"
_LATENCY_MAX_MS = 2**31 - 1


class ProviderUnavailable(Exception):
    """The provider could not be reached, or answered with an error: try again later."""


def tracked_batches_due(*, now: datetime | None = None) -> list[int]:
    """Ids of the tracked batches due for a look, oldest due first."""
    now = now or datetime.now(UTC)
    due = (
        TrackedBatch.objects.unscoped(reason="the sweep looks for every org's due batches")
        .filter(status=TrackedBatch.Status.TRACKING, next_check_at__lte=now)
        .order_by("next_check_at")
        .values_list("pk", flat=True)[:MAX_DUE_PER_SWEEP]
    )
    return list(due)


def tracked_batch_poll(*, tracked_batch_id: int, now: datetime | None = None) -> str:
    """One look at one tracked batch (see the module docstring); returns what became of it:
    ``not_due`` (another poll has it, or it is done), ``waiting``, ``retry``, ``metered`` or
    ``abandoned``."""
    now = now or datetime.now(UTC)
    batches = TrackedBatch.objects.unscoped(reason="a task names its batch by id")
    taken = batches.filter(
        pk=tracked_batch_id, status=TrackedBatch.Status.TRACKING, next_check_at__lte=now
    ).update(next_check_at=now + POLL_LEASE)
    if not taken:
        return "not_due"
    tracked = batches.get(pk=tracked_batch_id)
    try:
        with _ProviderClient(tracked) as provider:
            state = provider.state()
            if not state.ended:
                return _later(tracked, now, "")
            items = _meter(provider, tracked, state)
    except ProviderUnavailable as error:
        logger.warning(
            "batch %s of organization %s: %s", tracked.pk, tracked.organization_id, error
        )
        return _later(tracked, now, str(error))
    batches.filter(pk=tracked.pk).update(
        status=TrackedBatch.Status.METERED,
        items_metered=items,
        last_error="",
        ended_at=datetime.now(UTC),
    )
    return "metered"


def _later(tracked: TrackedBatch, now: datetime, error: str) -> str:
    """Look again after the back-off, or give up past the tracking limit."""
    batches = TrackedBatch.objects.unscoped(reason="a task names its batch by id")
    if now - tracked.created_at > TRACKING_LIMIT:
        batches.filter(pk=tracked.pk).update(
            status=TrackedBatch.Status.ABANDONED,
            last_error=(error or "the batch had not ended")[:255],
            ended_at=now,
        )
        return "abandoned"
    wait = min(BACKOFF_START * 2 ** min(tracked.attempts, 16), BACKOFF_MAX)
    batches.filter(pk=tracked.pk).update(
        attempts=F("attempts") + 1, next_check_at=now + wait, last_error=error[:255]
    )
    return "retry" if error else "waiting"


def _meter(provider: "_ProviderClient", tracked: TrackedBatch, state: BatchState) -> int:
    """Store one event per item of the batch's results; returns how many items were read."""
    ended_at = state.ended_at or datetime.now(UTC)
    base = _record_base(tracked, state, ended_at)
    parse = openai_item if tracked.provider == "openai" else anthropic_item
    read = 0
    group: list[UsageRecord] = []
    for path in state.results:
        for line, whole in provider.lines(path):
            item = _item(line, whole, parse)
            if item is None:
                continue
            group.append(_record(base, tracked, item, line))
            read += 1
            if len(group) >= WRITE_GROUP:
                usage_events_write(group)
                group = []
    if group:
        usage_events_write(group)
    return read


def _item(line: bytes, whole: bool, parse) -> Item | None:
    """The item a results line describes. A line that is not one (too long, not JSON) is still
    an item whose usage is unknown, named by its custom_id when that can be read."""
    if whole:
        try:
            document = json.loads(line)
        except (ValueError, RecursionError):
            document = None
        item = parse(document)
        if item is not None:
            return item
    return Item(custom_id=custom_id_from_head(line[:_LINE_HEAD_BYTES]), status=200, usage=None)


def _record_base(tracked: TrackedBatch, state: BatchState, ended_at: datetime) -> dict:
    latency = (ended_at - tracked.created_at).total_seconds() * 1000
    return {
        "organization_id": tracked.organization_id,
        "token_id": tracked.token_id,
        "timestamp": ended_at,
        "provider": tracked.provider,
        "endpoint": state.endpoint,
        "requested_model": "",
        "customer": tracked.customer[:MAX_CUSTOMER_LENGTH] or None,
        "properties": tracked.properties,
        "stream": False,
        "latency_ms": min(max(math.ceil(latency), 0), _LATENCY_MAX_MS),
        "ttfb_ms": None,
        "overhead_ms": None,
    }


def _record(base: dict, tracked: TrackedBatch, item: Item, line: bytes) -> UsageRecord:
    usage = item.usage
    return {
        **base,
        "request_id": item_request_id(tracked, item.custom_id, line),
        "model": clean_text(usage.model, 255) if usage is not None and usage.model else "",
        "status": item.status,
        "outcome": "ok" if item.status < 400 else "upstream_error",
        **token_counts(usage),
        "service_tier": BATCH_TIER,
        "raw_usage": usage.raw if usage else None,
    }


def item_request_id(tracked: TrackedBatch, custom_id: str, line: bytes) -> str:
    """The request id of one item's event: the same for every read of the same results. An item
    without a custom_id (which the providers require) is named by its line's bytes."""
    name = custom_id if custom_id else "line:" + hashlib.sha256(line).hexdigest()
    digest = hashlib.sha256(
        "\x00".join(
            (str(tracked.organization_id), tracked.provider, tracked.batch_id, name)
        ).encode("utf-8", "surrogatepass")
    ).hexdigest()
    return f"batch_{digest[:56]}"


class _ProviderClient:
    """The provider's batch API, with the organization's key, for one poll."""

    def __init__(self, tracked: TrackedBatch):
        self._tracked = tracked
        self._origin = getattr(settings, f"COSTR_UPSTREAM_{tracked.provider.upper()}").rstrip("/")
        self._client: httpx.Client | None = None

    @sensitive_variables("key", "headers")
    def __enter__(self) -> "_ProviderClient":
        key = _provider_key(self._tracked)
        if key is None:
            raise ProviderUnavailable(f"no {self._tracked.provider} key in Costr")
        if self._tracked.provider == "anthropic":
            headers = {"x-api-key": key, "anthropic-version": _ANTHROPIC_VERSION}
        else:
            headers = {"authorization": f"Bearer {key}"}
        self._client = httpx.Client(headers=headers, timeout=_TIMEOUT, follow_redirects=False)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def state(self) -> BatchState:
        tracked = self._tracked
        batch_id = quote(tracked.batch_id, safe="")
        if tracked.provider == "anthropic":
            document = self._get_json(f"v1/messages/batches/{batch_id}")
            state = anthropic_batch_state(document, batch_id)
        else:
            state = openai_batch_state(self._get_json(f"v1/batches/{batch_id}"))
        if state is None:
            raise ProviderUnavailable("the provider's answer is not a batch")
        return state

    def lines(self, path: str) -> Iterator[tuple[bytes, bool]]:
        """The results file's lines, streamed: (line, True), or (its first bytes, False) for a
        line over ``MAX_LINE_BYTES``."""
        try:
            with self._client.stream("GET", f"{self._origin}/{path}") as response:
                if response.status_code != 200:
                    raise ProviderUnavailable(f"the results file answered {response.status_code}")
                yield from _split_lines(response.iter_bytes())
        except httpx.HTTPError as error:
            failure = f"reading the results failed: {type(error).__name__}"
            raise ProviderUnavailable(failure) from None

    def _get_json(self, path: str):
        try:
            response = self._client.get(f"{self._origin}/{path}")
        except httpx.HTTPError as error:
            failure = f"the provider did not answer: {type(error).__name__}"
            raise ProviderUnavailable(failure) from None
        if response.status_code != 200:
            raise ProviderUnavailable(f"the provider answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise ProviderUnavailable("the provider's answer is not JSON") from None


def _split_lines(chunks: Iterator[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Lines of a byte stream; one over ``MAX_LINE_BYTES`` is cut to its head, the rest of it
    skipped."""
    pending = bytearray()
    oversized = False
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if oversized:
                yield bytes(pending), False
            else:
                pending += chunk[start:end]
                line = bytes(pending).strip()
                if line:
                    yield line, True
            pending.clear()
            oversized = False
            start = end + 1
        if not oversized:
            pending += chunk[start:]
            if len(pending) > MAX_LINE_BYTES:
                del pending[_LINE_HEAD_BYTES:]
                oversized = True
    if oversized:
        yield bytes(pending), False
    elif line := bytes(pending).strip():
        yield line, True


@sensitive_variables("key")
def _provider_key(tracked: TrackedBatch) -> str | None:
    """The plaintext of the key the batch was created with, else of the organization's default
    key for its provider; None when the organization has neither any more."""
    keys = ProviderKey.objects.for_org(tracked.organization_id).filter(provider=tracked.provider)
    key = None
    if tracked.key_secret_id is not None:
        key = keys.filter(secret_id=tracked.key_secret_id).first()
    if key is None:
        key = keys.filter(is_default=True).first()
    if key is None:
        return None
    return open_secret(ciphertext=bytes(key.ciphertext), context=key.vault_context())
