"""Storing batches of usage: the shared core of the embedded sink thread and ``run_usage_writer``.

Two kinds of failure are told apart, because they need opposite answers:

- the database is unreachable (``OperationalError``, ``InterfaceError``: refused, reset, locked):
  nothing is wrong with the batch; keep it and retry with capped backoff until the database is
  back, however long that takes;
- a record cannot be stored at all (any other exception: a missing field, a bad value, a value
  the database refuses even as an ``OperationalError``, e.g. over a size limit, while it
  answers): retrying cannot help and must not hold up the records behind it. The batch is split
  in halves until the bad record stands alone; it goes to the dead letters (the Redis mode's
  ``<stream>:dead-letter`` stream, or the embedded mode's ``dead-letter.jsonl`` in the spool
  directory), the log says so without its content, and the rest is stored.

Before any of that, every string of a record (model, customer, property names and values, raw
usage, …) is made valid UTF-8 without NUL (``stream.clean_value``): the proxy cleans what it
hands over, but spool files, stream entries and callers from before that, or from elsewhere, may
not have, and a hostile string is stored cleaned rather than set aside.
"""

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import redis
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections

from apps.usage.metering import stream as usage_stream
from apps.usage.metering.contract import UsageRecord
from apps.usage.metering.events import refusals_record, usage_events_write
from costr.db import run_outside_request

logger = logging.getLogger("costr.usage.writer")

UNREACHABLE = (OperationalError, InterfaceError)
FIRST_BACKOFF_SECONDS = 0.1

DeadLetter = Callable[[str, list[dict], BaseException], None]


# SQLSTATE classes of a database that answers and refuses what it was sent: data exception,
# integrity constraint, syntax or access rule, program limit exceeded (PostgreSQL reports the last
# as an OperationalError, e.g. an index row over its size).
_REFUSED_SQLSTATE_CLASSES = ("22", "23", "42", "54")
# SQLSTATEs of a database busy or going away, however it reports them: worth the batch's retry.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "40", "53", "55P03", "57")


def store_events(
    records: list[UsageRecord], *, dead_letter: DeadLetter, cleaned: bool = False
) -> int:
    """Store ``records``; return how many were new. Raises only UNREACHABLE.

    Every string is made storable first (``clean_record``), unless the caller says the records
    are ``cleaned`` already: those read by ``stream.unpack`` or ``stream.decode_entry`` are, by
    construction (the embedded sink's, the spool's, the stream's), and then cleaning again would
    only cost the writer a walk of every record.

    Runs outside any request (the sink thread, ``run_usage_writer``), so through
    ``run_outside_request``; idempotent, since an event is unique by its request id: a batch
    whose connection died, even after its commit, may simply be stored again."""
    if not cleaned:
        records = [clean_record(record) for record in records]
    return run_outside_request(
        lambda: _isolating(usage_events_write, usage_stream.KIND_EVENTS, records, dead_letter),
        idempotent=True,
    )


def clean_record(record):
    """``record`` with its strings made storable (valid UTF-8, no NUL), unchanged if they are.
    The cost is a scan per field, paid by the writer, never by the proxy."""
    if not isinstance(record, dict):
        return record  # not a record at all: set aside by the write, alone
    cleaned = None
    for name, value in record.items():
        if isinstance(value, str):
            if value.isascii() and "\x00" not in value:
                continue
        elif not isinstance(value, dict | list):
            continue
        if usage_stream.is_clean(value):
            continue
        if cleaned is None:
            cleaned = dict(record)
        cleaned[name] = usage_stream.clean_value(value)
    return record if cleaned is None else cleaned


def database_unreachable(error: BaseException) -> bool:
    """True when ``error`` means the database could not take any batch now (down, restarting,
    locked, a deadlock), so the batch is kept and retried; False when the database answered and
    refused these records, so the bad one is found and set aside, never retried forever."""
    if not isinstance(error, UNREACHABLE):
        return False
    sqlstate = getattr(error.__cause__, "sqlstate", None) or ""
    if sqlstate.startswith(_REFUSED_SQLSTATE_CLASSES):
        return False
    if sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
        return True
    message = str(error).lower()
    if "locked" in message or "busy" in message:  # SQLite: another writer holds the file
        return True
    # Anything else: the database's answer to a probe tells an outage from a refusal.
    return not _database_answers()


def _database_answers() -> bool:
    from django.db import connection

    forget_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        forget_connection()
        return False


