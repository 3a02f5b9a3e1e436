"""Where the proxy hands usage records and refusal counts. Returns at once and never raises.

``emit()`` and ``emit_refusal()`` only touch memory on the caller's thread: a put into an
in-process queue, a counter under a lock. No socket, file or database is touched there, so the
proxy's event loop never waits for metering, whatever state Redis or the database are in. A
record is a plain dict of primitives (JSON-able); ``emit()`` packs it to its JSON values at once
(``stream.pack``), so what waits in the queue is bytes and what crosses to the writer is already
encoded.

On an event loop (the proxy), records are gathered on that loop for LINGER_SECONDS (or up to
BATCH_SIZE) and then handed over as one batch. In the redis mode the loop appends that batch to
the stream itself, one XADD on an asyncio connection, awaited, never blocking the loop; only if
that fails, or a send is still in flight, does the batch go to the thread below. Measured with
``bench.sink_cost``, a background thread taking every record from the loop cost the proxy about
twice as much as this, though its own work was a fraction of it (docs/benchmarks.md).

One background thread per process ("usage-writer") takes what is handed to it: batches from
loops, records emitted outside any loop (in batches of up to BATCH_SIZE, lingering
LINGER_SECONDS for company) and refusal counts aggregated per (org, UTC day, status, code), and
delivers them by the transport the settings name:

- **embedded** (``COSTR_USAGE_REDIS_URL`` empty): stored in the database by this thread
  (``writer``), retried with capped backoff for as long as the database is down.
  Meanwhile records wait in memory, up to ``COSTR_USAGE_QUEUE_MAX_RECORDS``; past that (the
  database down or slower than the traffic) they go to the spool under ``COSTR_USAGE_SPOOL_DIR``
  (``spool``) and this thread stores them once it has caught up. A record is never
  dropped and the caller never waits;
- **redis**: appended to the Redis stream ``COSTR_USAGE_STREAM`` (one XADD per batch) for
  ``manage.py run_usage_writer``; this process never writes usage to the database. While Redis
  does not answer, batches go to the spool under ``COSTR_USAGE_SPOOL_DIR`` (``spool``)
  and are replayed into the stream when it answers again. The same bound holds for what waits
  in memory: past it the thread spools without asking Redis. While the thread waits on a Redis
  that does not answer (paused: one socket timeout, ``stream.SINK_SOCKET_TIMEOUT``, then one
  short probe a second), records can pass the bound by at most that wait's traffic.

A record that cannot be stored is set aside alone (``writer``), never its neighbours,
never retried forever: an embedded process writes it to ``dead-letter.jsonl`` in the spool
directory, the Redis mode's writer to the dead-letter stream; the log says so without content.

``flush()`` waits until everything handed over before the call has been delivered: stored or
spooled (embedded), or in the stream or the spool (redis). It first takes what the loops hold, a
batch whose send is still in flight included (sent twice then; the unique request id stores it
once). The ASGI lifespan calls it on shutdown, so a web process stopped with SIGTERM hands over
what it served; with Redis down that takes one connect timeout (1 s) before the spool. Only a
process killed outright (SIGKILL, OOM) loses what is still in its memory, normally the last
LINGER_SECONDS of traffic.
"""

import asyncio
import json
import logging
import os
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from apps.usage.metering.contract import UsageRecord
from apps.usage.metering.spool import Spool
from apps.usage.metering.stream import (
    KIND_EVENTS,
    KIND_REFUSALS,
    ORPHAN_SCAN_SECONDS,
    AsyncStream,
    Packed,
    StreamProducer,
    decode_entry,
    encode,
    encode_packed,
    pack,
    unpack,
)

logger = logging.getLogger("costr.usage.sink")

BATCH_SIZE = 500
# A record waits at most this long for others to share its batch: at low traffic one write per
# event would cost more CPU than the proxying itself.
LINGER_SECONDS = 0.2
# The thread wakes this often with nothing to do: to hand over refusal counts and to retry a
# spool whose Redis was down.
TICK_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 10.0
# Distinct (org, day, status, code) counters kept between two hand-overs. The slug comes from the
# URL, so a flood of requests naming random organizations must not grow memory without bound;
# beyond this, new keys are dropped (and the drop logged) until the next hand-over.
MAX_REFUSAL_KEYS = 10_000
# The overflow thread logs at most this often while it spools.
OVERFLOW_LOG_SECONDS = 10.0
DEAD_LETTER_FILE = "dead-letter.jsonl"

