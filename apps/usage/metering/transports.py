"""How the sink's thread delivers what was handed over, by the transport the settings name:

- ``DatabaseTransport`` (embedded mode, ``COSTR_USAGE_REDIS_URL`` empty): the thread stores the
  batch itself (``writer``), and what was spooled meanwhile once it has caught up;
- ``RedisTransport``: one XADD per batch to ``COSTR_USAGE_STREAM`` for ``run_usage_writer``, or
  the spool while Redis does not answer (``stream.StreamProducer``).

Everything here runs on the sink's thread, never on a caller's. ``deliver`` raises when the
batch was not delivered; the sink then retries it with backoff, or spools it.
"""

import json
import logging
import time
from pathlib import Path
from typing import Protocol

from django.conf import settings

from apps.usage.metering.spool import Spool
from apps.usage.metering.stream import (
    KIND_EVENTS,
    KIND_REFUSALS,
    ORPHAN_SCAN_SECONDS,
    Packed,
    StreamProducer,
    decode_entry,
    encode,
    encode_packed,
    unpack,
)

logger = logging.getLogger("costr.usage.sink")

DEAD_LETTER_FILE = "dead-letter.jsonl"
# A spool replay that could not store its records is tried again this much later.
REPLAY_RETRY_SECONDS = 1.0


class Transport(Protocol):
    # False while the transport is known not to deliver (Redis not answering): the sink's loops
    # then hand their batches to the thread instead of sending them themselves.
    healthy: bool

    def deliver(self, records: list[Packed], counts: list[dict], backlog: int) -> None:
        """Deliver one batch of records and refusal counts, or raise. ``backlog``: records
        still queued behind it."""

    def idle(self, backlog: int) -> None:
        """Nothing to deliver: catch up with the spool when there is time."""

    def spool_entries(self, entries: list[dict[str, str]]) -> None:
        """Keep stream entries in the spool (a flush while delivery fails)."""

    def spooled_elsewhere(self) -> None:
        """The sink's overflow thread spooled records: deliver them once caught up."""

    def close(self) -> None: ...


def transport_for(key: tuple) -> Transport:
    """The transport of ``settings_key()``."""
    if key[0] == "embedded":
        return DatabaseTransport(*key[1:])
    return RedisTransport(*key[1:])


def settings_key() -> tuple:
    """What names the transport now (tests switch between them)."""
    url = settings.COSTR_USAGE_REDIS_URL
    spool = (str(settings.COSTR_USAGE_SPOOL_DIR), settings.COSTR_USAGE_SPOOL_SEGMENT_BYTES)
    return ("embedded", *spool) if not url else ("redis", url, settings.COSTR_USAGE_STREAM, *spool)


