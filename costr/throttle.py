"""Throttles against abuse: counters of what one client may do in a window, shared by every
process in Redis when ``REDIS_URL`` is set, kept in this process's memory otherwise.

Failed logins are throttled by django-axes (``apps.accounts.throttling``); this module serves the
rest: password-reset mails and requests with invalid tokens, on the API and on the proxy. The
counting is the ``limits`` package's moving window (no more than N in any window of the rate's
length), so ``Retry-After`` is exact: the time until the oldest counted event leaves the window.

It lives in the project package, not in an app, because the proxy may import no app but
``keys.keycache`` and the usage sink, and it needs this too. Nothing here blocks an event loop:
``ahit`` hands the counting to a thread. A counter store that does not answer fails open (the
event is not counted), so a Redis outage never locks people out; the outage is logged once when
it begins and once when the store answers again (``StoreHealth``), not once per event, so a flood
during an outage does not flood the log. The store is tried again every few seconds, and counting
resumes with the first event that reaches it, without a restart.
"""

import asyncio
import hashlib
import logging
import math
import os
import threading
import time

from django.conf import settings
from limits import RateLimitItem, parse, storage, strategies

logger = logging.getLogger("costr.throttle")

# Past this many remembered blocked clients, expired ones are dropped (a flood from many
# addresses must not grow memory without bound).
MAX_REMEMBERED_BLOCKS = 10_000
REDIS_TIMEOUT_SECONDS = 1.0
# Fixed, not the cache's prefix: every process of a deployment must count in the same keys.
REDIS_KEY_PREFIX = "costr:throttle"


class StoreHealth:
    """Whether a store of counts answers, so that an outage is logged once when it begins and
    once when it ends, and costs a request nothing while it lasts.

    After a failure the store is left alone for ``retry_seconds``; then one caller asks it again
    (the others go on uncounted meanwhile). Without that pause a Redis that is stalled rather
    than down would hold every counted request for its socket timeout, and the threads waiting
    on it (``ahit`` runs on the event loop's default executor, which also resolves host names
    for upstream connections) would be taken from everyone else. The log names the error's type
    only: never a key, which may be an e-mail address, nor a URL, which may hold a password.
    """

    retry_seconds = 2.0

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._down = False
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def available(self) -> bool:
        """True when the store may be asked now: it answered last time, or this caller is the
        one that tries it again after the pause."""
        if not self._down:  # the usual case: no lock taken
            return True
        with self._lock:
            now = time.monotonic()
            if not self._down or now >= self._retry_at:
                self._retry_at = now + self.retry_seconds
                return True
            return False

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_seconds
            if self._down:
                return
            self._down = True
        self._log.warning(
            "%s: the store of counts did not answer (%s); going on uncounted until it does",
            self._what,
            type(error).__name__,
        )

    def answered(self) -> None:
        if not self._down:
            return
        with self._lock:
            if not self._down:
                return
            self._down = False
        self._log.warning("%s: the store of counts answers again; counting resumed", self._what)