_queue: "queue.SimpleQueue[Packed | list[Packed] | _FlushRequest]" = queue.SimpleQueue()
_thread_lock = threading.Lock()
_thread: threading.Thread | None = None
_flush_requested = threading.Event()
_refusals_lock = threading.Lock()
_refusals: dict[tuple[str, str, int, str], int] = {}
_refusals_dropped = 0
_loop_batches: "dict[asyncio.AbstractEventLoop, _LoopBatch]" = {}
# Records in _queue, counted as they are put (a loop's batch at once) and taken: the bound is in
# records, and a queue item is one record or a whole batch.
_queued_lock = threading.Lock()
_queued_records = 0
# Past the bound, batches go here instead, for the "usage-overflow" thread to write to the spool:
# a thread of its own, so the bound holds while the sink thread waits on a database or a Redis
# that does not answer (a paused Redis holds it a socket timeout per try).
_overflow: "queue.SimpleQueue[list[Packed] | _FlushRequest]" = queue.SimpleQueue()
_overflow_thread: threading.Thread | None = None
# Set by the overflow thread once it closed a spool file; the sink thread then replays the spool.
_overflow_spooled = threading.Event()
# False from a failed send on a loop until the thread has delivered to Redis again: meanwhile
# batches go through the thread, which spools them and probes Redis at its own pace.
_direct = True


class _FlushRequest:
    """Queued by flush(): set once every item queued before it has been delivered."""

    def __init__(self) -> None:
        self.done = threading.Event()


def emit(record: UsageRecord) -> None:
    """Hand one usage record over. O(1), memory only, never raises."""
    try:
        packed = pack(record)
        loop = asyncio._get_running_loop()
        if loop is None:
            if _admit(1):
                _queue.put(packed)
            else:
                _to_overflow([packed])
            if _thread is None:  # not is_alive() per record: the thread never returns (see _run)
                _ensure_thread()
            return
        batch = _loop_batches.get(loop)
        if batch is None:
            batch = _loop_batches[loop] = _LoopBatch(loop)
        batch.add(packed)
    except Exception:  # pragma: no cover - a failure of the queue itself is not expected
        logger.exception("usage record dropped by the sink")


def emit_refusal(org_slug: str, status: int, code: str) -> None:
    """Count one request refused before forwarding (401/403/400/413), per org and UTC day.
    O(1), memory only, never raises."""
    global _refusals_dropped
    try:
        key = (str(org_slug)[:100], datetime.now(UTC).date().isoformat(), int(status), str(code))
        with _refusals_lock:
            if key in _refusals or len(_refusals) < MAX_REFUSAL_KEYS:
                _refusals[key] = _refusals.get(key, 0) + 1
            else:
                _refusals_dropped += 1
        _ensure_thread()
    except Exception:  # pragma: no cover - bad arguments from a caller
        logger.exception("refusal count dropped by the sink")


def flush(timeout: float = 10.0) -> bool:
    """Wait until every record and count handed over so far is delivered (tests, graceful
    shutdown). False if that took longer than ``timeout``; nothing is dropped either way."""
    deadline = time.monotonic() + timeout
    taken = _take_from_loops(deadline)
    if _thread is None:
        return taken  # nothing was ever handed to the thread in this process
    request = _FlushRequest()
    _queue.put(request)
    overflow = None
    if _overflow_thread is not None:
        overflow = _FlushRequest()
        _overflow.put(overflow)
    _flush_requested.set()
    _ensure_thread()
    done = request.done.wait(max(deadline - time.monotonic(), 0))
    if overflow is not None:
        done = overflow.done.wait(max(deadline - time.monotonic(), 0)) and done
    return done and taken


def _take_from_loops(deadline: float) -> bool:
    """Hand what every loop holds to the thread: on the loop's own thread when it is running
    elsewhere, here when it is this thread's loop or not running. False if a loop did not
    answer before ``deadline``."""
    current = asyncio._get_running_loop()
    answered = True
    for loop, batch in list(_loop_batches.items()):
        if loop is current or not loop.is_running():
            batch.hand_all_to_thread()
            if loop.is_closed():
                _loop_batches.pop(loop, None)
            continue
        done = threading.Event()

        def hand_over(batch=batch, done=done) -> None:
            batch.hand_all_to_thread()
            done.set()

        try:
            loop.call_soon_threadsafe(hand_over)
        except RuntimeError:  # closed since is_running() was asked
            hand_over()
        if not done.wait(max(deadline - time.monotonic(), 0)):
            answered = False
    return answered


def _to_thread(items: list[Packed]) -> None:
    if _admit(len(items)):
        _queue.put(items)
    else:
        _to_overflow(items)
    if _thread is None:
        _ensure_thread()