class DatabaseTransport:
    """Embedded mode: the sink's thread stores the batch itself, and what was spooled past the
    queue's bound (by this process, or by one that died) once it has caught up."""

    healthy = True

    def __init__(self, spool_dir: str, segment_bytes: int) -> None:
        self.spool = Spool(spool_dir, segment_bytes=segment_bytes)
        self.dead_letters = Path(spool_dir) / DEAD_LETTER_FILE
        self._next_replay = 0.0  # at once: a process that died may have left a spool

    def deliver(self, records: list[Packed], counts: list[dict], backlog: int) -> None:
        from django.db import close_old_connections, connection

        from apps.usage.metering.writer import (
            UNREACHABLE,
            forget_connection,
            store_events,
            store_refusals,
        )

        items = []
        for record in records:
            try:
                items.append(unpack(record))
            except ValueError as error:  # one unreadable record, alone
                self.dead_letter(
                    KIND_EVENTS, [{"keys": record[0], "values": repr(record[1])}], error
                )
        try:
            close_old_connections()
            # Read by unpack: clean already (stream.unpack says why).
            store_events(items, dead_letter=self.dead_letter, cleaned=True)
            store_refusals(counts, dead_letter=self.dead_letter)
        except UNREACHABLE:
            forget_connection()
            raise
        self.idle(backlog)
        if not backlog:
            connection.close()  # nothing waiting: do not hold a connection while idle

    def spooled_elsewhere(self) -> None:
        self.spool.pending = True
        self._next_replay = 0.0

    def spool_entries(self, entries: list[dict[str, str]]) -> None:
        self.spool.append(entries)
        self._next_replay = time.monotonic() + REPLAY_RETRY_SECONDS

    def idle(self, backlog: int) -> None:
        """Store what the spool holds, once the queue is well under its bound (caught up) and the
        last try is not too recent (the database may still be down)."""
        now = time.monotonic()
        if now < self._next_replay or backlog > settings.COSTR_USAGE_QUEUE_MAX_RECORDS // 2:
            return
        self._next_replay = now + (
            REPLAY_RETRY_SECONDS if self.spool.pending else ORPHAN_SCAN_SECONDS
        )
        from apps.usage.metering.writer import UNREACHABLE, forget_connection

        try:
            self.spool.replay(self._store_entries)
        except UNREACHABLE as error:
            forget_connection()
            self.spool.pending = True
            logger.warning("spooled usage not stored yet (%s: %s)", type(error).__name__, error)
            return
        except Exception:  # the spool unreadable: the batch just stored must not be retried
            self.spool.pending = True
            logger.exception("spooled usage not stored yet")
            return
        if not self.spool.pending:
            self._next_replay = now + ORPHAN_SCAN_SECONDS

    def _store_entries(self, entries: list[dict[str, str]]) -> None:
        """One chunk of a spool file: stored, or UNREACHABLE (the file stays for a later try;
        what it stored then comes again, once, by its request id)."""
        from apps.usage.metering.writer import store_events, store_refusals

        for entry in entries:
            try:
                kind, items, rejected = decode_entry(entry)
            except ValueError as error:
                self.dead_letter("entry", [entry], error)
                continue
            for item, reason in rejected:
                self.dead_letter(kind, [item], ValueError(reason))
            if kind == KIND_EVENTS:
                store_events(items, dead_letter=self.dead_letter, cleaned=True)  # decode_entry's
            else:
                store_refusals(items, dead_letter=self.dead_letter)

    def dead_letter(self, kind: str, items: list, error: BaseException) -> None:
        """Embedded mode has no dead-letter stream: a JSON-lines file beside the spool keeps what
        could not be stored, with the reason; the log says so without the content."""
        from apps.usage.metering.writer import describe

        logger.error(
            "%d usage %s could not be stored and were set aside to %s (%s)",
            len(items),
            kind,
            self.dead_letters,
            type(error).__name__,
        )
        line = json.dumps({"kind": kind, "error": describe(error), "data": items}, default=str)
        try:
            self.dead_letters.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.dead_letters, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError:
            logger.exception("dead-letter file %s not written", self.dead_letters)

    def close(self) -> None:
        self.spool.close()


class RedisTransport:
    """Redis mode: to the stream, or to the spool while Redis does not answer."""

    def __init__(self, url: str, stream: str, spool_dir: str, segment_bytes: int) -> None:
        self.producer = StreamProducer(
            url=url, stream=stream, spool_dir=spool_dir, segment_bytes=segment_bytes
        )

    @property
    def healthy(self) -> bool:
        return self.producer.healthy

    def deliver(self, records: list[Packed], counts: list[dict], backlog: int) -> None:
        entries = []
        if records:
            entries.append(encode_packed(KIND_EVENTS, records))
        if counts:
            entries.append(encode(KIND_REFUSALS, counts))
        self.producer.send(entries)

    def spooled_elsewhere(self) -> None:
        """Replayed into the stream once it answers."""
        self.producer.spool.pending = True

    def spool_entries(self, entries: list[dict[str, str]]) -> None:
        self.producer.spool.append(entries)

    def idle(self, backlog: int) -> None:
        self.producer.retry_pending()

    def close(self) -> None:
        self.producer.close()
