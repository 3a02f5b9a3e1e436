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
delivers them by the transport the settings name (``transports``):

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

All of that state belongs to one ``Sink`` object per process; the module's ``emit``,
``emit_refusal`` and ``flush`` are its. A forked child (a server's worker) starts a new one: the
parent's threads did not come along, its locks may have been held at the fork, and what it had
queued or opened (connections, the spool file) stays the parent's to deliver and close.
"""

import asyncio
import logging
import os
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from apps.usage.metering.contract import UsageRecord
from apps.usage.metering.spool import Spool
from apps.usage.metering.stream import (
    KIND_EVENTS,
    KIND_REFUSALS,
    AsyncStream,
    Packed,
    encode,
    encode_packed,
    pack,
)
from apps.usage.metering.transports import Transport, settings_key, transport_for

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


def emit(record: UsageRecord) -> None:
    """Hand one usage record over. O(1), memory only, never raises."""
    _sink.emit(record)


def emit_refusal(org_slug: str, status: int, code: str) -> None:
    """Count one request refused before forwarding (401/403/400/413), per org and UTC day.
    O(1), memory only, never raises."""
    _sink.emit_refusal(org_slug, status, code)


def flush(timeout: float = 10.0) -> bool:
    """Wait until every record and count handed over so far is delivered (tests, graceful
    shutdown). False if that took longer than ``timeout``; nothing is dropped either way."""
    return _sink.flush(timeout)


class _FlushRequest:
    """Queued by flush(): set once every item queued before it has been delivered."""

    def __init__(self) -> None:
        self.done = threading.Event()


class Sink:
    """One process's hand-over: what callers put in, the threads that deliver it, and their
    state. Methods above the thread section run on callers' threads and touch memory only."""

    def __init__(self) -> None:
        # Records (one, or a loop's batch) and flush requests, for the sink thread.
        self.queue: queue.SimpleQueue[Packed | list[Packed] | _FlushRequest] = queue.SimpleQueue()
        # Records in the queue, counted as they are put (a loop's batch at once) and taken: the
        # bound is in records, and a queue item is one record or a whole batch.
        self.queued_lock = threading.Lock()
        self.queued_records = 0
        self.thread_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.flush_requested = threading.Event()
        self.refusals_lock = threading.Lock()
        self.refusals: dict[tuple[str, str, int, str], int] = {}
        self.refusals_dropped = 0
        self.loop_batches: dict[asyncio.AbstractEventLoop, _LoopBatch] = {}
        # Past the bound, batches go here instead, for the "usage-overflow" thread to write to
        # the spool: a thread of its own, so the bound holds while the sink thread waits on a
        # database or a Redis that does not answer (a paused Redis holds it a socket timeout per
        # try).
        self.overflow: queue.SimpleQueue[list[Packed] | _FlushRequest] = queue.SimpleQueue()
        self.overflow_thread: threading.Thread | None = None
        # Set by the overflow thread once it closed a spool file; the sink thread then replays it.
        self.overflow_spooled = threading.Event()
        # False from a failed send on a loop until the thread has delivered to Redis again:
        # meanwhile batches go through the thread, which spools them and probes Redis at its own
        # pace.
        self.direct = True
        self.transport: Transport | None = None
        self.transport_key: tuple | None = None

    def emit(self, record: UsageRecord) -> None:
        try:
            packed = pack(record)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: the thread batches it
                if self._admit(1):
                    self.queue.put(packed)
                else:
                    self._to_overflow([packed])
                if self.thread is None:  # not is_alive() per record: the thread never returns
                    self._ensure_thread()
                return
            batch = self.loop_batches.get(loop)
            if batch is None:
                batch = self.loop_batches[loop] = _LoopBatch(self, loop)
            batch.add(packed)
        except Exception:  # pragma: no cover - a failure of the queue itself is not expected
            logger.exception("usage record dropped by the sink")

    def emit_refusal(self, org_slug: str, status: int, code: str) -> None:
        try:
            key = (
                str(org_slug)[:100],
                datetime.now(UTC).date().isoformat(),
                int(status),
                str(code),
            )
            with self.refusals_lock:
                if key in self.refusals or len(self.refusals) < MAX_REFUSAL_KEYS:
                    self.refusals[key] = self.refusals.get(key, 0) + 1
                else:
                    self.refusals_dropped += 1
            self._ensure_thread()
        except Exception:  # pragma: no cover - bad arguments from a caller
            logger.exception("refusal count dropped by the sink")

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        taken = self._take_from_loops(deadline)
        if self.thread is None:
            return taken  # nothing was ever handed to the thread in this process
        request = _FlushRequest()
        self.queue.put(request)
        overflow = None
        if self.overflow_thread is not None:
            overflow = _FlushRequest()
            self.overflow.put(overflow)
        self.flush_requested.set()
        self._ensure_thread()
        done = request.done.wait(max(deadline - time.monotonic(), 0))
        if overflow is not None:
            done = overflow.done.wait(max(deadline - time.monotonic(), 0)) and done
        return done and taken

    def _take_from_loops(self, deadline: float) -> bool:
        """Hand what every loop holds to the thread: on the loop's own thread when it is running
        elsewhere, here when it is this thread's loop or not running. False if a loop did not
        answer before ``deadline``."""
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        answered = True
        for loop, batch in list(self.loop_batches.items()):
            if loop is current or not loop.is_running():
                batch.hand_all_to_thread()
                if loop.is_closed():
                    self.loop_batches.pop(loop, None)
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

    def to_thread(self, items: list[Packed]) -> None:
        """A loop's batch, for the thread to deliver (or to spool, past the bound)."""
        if self._admit(len(items)):
            self.queue.put(items)
        else:
            self._to_overflow(items)
        if self.thread is None:
            self._ensure_thread()

    def _admit(self, count: int) -> bool:
        """Count ``count`` records into the queue, or False when that would pass the bound (then
        they go to the overflow thread). An empty queue takes any batch."""
        bound = settings.COSTR_USAGE_QUEUE_MAX_RECORDS
        with self.queued_lock:
            if self.queued_records and self.queued_records + count > bound:
                return False
            self.queued_records += count
            return True

    def _to_overflow(self, items: list[Packed]) -> None:
        self.overflow.put(items)
        if self.overflow_thread is not None and self.overflow_thread.is_alive():
            return
        with self.thread_lock:
            if self.overflow_thread is None or not self.overflow_thread.is_alive():
                self.overflow_thread = threading.Thread(
                    target=self._run_overflow, name="usage-overflow", daemon=True
                )
                self.overflow_thread.start()

    def _ensure_thread(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        with self.thread_lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
                self.thread.start()

    # The threads: everything below runs there, never on a caller's thread.

    def _run(self) -> None:
        while True:
            try:
                if self.overflow_spooled.is_set():
                    self.overflow_spooled.clear()
                    self._transport().spooled_elsewhere()
                records, flushes = self._take_batch()
                counts = self._take_refusals()
                if records or counts:
                    flushes += self._deliver(records, counts, flushing=bool(flushes))
                else:
                    self._transport().idle(self.queued_records)
                for request in flushes:
                    request.done.set()
            except Exception:  # pragma: no cover - the thread must outlive any bug
                logger.exception("usage sink thread error")

    def _take_batch(self) -> tuple[list[Packed], list[_FlushRequest]]:
        try:
            first = self.queue.get(timeout=TICK_SECONDS)
        except queue.Empty:
            return [], []
        if isinstance(first, _FlushRequest):
            # Answered now: a flag left set would cut the next batch's linger short.
            self.flush_requested.clear()
            return [], [first]
        if isinstance(first, list):
            batch = list(first)  # a loop's batch: it lingered there already
        else:
            if self.queue.qsize() < BATCH_SIZE - 1:
                # Linger for company by sleeping, not by waking for each record that arrives: a
                # wake-up per record would cost this thread (and the event loop, through the GIL)
                # more than the batch saves. flush() cuts it short.
                self.flush_requested.wait(LINGER_SECONDS)
                self.flush_requested.clear()
            batch = [first]
        while len(batch) < BATCH_SIZE:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _FlushRequest):
                self.flush_requested.clear()
                return self._taken(batch), [item]  # deliver now: someone is waiting
            if isinstance(item, list):
                batch.extend(item)
            else:
                batch.append(item)
        return self._taken(batch), []

    def _taken(self, batch: list[Packed]) -> list[Packed]:
        with self.queued_lock:
            self.queued_records -= len(batch)
        return batch

    def _take_refusals(self) -> list[dict]:
        with self.refusals_lock:
            taken, self.refusals = self.refusals, {}
            dropped, self.refusals_dropped = self.refusals_dropped, 0
        if dropped:
            logger.warning("%d refusal counts dropped: over %d distinct keys", dropped, len(taken))
        return [
            {"org_slug": slug, "day": day, "status": status, "code": code, "count": count}
            for (slug, day, status, code), count in taken.items()
        ]

    def _deliver(
        self, records: list[Packed], counts: list[dict], *, flushing: bool = False
    ) -> list[_FlushRequest]:
        """Deliver by the current transport, retrying until it succeeds: a batch is never
        dropped. Meanwhile new records wait in the queue up to its bound, then in the spool. A
        flush() that waits for this batch (``flushing``) or comes while it retries (a shutdown
        with the database down) spools the batch and the whole queue instead, so that what was
        handed over outlives the process; returns the flush requests so answered."""
        from apps.usage.metering.writer import backoff_delays

        delays = None
        while True:
            try:
                transport = self._transport()
                transport.deliver(records, counts, self.queued_records)
                if transport.healthy:
                    self.direct = True  # loops may append to the stream again
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
            if flushing or self.flush_requested.wait(delay):
                self.flush_requested.clear()
                try:
                    return self._spool_all(records, counts)
                except Exception:
                    logger.exception("usage batch not spooled either, retrying")

    def _spool_all(self, records: list[Packed], counts: list[dict]) -> list[_FlushRequest]:
        """The batch in hand and everything queued, to the spool; the flush requests met."""
        flushes: list[_FlushRequest] = []
        queued: list[Packed] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _FlushRequest):
                flushes.append(item)
            elif isinstance(item, list):
                queued.extend(item)
            else:
                queued.append(item)
        entries = _entries_of(records + self._taken(queued))
        if counts:
            entries.append(encode(KIND_REFUSALS, counts))
        self._transport().spool_entries(entries)
        return flushes

    def _transport(self) -> Transport:
        """The transport the settings name now (tests switch between them)."""
        key = settings_key()
        if self.transport is None or self.transport_key != key:
            if self.transport is not None:
                self.transport.close()
            self.transport, self.transport_key = transport_for(key), key
        return self.transport

    def _run_overflow(self) -> None:
        """The overflow thread: batches past the bound to the spool, durably, each burst in a
        file closed at once so that the sink thread can replay it; never dropped (a spool that
        cannot be written, a full disk, is retried)."""
        spool: Spool | None = None
        next_log = 0.0
        while True:
            records: list[Packed] = []
            flushes: list[_FlushRequest] = []
            item = self.overflow.get()
            while True:
                if isinstance(item, _FlushRequest):
                    flushes.append(item)
                else:
                    records.extend(item)
                try:
                    item = self.overflow.get_nowait()
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
                self.overflow_spooled.set()
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