def _admit(count: int) -> bool:
    """Count ``count`` records into the queue, or False when that would pass the bound (then they
    go to the overflow thread). An empty queue takes any batch."""
    global _queued_records
    from django.conf import settings

    bound = settings.COSTR_USAGE_QUEUE_MAX_RECORDS
    with _queued_lock:
        if _queued_records and _queued_records + count > bound:
            return False
        _queued_records += count
        return True


def _to_overflow(items: list[Packed]) -> None:
    global _overflow_thread
    _overflow.put(items)
    if _overflow_thread is not None and _overflow_thread.is_alive():
        return
    with _thread_lock:
        if _overflow_thread is None or not _overflow_thread.is_alive():
            _overflow_thread = threading.Thread(
                target=_run_overflow, name="usage-overflow", daemon=True
            )
            _overflow_thread.start()


def _forget_the_parents_sink() -> None:
    """In a forked child (a server's worker): the parent's thread did not come along, its locks
    may have been held at the fork, and what it had queued or opened (connections, the spool
    file) stays the parent's to deliver and close."""
    global _queue, _thread, _thread_lock, _flush_requested, _refusals_lock, _refusals
    global _refusals_dropped, _loop_batches, _direct, _queued_lock, _queued_records
    global _overflow, _overflow_thread, _overflow_spooled
    _queue = queue.SimpleQueue()
    _queued_lock, _queued_records = threading.Lock(), 0
    _overflow, _overflow_thread, _overflow_spooled = queue.SimpleQueue(), None, threading.Event()
    _loop_batches, _direct = {}, True
    _thread, _thread_lock = None, threading.Lock()
    _flush_requested = threading.Event()
    _refusals_lock, _refusals, _refusals_dropped = threading.Lock(), {}, 0
    _transports.clear()


def _ensure_thread() -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    with _thread_lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="usage-writer", daemon=True)
            _thread.start()