def store_refusals(counts: list[dict], *, dead_letter: DeadLetter) -> int:
    """Add refusal counts; return how many refusals were added. Raises only UNREACHABLE.

    Not idempotent (counts are added), so ``run_outside_request`` retries it only when its
    connection failed before anything reached the database."""
    return run_outside_request(
        lambda: _isolating(refusals_record, usage_stream.KIND_REFUSALS, counts, dead_letter),
        idempotent=False,
    )


def _isolating(write, kind: str, items: list[dict], dead_letter: DeadLetter) -> int:
    """``write(items)``; if it fails for a reason other than the database being unreachable,
    split the items in halves until each bad one stands alone and goes to ``dead_letter``. A
    failed call wrote nothing (one transaction), so retrying the halves counts nothing twice."""
    if not items:
        return 0
    try:
        return write(items) or 0
    except Exception as error:
        if database_unreachable(error):
            raise
        if len(items) == 1:
            dead_letter(kind, items, error)
            return 0
        middle = len(items) // 2
        return _isolating(write, kind, items[:middle], dead_letter) + _isolating(
            write, kind, items[middle:], dead_letter
        )


def backoff_delays(cap: float):
    """0.1, 0.2, 0.4, … seconds, never more than ``cap``."""
    delay = FIRST_BACKOFF_SECONDS
    while True:
        yield min(delay, cap)
        delay *= 2


def forget_connection() -> None:
    """Drop this thread's database connection after a failure, so the next try opens a new one."""
    from django.db import connection

    with contextlib.suppress(DatabaseError):
        connection.close()


def describe(error: BaseException) -> str:
    """The error as text to keep beside a dead letter: cleaned, as it may quote a hostile value."""
    text = f"{type(error).__name__}: {error}"
    return usage_stream.clean_value(text[:2000])