class _LoopBatch:
    """Records emitted on one event loop, waiting there for their batch to be handed over.
    Every method runs on the loop's thread, except hand_all_to_thread() on a loop not running."""

    def __init__(self, sink: Sink, loop: asyncio.AbstractEventLoop) -> None:
        self.sink = sink
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
            self.sink.to_thread(items)
            return
        self.sending = items
        self.task = self.loop.create_task(self._send(stream, items))

    async def _send(self, stream: AsyncStream, items: list[Packed]) -> None:
        sent = False
        try:
            await stream.append(encode_packed(KIND_EVENTS, items))
            sent = True
        except Exception as error:
            if self.sink.direct:
                logger.warning(
                    "usage batch not appended to the stream from the event loop (%s: %s): "
                    "handed to the sink thread",
                    type(error).__name__,
                    error,
                )
            self.sink.direct = False
        finally:
            # Failed, or cancelled by the loop closing: the thread delivers it instead, unless
            # flush() took it meanwhile.
            if self.sending is items:
                self.sending = None
                if not sent:
                    self.sink.to_thread(items)

    def _stream(self) -> AsyncStream | None:
        """The Redis stream to append to from this loop, or None to hand over to the thread."""
        url = settings.COSTR_USAGE_REDIS_URL
        if not (url and self.sink.direct):
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
            self.sink.to_thread(items)

    def _take(self) -> list[Packed]:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        items, self.items = self.items, []
        return items


def _overflow_spool(spool: Spool | None) -> Spool:
    directory = Path(settings.COSTR_USAGE_SPOOL_DIR)
    if spool is None or spool.directory != directory:
        spool = Spool(directory, segment_bytes=settings.COSTR_USAGE_SPOOL_SEGMENT_BYTES)
    return spool


def _entries_of(records: list[Packed]) -> list[dict[str, str]]:
    """Stream entries (as the spool keeps them) of BATCH_SIZE records each."""
    return [
        encode_packed(KIND_EVENTS, records[start : start + BATCH_SIZE])
        for start in range(0, len(records), BATCH_SIZE)
    ]


_sink = Sink()


def _start_afresh_in_child() -> None:
    """A forked child's sink is a new one (see the module's docstring)."""
    global _sink
    _sink = Sink()


os.register_at_fork(after_in_child=_start_afresh_in_child)
