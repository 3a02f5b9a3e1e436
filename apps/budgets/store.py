"""Spent and reserved amounts per budget counter and period, shared by every worker and host.

A counter is one Redis hash (``spent``, ``reserved``, in nano-dollars as integers) per budget,
period and, for ``each_customer``, customer. Reserving checks every counter a request falls
under and reserves on all of them in one script, so two workers can never both take the last
dollar (the check-then-increment race of proxies that read, then write). Without Redis (the
embedded mode, one process) the same operations run on a dict under a lock.

A counter that does not exist (a new period, a restart of the embedded mode, a Redis flush) is
reported as such, and the guard seeds it from the database (``apps.budgets.spend``) before it
reserves: spend survives the loss of the store. The store's own trouble is reported as
``StoreUnavailable``; after a failure it is left alone for a moment (``costr.throttle``'s
``StoreHealth``), so a stalled Redis costs requests nothing while it lasts.
"""

import asyncio
import logging
import threading
import time
from decimal import ROUND_CEILING, Decimal

from django.conf import settings

from costr.throttle import StoreHealth

logger = logging.getLogger("costr.budgets.store")

NANO = Decimal("0.000000001")
KEY_PREFIX = "costr:budget"
OK, NEEDS_SEED, REFUSED = 0, 1, 2
# Connections to the store per worker's event loop; more commands at once wait for one.
MAX_CONNECTIONS = 64
# Alert-only counters are reserved on but never refuse.
NO_LIMIT = -1

# KEYS: the counters. ARGV[1]: the amount; ARGV[1 + i]: the limit of KEYS[i], or -1.
# Returns {code, index of the counter that needs seeding or refused}.
_RESERVE = """
local amount = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then return {1, i} end
end
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + i])
  if limit >= 0 then
    local held = redis.call('HMGET', key, 'spent', 'reserved')
    if tonumber(held[1]) + tonumber(held[2]) + amount > limit then return {2, i} end
  end
end
for i, key in ipairs(KEYS) do redis.call('HINCRBY', key, 'reserved', amount) end
return {0, 0}
"""
# ARGV[1]: the amount reserved, ARGV[2]: the amount spent. A counter that vanished meanwhile is
# left alone (its seed from the database will hold the spend once written).
_SETTLE = """
local reserved, spent = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local left = tonumber(redis.call('HGET', key, 'reserved')) - reserved
    if left < 0 then left = 0 end
    redis.call('HSET', key, 'reserved', left)
    if spent > 0 then redis.call('HINCRBY', key, 'spent', spent) end
  end
end
return 0
"""
# KEYS[1]; ARGV[1]: spent per the database, ARGV[2]: seconds to keep the counter. Creates the
# counter if missing; else raises its spend to the database's when that is higher (spend the
# proxy never saw: batch results, events the SDK reported while Costr was down).
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
if tonumber(redis.call('HGET', KEYS[1], 'spent')) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1])
end
return 0
"""


class StoreUnavailable(Exception):
    """The budget store did not answer (or was left alone after failing a moment ago)."""


def nano(amount: Decimal) -> int:
    """USD as whole nano-dollars, rounded up: a counter never holds less than was spent."""
    return int(amount.quantize(NANO, rounding=ROUND_CEILING) / NANO)


def usd(nanos: int) -> Decimal:
    return (Decimal(nanos) * NANO).quantize(NANO)


def counter_key(organization_id: int, rule_id: str, period: str, start: str, subject: str) -> str:
    """The counter of a budget (``rule_id``) in the ``period`` ("day" or "month") that begins on
    ``start`` (ISO date), for ``subject`` (an each_customer budget's customer, else "")."""
    # The organization in braces: one Redis Cluster slot holds all of an organization's counters,
    # so one script can take them together.
    return f"{KEY_PREFIX}:{{{organization_id}}}:{rule_id}:{period}:{start}:{subject}"


class RedisStore:
    def __init__(self, url: str, timeout: float):
        self.url = url
        self.timeout = timeout
        self.health = StoreHealth(logger, "budget store")
        # Per event loop (a worker has one): the scripts, registered on its own client, so a
        # call sends the script's SHA1 (EVALSHA), not its text.
        self._async_scripts: dict[asyncio.AbstractEventLoop, dict[str, object]] = {}
        self._sync_client = None

    def _ascript(self, script: str):
        import redis.asyncio

        loop = asyncio.get_running_loop()
        scripts = self._async_scripts.get(loop)
        if scripts is None:
            # A blocking pool: past MAX_CONNECTIONS commands in flight, a request waits (within
            # the store timeout) for a connection. redis-py's default pool raises at once
            # instead, which a burst of requests took for the store being down.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url,
                max_connections=MAX_CONNECTIONS,
                timeout=self.timeout,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
            client = redis.asyncio.Redis(connection_pool=pool)
            scripts = self._async_scripts[loop] = {
                source: client.register_script(source) for source in (_RESERVE, _SETTLE, _SEED)
            }
        return scripts[script]

    def _client(self):
        import redis

        if self._sync_client is None:
            self._sync_client = redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
        return self._sync_client

    async def _eval(self, script: str, keys: list[str], args: list):
        if not self.health.available():
            raise StoreUnavailable("the budget store failed a moment ago")
        try:
            result = await self._ascript(script)(keys=keys, args=args)
        except Exception as error:
            self.health.failed(error)
            raise StoreUnavailable(type(error).__name__) from error
        self.health.answered()
        return result

    async def reserve(self, keys: list[str], amount: int, limits: list[int]) -> tuple[int, int]:
        code, index = await self._eval(_RESERVE, keys, [amount, *limits])
        return int(code), int(index) - 1

    async def settle(self, keys: list[str], reserved: int, spent: int) -> None:
        await self._eval(_SETTLE, keys, [reserved, spent])

    async def seed(self, key: str, spent: int, ttl: int) -> None:
        await self._eval(_SEED, [key], [spent, ttl])

    def seed_sync(self, key: str, spent: int, ttl: int) -> None:
        """``seed`` for synchronous callers (the reconciling task)."""
        try:
            self._client().eval(_SEED, 1, key, spent, ttl)
        except Exception as error:
            raise StoreUnavailable(type(error).__name__) from error

    def read(self, keys: list[str]) -> list[tuple[int, int] | None]:
        """(spent, reserved) of each counter, None for one that does not exist."""
        try:
            pipe = self._client().pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, "spent", "reserved")
            found = pipe.execute()
        except Exception as error:
            raise StoreUnavailable(type(error).__name__) from error
        return [
            (int(spent), int(reserved)) if spent is not None else None for spent, reserved in found
        ]


