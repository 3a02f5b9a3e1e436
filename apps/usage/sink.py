"""Where the proxy hands usage records. Returns at once and never raises into the proxy.

A record is a plain dict of primitives (JSON-able): it crosses threads now and, once metering is
durable, processes. In this embedded form records wait in an in-process queue that a background
thread writes to the database in batches; the proxy never waits for the database.
"""

import logging
import queue
import threading
import time

logger = logging.getLogger("costr.usage.sink")

BATCH_SIZE = 500
# A record waits at most this long for others to share its transaction: at low traffic one write
# per event would cost more CPU than the proxying itself.
LINGER_SECONDS = 0.2
RETRY_SECONDS = (0.5, 1, 2, 5, 10)

_queue: "queue.SimpleQueue[dict]" = queue.SimpleQueue()
_writer_lock = threading.Lock()
_writer: threading.Thread | None = None
_idle = threading.Event()
_idle.set()
# Put in the queue by flush(): ends the current linger so waiting records are written at once.
_FLUSH = object()


def emit(record: dict) -> None:
    """Hand one usage record over. O(1), no I/O, never raises."""
    try:
        # Put before clearing: a stale "busy" is resolved by flush()'s marker, a stale "idle" is
        # not.
        _queue.put(record)
        _idle.clear()
        _ensure_writer()
    except Exception:  # pragma: no cover - a full failure of the queue is not expected
        logger.exception("usage record dropped by the sink")


def _ensure_writer() -> None:
    global _writer
    if _writer is not None and _writer.is_alive():
        return
    with _writer_lock:
        if _writer is None or not _writer.is_alive():
            _writer = threading.Thread(target=_write_forever, name="usage-writer", daemon=True)
            _writer.start()


def _take_batch() -> list[dict]:
    while (first := _queue.get()) is _FLUSH:
        # A marker with nothing behind it: everything handed over has been written.
        if _queue.empty():
            _idle.set()
    batch = [first]
    deadline = time.monotonic() + LINGER_SECONDS
    while len(batch) < BATCH_SIZE:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            record = _queue.get(timeout=remaining)
        except queue.Empty:
            break
        if record is _FLUSH:
            break
        batch.append(record)
    return batch


def _write_forever() -> None:
    from django.db import close_old_connections, connection

    from apps.usage.services import usage_events_write

    while True:
        batch = _take_batch()
        for attempt, delay in enumerate((*RETRY_SECONDS, None)):
            try:
                close_old_connections()
                usage_events_write(batch)
                break
            except Exception:
                if delay is None:
                    logger.exception("usage batch of %d could not be written", len(batch))
                    break
                logger.warning("usage batch write failed (attempt %d), retrying", attempt + 1)
                time.sleep(delay)
        if _queue.empty():
            # Nothing waiting: hand the connection back rather than hold it while idle.
            connection.close()
            _idle.set()


def flush(timeout: float = 10.0) -> bool:
    """Wait until every record handed over so far is written (tests, graceful shutdown)."""
    if not _idle.is_set():
        _queue.put(_FLUSH)
    return _idle.wait(timeout)
