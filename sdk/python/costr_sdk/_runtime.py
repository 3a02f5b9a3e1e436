"""What one configuration owns while it runs: the circuit breaker with its probe, the queue of
usage records of direct calls, the spool and the thread that delivers to Costr.

Nothing here raises into a caller: failures are logged and the call goes on. Calls only ever
put a record on an in-memory queue; a background thread writes it to the spool (fsync) and
sends spooled batches to ``POST {url}/api/v1/ingest/`` while Costr answers.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from typing import Any

import httpx

from costr_sdk._config import MAX_BREAKER_SECONDS, Settings
from costr_sdk._scrub import scrub
from costr_sdk._spool import Spool

logger = logging.getLogger("costr_sdk")

INGEST_PATH = "/api/v1/ingest/"
HEALTH_PATH = "/healthz"
BATCH_SIZE = 500  # the ingest API's limit
# After a failed delivery (Costr answered, but not with success), the next try waits this long.
RETRY_SECONDS = 30.0
# Shown as the event's source (the ingest API stores it since Costr's migration usage.0007).
SOURCE = "sdk_fallback"


class Breaker:
    """Closed: calls go to Costr. Open: calls with a fallback key go straight to the provider
    while a background probe (``GET /healthz``) asks Costr again after ``breaker_seconds``,
    doubling the wait after each failed probe. One outage costs one connect timeout."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = weakref.ref(runtime)
        self.open = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._probe: threading.Thread | None = None

    def trip(self, reason: str) -> None:
        with self._lock:
            if self.open:
                return
            self.open = True
            self._closed.clear()
            logger.warning("costr_sdk: Costr unreachable (%s); calling providers directly", reason)
            self._probe = threading.Thread(target=self._run_probe, name="costr-probe", daemon=True)
            self._probe.start()

    def close(self) -> None:
        with self._lock:
            if not self.open:
                return
            self.open = False
            self._closed.set()
        logger.warning("costr_sdk: Costr answers again; calls go through Costr")
        runtime = self._runtime()
        if runtime is not None:
            runtime.wake()

    def _run_probe(self) -> None:
        runtime = self._runtime()
        if runtime is None:
            return
        settings = runtime.settings
        delay = settings.breaker_seconds
        del runtime
        while not self._closed.wait(delay):
            runtime = self._runtime()
            if runtime is None or runtime.stopped:
                return
            if runtime.costr_healthy():
                self.close()
                return
            delay = min(delay * 2, MAX_BREAKER_SECONDS)
            del runtime


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.breaker = Breaker(self)
        self.spool = Spool(settings.spool_dir)
        self.stopped = False
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._passes = 0
        self._force = False
        self._retry_at = 0.0
        self._http: httpx.Client | None = None
        self._thread = threading.Thread(target=self._run, name="costr-delivery", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # Calls ---------------------------------------------------------------------------------

    def record(self, record: dict[str, Any]) -> None:
        """Queue one direct call's usage record (``before_send`` and scrubbing applied)."""
        try:
            if self.settings.before_send is not None:
                changed = self.settings.before_send(dict(record))
                if changed is None:
                    return
                record = changed
            self._queue.put(scrub(record))
            self._wake.set()
        except Exception:
            logger.exception("costr_sdk: a usage record could not be queued")

    def wake(self) -> None:
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Send every record waiting here and in the spool; True when none is left."""
        deadline = time.monotonic() + timeout
        while True:
            with self._idle:
                target = self._passes + 1
                self._force = True
                self._wake.set()
                while self._passes < target:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._thread.is_alive():
                        return False
                    self._idle.wait(min(left, 0.5))
            if self._queue.empty() and not self.spool.pending():
                return True
            if time.monotonic() + 0.2 > deadline:
                return False
            time.sleep(0.2)

    # The delivery thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self.stopped:
            self._wake.wait(5.0)
            self._wake.clear()
            try:
                self._pass()
            except Exception:
                logger.exception("costr_sdk: usage delivery failed; will retry")
            with self._idle:
                self._passes += 1
                self._idle.notify_all()

    def _drain(self) -> None:
        records = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                records.append(item)
        if records:
            self.spool.append(records)

    def _pass(self) -> None:
        self._drain()
        force, self._force = self._force, False
        if not force and (self.breaker.open or time.monotonic() < self._retry_at):
            return
        if not self.spool.pending():
            return
        for claimed in self.spool.claim():
            try:
                records = claimed.records()
                delivered = all(
                    self._send(records[start : start + BATCH_SIZE])
                    for start in range(0, len(records), BATCH_SIZE)
                )
            except Exception:
                claimed.release()
                raise
            if delivered:
                claimed.done()
            else:
                claimed.release()
                self._retry_at = time.monotonic() + RETRY_SECONDS
                return

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                timeout=httpx.Timeout(30.0, connect=self.settings.connect_timeout)
            )
        return self._http

    def _send(self, records: list[dict[str, Any]]) -> bool:
        """True when Costr has dealt with the batch for good (stored, duplicate or rejected)."""
        settings = self.settings
        if not settings.url or not settings.token:
            return False

        try:
            response = self._client().post(
                settings.url + INGEST_PATH,
                json={"events": records},
                headers={"Authorization": f"Bearer {settings.token}"},
            )
        except httpx.TransportError as error:
            self.breaker.trip(type(error).__name__)
            return False
        if response.status_code in (200, 207) or (
            response.status_code == 400 and "rejected" in response.text
        ):
            self.breaker.close()
            self._log_rejections(response)
            return True
        if response.status_code == 400:
            logger.error(
                "costr_sdk: Costr refused a batch of %d usage records: %s",
                len(records),
                response.text[:500],
            )
            return True  # the same batch would be refused again
        logger.warning(
            "costr_sdk: Costr answered %d to usage records; keeping them to retry",
            response.status_code,
        )
        return False

    @staticmethod
    def _log_rejections(response: httpx.Response) -> None:
        try:
            rejected = response.json().get("rejected") or []
        except ValueError:
            return
        for item in rejected[:10]:
            logger.error("costr_sdk: Costr rejected usage record %s", item)

    def costr_healthy(self) -> bool:
        if not self.settings.url:
            return False
        try:
            response = self._client().get(self.settings.url + HEALTH_PATH)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    # Shutdown ------------------------------------------------------------------------------

    def _at_exit(self) -> None:
        """Records still in memory go to the spool; the next process sends what is left."""
        try:
            self._drain()
            self.spool.close()
        except Exception:
            logger.exception("costr_sdk: usage records could not be spooled at exit")

    def close(self) -> None:
        self.stopped = True
        self._wake.set()
        self._at_exit()
        atexit.unregister(self._at_exit)