class MemoryStore:
    """The store of the embedded mode: one process, so process memory is shared by all."""

    def __init__(self):
        self._counters: dict[str, list] = {}  # key → [spent, reserved, expires (monotonic)]
        self._lock = threading.Lock()

    def _live(self, key: str) -> list | None:
        counter = self._counters.get(key)
        if counter is not None and counter[2] <= time.monotonic():
            del self._counters[key]
            return None
        return counter

    async def reserve(self, keys: list[str], amount: int, limits: list[int]) -> tuple[int, int]:
        with self._lock:
            counters = [self._live(key) for key in keys]
            for index, counter in enumerate(counters):
                if counter is None:
                    return NEEDS_SEED, index
            for index, (counter, limit) in enumerate(zip(counters, limits, strict=True)):
                if limit >= 0 and counter[0] + counter[1] + amount > limit:
                    return REFUSED, index
            for counter in counters:
                counter[1] += amount
            return OK, -1

    async def settle(self, keys: list[str], reserved: int, spent: int) -> None:
        with self._lock:
            for key in keys:
                counter = self._live(key)
                if counter is not None:
                    counter[1] = max(0, counter[1] - reserved)
                    counter[0] += spent

    async def seed(self, key: str, spent: int, ttl: int) -> None:
        self.seed_sync(key, spent, ttl)

    def seed_sync(self, key: str, spent: int, ttl: int) -> None:
        with self._lock:
            counter = self._live(key)
            if counter is None:
                self._counters[key] = [spent, 0, time.monotonic() + ttl]
            elif counter[0] < spent:
                counter[0] = spent

    def read(self, keys: list[str]) -> list[tuple[int, int] | None]:
        with self._lock:
            return [
                (counter[0], counter[1]) if (counter := self._live(key)) is not None else None
                for key in keys
            ]


_store: RedisStore | MemoryStore | None = None
_store_lock = threading.Lock()


def get_store() -> RedisStore | MemoryStore:
    """This process's store: Redis when ``REDIS_URL`` is set, else process memory."""
    global _store
    store = _store
    url = settings.REDIS_URL
    if store is None or getattr(store, "url", "") != url:
        with _store_lock:
            store = _store
            if store is None or getattr(store, "url", "") != url:
                store = _store = (
                    RedisStore(url, settings.COSTR_BUDGET_STORE_TIMEOUT_SECONDS)
                    if url
                    else MemoryStore()
                )
    return store