class StreamWriter:
    """Reads the usage stream as one consumer of the writers' group and stores what it reads.

    An entry is acknowledged and deleted (one MULTI) only after the transaction that stored it
    committed, so a writer that dies at any point leaves its entries pending in the group; a live
    writer claims entries that stayed pending longer than ``claim_idle`` (XAUTOCLAIM) and stores
    them, at most a duplicate write, which the unique request id absorbs. While the database is
    down the writer keeps its batch, retries, and renews its claim on it (XCLAIM JUSTID) so that
    no other writer takes it over meanwhile.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        stream: str,
        group: str = usage_stream.GROUP,
        consumer: str | None = None,
        count: int = 10,
        block_ms: int = 1000,
        claim_idle: float = 60.0,
        max_backoff: float = 10.0,
        stop_grace: float = 20.0,
        spool_dir: str | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.count = count
        self.block_ms = block_ms
        self.claim_idle = claim_idle
        self.max_backoff = max_backoff
        self.stop_grace = stop_grace
        self.spool_dir = spool_dir
        self.stopping = threading.Event()
        self._stop_deadline: float | None = None
        self._next_claim = 0.0
        self._next_orphan_scan = 0.0
        # Read this consumer's own pending entries first: at start (a restart under the same
        # name) and after a Redis error that may have cut an acknowledgement short.
        self._own_pending = True
        self._group_ready = False
        self.stored = 0

    # Signals -------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT: finish the batch in hand, acknowledge it, return from run()."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())

    def stop(self) -> None:
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.stop_grace
        self.stopping.set()

    # The loop ------------------------------------------------------------------------------

    def run(self, *, until_empty: bool = False) -> None:
        """Store entries until stopped (or, with ``until_empty``, until the group has nothing
        new and nothing pending)."""
        delays = None
        while not self.stopping.is_set():
            try:
                self._ensure_group()
                self._replay_orphan_spools()
                if self._own_pending:
                    entries = self._read("0")
                    self._own_pending = bool(entries)
                else:
                    entries = self._claim_stale()
                if not entries:
                    entries = self._read(">", block=not until_empty)
                if entries:
                    self.write(entries)
                elif until_empty and self._pending_count() == 0:
                    return
                delays = None
            except redis.RedisError as error:
                # Redis restarted, or the stream was deleted: create the group again if needed.
                self._own_pending, self._group_ready = True, False
                delays = delays or backoff_delays(self.max_backoff)
                delay = next(delays)
                logger.warning(
                    "usage stream unavailable (%s), retrying in %.1fs", describe(error), delay
                )
                self.stopping.wait(delay)

    def write(self, entries: list[tuple[str, dict]]) -> None:
        """Store a batch read from the stream, then acknowledge and delete its entries."""
        ids = [entry_id for entry_id, _ in entries]
        records: list[dict] = []
        counts: list[dict] = []
        for entry_id, fields in entries:
            try:
                kind, items, rejected = usage_stream.decode_entry(fields)
            except ValueError as error:
                self._dead_letter("entry", [_printable(fields)], error, source=entry_id)
                continue
            for item, reason in rejected:  # each alone: its neighbours are stored
                self._dead_letter(kind, [item], ValueError(reason), source=entry_id)
            (records if kind == usage_stream.KIND_EVENTS else counts).extend(items)
        if not self._store(ids, records, counts):
            return  # stopping with the database still down: the entries stay pending
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()

    def _store(self, ids: list[str], records: list[dict], counts: list[dict]) -> bool:
        delays = backoff_delays(self.max_backoff)
        while True:
            try:
                close_old_connections()
                # Read by decode_entry: clean already.
                self.stored += store_events(records, dead_letter=self._dead_letter, cleaned=True)
                store_refusals(counts, dead_letter=self._dead_letter)
                return True
            except UNREACHABLE as error:
                forget_connection()
                if self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
                    logger.warning(
                        "stopping with %d usage entries unwritten (database unreachable); "
                        "they stay pending for the next writer",
                        len(ids),
                    )
                    return False
                delay = next(delays)
                logger.warning(
                    "database unreachable (%s): %d usage records kept, retrying in %.1fs",
                    describe(error),
                    len(records),
                    delay,
                )
                time.sleep(delay)
                self._renew_claim(ids)

    # Redis details -------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From id 0: entries added before the first writer ever ran are read too.
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    def _read(self, start: str, *, block: bool = True) -> list[tuple[str, dict]]:
        reply = self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: start},
            count=self.count,
            block=self.block_ms if block and start == ">" else None,
        )
        entries = []
        for _, stream_entries in reply or []:
            entries.extend((_text(entry_id), fields) for entry_id, fields in stream_entries)
        # A pending entry deleted meanwhile comes back with no fields: acknowledge it, no more.
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            self.client.xack(self.stream, self.group, *gone)
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    def _claim_stale(self) -> list[tuple[str, dict]]:
        """Entries another consumer read but did not acknowledge within ``claim_idle``."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + max(self.claim_idle / 2, 0.05)
        reply = self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=int(self.claim_idle * 1000),
            start_id="0-0",
            count=self.count,
        )
        claimed, deleted = reply[1], reply[2] if len(reply) > 2 else []
        if deleted:
            self.client.xack(self.stream, self.group, *deleted)
        entries = [(_text(entry_id), fields) for entry_id, fields in claimed if fields]
        if entries:
            logger.warning("claimed %d usage entries left pending by another writer", len(entries))
        else:
            self._forget_idle_consumers()
        return entries

    def _forget_idle_consumers(self) -> None:
        """Remove consumers (dead writers) with nothing pending, so the group does not collect
        one name per writer restart."""
        for consumer in self.client.xinfo_consumers(self.stream, self.group):
            name = _text(consumer["name"])
            idle_ms = consumer.get("idle", 0)
            if (
                name != self.consumer
                and consumer.get("pending", 0) == 0
                and idle_ms > max(self.claim_idle * 10, 3600) * 1000
            ):
                self.client.xgroup_delconsumer(self.stream, self.group, name)

    def _renew_claim(self, ids: list[str]) -> None:
        """Reset the idle time of the entries in hand, so no other writer claims them while this
        one waits for the database."""
        # Failing that, another writer may claim them; the unique request id absorbs that.
        with contextlib.suppress(redis.RedisError):
            self.client.xclaim(self.stream, self.group, self.consumer, 0, ids, justid=True)

    def _pending_count(self) -> int:
        return self.client.xpending(self.stream, self.group)["pending"]

    def _replay_orphan_spools(self) -> None:
        now = time.monotonic()
        if not self.spool_dir or now < self._next_orphan_scan:
            return
        self._next_orphan_scan = now + usage_stream.ORPHAN_SCAN_SECONDS
        usage_stream.replay_orphans(self.client, self.stream, self.spool_dir)

    def _dead_letter(
        self, kind: str, items: list[dict], error: BaseException, *, source: str = ""
    ) -> None:
        # The log names what happened, never the content: that, and the full reason, are in the
        # dead-letter stream, for someone who may read it.
        logger.error(
            "%d usage %s set aside to %s (%s, entry %s)",
            len(items),
            kind,
            usage_stream.dead_letter_stream(self.stream),
            type(error).__name__,
            source or "-",
        )
        self.client.xadd(
            usage_stream.dead_letter_stream(self.stream),
            {
                "kind": kind,
                "data": json.dumps(items, default=str),
                "error": describe(error),
                "source": source,
                "consumer": self.consumer,
            },
        )


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _printable(fields: dict) -> dict:
    return {_text(k): _text(v) for k, v in fields.items()}