class _LoopBatch:
    """Records emitted on one event loop, waiting there for their batch to be handed over.
    Every method runs on the loop's thread, except hand_all_to_thread() on a loop not running."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[Packed] = []
        self.timer: asyncio.TimerHandle | None = None
        self.sending: list[Packed] | None = None  # the batch whose XADD is in flight
        self.task: asyncio.Task | None = None  # a reference, or the loop could lose the task
        self.stream: AsyncStream | None = None

    def add(self, packed: Packed) -> None:
        self.items.append(packed)
        if self.timer is None:
            self.timer = self.loop.call_later(LINGER_SECONDS, self.hand_over)
        elif len(self.items) >= BATCH_SIZE:
            self.hand_over()

    def hand_over(self) -> None:
        items = self._take()
        if not items:
            return
        stream = self._stream() if self.sending is None else None
        if stream is None:
            _to_thread(items)
            return
        self.sending = items
        self.task = self.loop.create_task(self._send(stream, items))

    async def _send(self, stream: AsyncStream, items: list[Packed]) -> None:
        global _direct
        sent = False
        try:
            await stream.append(encode_packed(KIND_EVENTS, items))
            sent = True
        except Exception as error:
            if _direct:
                logger.warning(
                    "usage batch not appended to the stream from the event loop (%s: %s): "
                    "handed to the sink thread",
                    type(error).__name__,
                    error,
                )
            _direct = False
        finally:
            # Failed, or cancelled by the loop closing: the thread delivers it instead, unless
            # flush() took it meanwhile.
            if self.sending is items:
                self.sending = None
                if not sent:
                    _to_thread(items)

    def _stream(self) -> AsyncStream | None:
        """The Redis stream to append to from this loop, or None to hand over to the thread."""
        from django.conf import settings

        url = settings.COSTR_USAGE_REDIS_URL
        if not (url and _direct):
            return None
        key = (url, settings.COSTR_USAGE_STREAM)
        if self.stream is None or self.stream.key != key:
            self.stream = AsyncStream(*key)
        return self.stream

    def hand_all_to_thread(self) -> None:
        """For flush(): everything held, and the batch in flight too, to the thread."""
        items = self._take()
        if self.sending is not None:
            items, self.sending = self.sending + items, None
        if items:
            _to_thread(items)

    def _take(self) -> list[Packed]:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        items, self.items = self.items, []
        return items


# The background thread: everything below runs there, never on a caller's thread.


def _run() -> None:
    while True:
        try:
            if _overflow_spooled.is_set():
                _overflow_spooled.clear()
                _current_transport().spooled_elsewhere()
            records, flushes = _take_batch()
            counts = _take_refusals()
            if records or counts:
                flushes += _deliver(records, counts, flushing=bool(flushes))
            else:
                _current_transport().idle()
            for request in flushes:
                request.done.set()
        except Exception:  # pragma: no cover - the thread must outlive any bug
            logger.exception("usage sink thread error")


def _take_batch() -> tuple[list[Packed], list[_FlushRequest]]:
    try:
        first = _queue.get(timeout=TICK_SECONDS)
    except queue.Empty:
        return [], []
    if isinstance(first, _FlushRequest):
        # Answered now: a flag left set would cut the next batch's linger short.
        _flush_requested.clear()
        return [], [first]
    if isinstance(first, list):
        batch = list(first)  # a loop's batch: it lingered there already
    else:
        if _queue.qsize() < BATCH_SIZE - 1:
            # Linger for company by sleeping, not by waking for each record that arrives: a
            # wake-up per record would cost this thread (and the event loop, through the GIL)
            # more than the batch saves. flush() cuts it short.
            _flush_requested.wait(LINGER_SECONDS)
            _flush_requested.clear()
        batch = [first]
    while len(batch) < BATCH_SIZE:
        try:
            item = _queue.get_nowait()
        except queue.Empty:
            break
        if isinstance(item, _FlushRequest):
            _flush_requested.clear()
            return _taken(batch), [item]  # deliver now: someone is waiting
        if isinstance(item, list):
            batch.extend(item)
        else:
            batch.append(item)
    return _taken(batch), []


def _taken(batch: list[Packed]) -> list[Packed]:
    global _queued_records
    with _queued_lock:
        _queued_records -= len(batch)
    return batch


def _run_overflow() -> None:
    """The overflow thread: batches past the bound to the spool, durably, each burst in a file
    closed at once so that the sink thread can replay it; never dropped (a spool that cannot be
    written, a full disk, is retried)."""
    spool: Spool | None = None
    next_log = 0.0
    while True:
        records: list[Packed] = []
        flushes: list[_FlushRequest] = []
        item = _overflow.get()
        while True:
            if isinstance(item, _FlushRequest):
                flushes.append(item)
            else:
                records.extend(item)
            try:
                item = _overflow.get_nowait()
            except queue.Empty:
                break
        while records:
            try:
                spool = _overflow_spool(spool)
                spool.append(_entries_of(records))
                spool.close()
            except Exception:
                logger.exception("usage overflow not spooled yet, retrying")
                threading.Event().wait(TICK_SECONDS)
                continue
            _overflow_spooled.set()
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + OVERFLOW_LOG_SECONDS
                logger.warning(
                    "usage queue past its bound: %d records spooled to %s, stored once the "
                    "sink catches up",
                    len(records),
                    spool.directory,
                )
            records = []
        for request in flushes:
            request.done.set()


def _overflow_spool(spool: Spool | None) -> Spool:
    from django.conf import settings

    directory = Path(settings.COSTR_USAGE_SPOOL_DIR)
    if spool is None or spool.directory != directory:
        spool = Spool(directory, segment_bytes=settings.COSTR_USAGE_SPOOL_SEGMENT_BYTES)
    return spool


def _take_refusals() -> list[dict]:
    global _refusals, _refusals_dropped
    with _refusals_lock:
        taken, _refusals = _refusals, {}
        dropped, _refusals_dropped = _refusals_dropped, 0
    if dropped:
        logger.warning("%d refusal counts dropped: over %d distinct keys", dropped, len(taken))
    return [
        {"org_slug": slug, "day": day, "status": status, "code": code, "count": count}
        for (slug, day, status, code), count in taken.items()
    ]


def _deliver(
    records: list[Packed], counts: list[dict], *, flushing: bool = False
) -> list[_FlushRequest]:
    """Deliver by the current transport, retrying until it succeeds: a batch is never dropped.
    Meanwhile new records wait in the queue up to its bound, then in the spool. A flush() that
    waits for this batch (``flushing``) or comes while it retries (a shutdown with the database
    down) spools the batch and the whole queue instead, so that what was handed over outlives
    the process; returns the flush requests so answered."""
    from apps.usage.metering.writer import backoff_delays

    delays = None
    while True:
        try:
            _current_transport().deliver(records, counts)
            return []
        except Exception as error:
            delays = delays or backoff_delays(MAX_BACKOFF_SECONDS)
            delay = next(delays)
            logger.warning(
                "usage batch of %d not delivered (%s: %s), retrying in %.1fs",
                len(records),
                type(error).__name__,
                error,
                delay,
            )
        if flushing or _flush_requested.wait(delay):
            _flush_requested.clear()
            try:
                return _spool_all(records, counts)
            except Exception:
                logger.exception("usage batch not spooled either, retrying")


def _spool_all(records: list[Packed], counts: list[dict]) -> list[_FlushRequest]:
    """The batch in hand and everything queued, to the spool; the flush requests met."""
    flushes: list[_FlushRequest] = []
    queued: list[Packed] = []
    while True:
        try:
            item = _queue.get_nowait()
        except queue.Empty:
            break
        if isinstance(item, _FlushRequest):
            flushes.append(item)
        elif isinstance(item, list):
            queued.extend(item)
        else:
            queued.append(item)
    entries = _entries_of(records + _taken(queued))
    if counts:
        entries.append(encode(KIND_REFUSALS, counts))
    _current_transport().spool_entries(entries)
    return flushes


_transports: dict[tuple, object] = {}
os.register_at_fork(after_in_child=_forget_the_parents_sink)


def _current_transport():
    """The transport the settings name now (tests switch between them)."""
    from django.conf import settings

    url = settings.COSTR_USAGE_REDIS_URL
    spool = (str(settings.COSTR_USAGE_SPOOL_DIR), settings.COSTR_USAGE_SPOOL_SEGMENT_BYTES)
    key = ("embedded", *spool) if not url else ("redis", url, settings.COSTR_USAGE_STREAM, *spool)
    transport = _transports.get(key)
    if transport is None:
        for old in _transports.values():
            old.close()
        _transports.clear()
        transport = _transports[key] = (
            _DatabaseTransport(*key[1:]) if key[0] == "embedded" else _RedisTransport(*key[1:])
        )
    return transport


class _DatabaseTransport:
    """Embedded mode: this thread stores the batch itself, and what was spooled past the queue's
    bound (by this process, or by one that died) once it has caught up."""

    def __init__(self, spool_dir: str, segment_bytes: int) -> None:
        self.spool = Spool(spool_dir, segment_bytes=segment_bytes)
        self.dead_letters = Path(spool_dir) / DEAD_LETTER_FILE
        self._next_replay = 0.0  # at once: a process that died may have left a spool

    def deliver(self, records: list[Packed], counts: list[dict]) -> None:
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
        self.idle()
        if _queue.empty():
            connection.close()  # nothing waiting: do not hold a connection while idle

    def spooled_elsewhere(self) -> None:
        """The overflow thread spooled records: store them once caught up."""
        self.spool.pending = True
        self._next_replay = 0.0

    def spool_entries(self, entries: list[dict[str, str]]) -> None:
        self.spool.append(entries)
        self._next_replay = time.monotonic() + TICK_SECONDS

    def idle(self) -> None:
        """Store what the spool holds, once the queue is well under its bound (caught up) and the
        last try is not too recent (the database may still be down)."""
        from django.conf import settings

        now = time.monotonic()
        if now < self._next_replay or _queued_records > settings.COSTR_USAGE_QUEUE_MAX_RECORDS // 2:
            return
        self._next_replay = now + (TICK_SECONDS if self.spool.pending else ORPHAN_SCAN_SECONDS)
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


class _RedisTransport:
    """Redis mode: to the stream, or to the spool while Redis does not answer."""

    def __init__(self, url: str, stream: str, spool_dir: str, segment_bytes: int) -> None:
        self.producer = StreamProducer(
            url=url, stream=stream, spool_dir=spool_dir, segment_bytes=segment_bytes
        )

    def deliver(self, records: list[Packed], counts: list[dict]) -> None:
        entries = []
        if records:
            entries.append(encode_packed(KIND_EVENTS, records))
        if counts:
            entries.append(encode(KIND_REFUSALS, counts))
        self.producer.send(entries)
        if self.producer.healthy:
            global _direct
            _direct = True  # loops may append to the stream again

    def spooled_elsewhere(self) -> None:
        """The overflow thread spooled records: replay them into the stream once it answers."""
        self.producer.spool.pending = True

    def spool_entries(self, entries: list[dict[str, str]]) -> None:
        self.producer.spool.append(entries)

    def idle(self) -> None:
        self.producer.retry_pending()

    def close(self) -> None:
        self.producer.close()


def _entries_of(records: list[Packed]) -> list[dict[str, str]]:
    """Stream entries (as the spool keeps them) of BATCH_SIZE records each."""
    return [
        encode_packed(KIND_EVENTS, records[start : start + BATCH_SIZE])
        for start in range(0, len(records), BATCH_SIZE)
    ]