class _CounterStore:
    """The ``limits`` storage and limiter of one process (made again after a fork: a Redis
    connection pool or the memory storage's expiry timer does not survive one)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        url = settings.REDIS_URL
        if url:
            self.storage = storage.RedisStorage(
                url,
                key_prefix=REDIS_KEY_PREFIX,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
        else:
            self.storage = storage.MemoryStorage()
        self.url = url
        self.limiter = strategies.MovingWindowRateLimiter(self.storage)
        self.health = StoreHealth(logger, "abuse throttles")


_store_lock = threading.Lock()
_store: _CounterStore | None = None


def _counter_store() -> _CounterStore:
    global _store
    store = _store
    if store is None or store.pid != os.getpid() or store.url != settings.REDIS_URL:
        with _store_lock:
            store = _store
            if store is None or store.pid != os.getpid() or store.url != settings.REDIS_URL:
                store = _store = _CounterStore()
    return store


class Throttle:
    """One rule: at most ``rate`` events per key (a client address, a hashed e-mail address).

    ``rate_setting`` names the setting that holds the rate in ``limits``' notation
    (``"30/minute"``, ``"3/hour"``), read at each use so tests and operators can change it.
    """

    def __init__(self, name: str, rate_setting: str) -> None:
        self.name = name
        self.rate_setting = rate_setting
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def rate(self) -> RateLimitItem:
        return parse(getattr(settings, self.rate_setting))

    def hit(self, key: str) -> int | None:
        """Count one event for ``key``. None while within the limit; past it (the event is then
        not counted), the whole seconds to wait before one more is allowed."""
        rate = self.rate()
        store = _counter_store()
        if not store.health.available():
            return None
        try:
            if store.limiter.hit(rate, self.name, key):
                store.health.answered()
                return None
            reset_time = store.limiter.get_window_stats(rate, self.name, key).reset_time
        except Exception as error:
            # Any failure of the store (Redis down, timed out, out of memory, a reply limits
            # cannot read): this event goes on uncounted rather than refused.
            store.health.failed(error)
            return None
        store.health.answered()
        wait = max(1, math.ceil(reset_time - time.time()))
        self._remember_block(key, wait)
        return wait

    async def ahit(self, key: str) -> int | None:
        """``hit`` for async code, off the event loop (a Redis round trip)."""
        return await asyncio.to_thread(self.hit, key)

    def blocked(self, key: str) -> int | None:
        """Seconds left on a block this process has seen, else None: a dictionary look-up, no
        I/O, cheap enough to ask before any other work. A block counted by another process is
        learned here at this client's next counted event."""
        deadline = self._blocked_until.get(key)
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._blocked_until.pop(key, None)
            return None
        return math.ceil(remaining)

    def _remember_block(self, key: str, wait: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._blocked_until.get(key, 0.0) <= now:
                # Once per block, not per refused request: a flood must not flood the log too.
                logger.warning("%s: %s is past its limit; refused for %d s", self.name, key, wait)
            self._blocked_until[key] = now + wait
            if len(self._blocked_until) > MAX_REMEMBERED_BLOCKS:
                for known, deadline in list(self._blocked_until.items()):
                    if deadline <= now:
                        del self._blocked_until[known]

    def clear(self, key: str) -> None:
        """Forget ``key``'s count and block (tests, and an operator lifting a block)."""
        self._blocked_until.pop(key, None)
        _counter_store().limiter.clear(self.rate(), self.name, key)

    def forget_local_blocks(self) -> None:
        """Forget the blocks this process remembers (the shared counts stay)."""
        with self._lock:
            self._blocked_until.clear()


def describe(rate_setting: str) -> str:
    """A rate setting for people: ``"30/minute"`` → ``"30 per minute"``, ``"5/10 minutes"`` →
    ``"5 per 10 minutes"``."""
    rate = parse(getattr(settings, rate_setting))
    unit = rate.GRANULARITY.name
    if rate.multiples == 1:
        return f"{rate.amount} per {unit}"
    return f"{rate.amount} per {rate.multiples} {unit}s"


def hashed(value: str) -> str:
    """A key for a personal value (an e-mail address) that does not store it in clear."""
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()


def reset_all() -> None:
    """Forget every count and block (between tests: a flood in one must not throttle the next).
    Does nothing in a process that has counted nothing."""
    for throttle in (INVALID_TOKENS, PASSWORD_RESET_BY_EMAIL, PASSWORD_RESET_BY_ADDRESS):
        throttle.forget_local_blocks()
    if _store is None:
        return
    try:
        _counter_store().storage.reset()
    except Exception:
        logger.warning("throttle counters could not be reset")


# Requests with an unknown, revoked, expired or malformed token, per client address, on the API
# and the proxy together: one client spraying tokens at either is one client.
INVALID_TOKENS = Throttle("invalid-token", "COSTR_THROTTLE_INVALID_TOKENS_PER_ADDRESS")
# Password-reset requests, per e-mail address asked for (existing or not) and per client address.
PASSWORD_RESET_BY_EMAIL = Throttle(
    "password-reset-email", "COSTR_THROTTLE_PASSWORD_RESET_PER_EMAIL"
)
PASSWORD_RESET_BY_ADDRESS = Throttle(
    "password-reset-address", "COSTR_THROTTLE_PASSWORD_RESET_PER_ADDRESS"
)
