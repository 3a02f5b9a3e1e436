"""Spent and reserved amounts per budget counter and period, shared by every worker and host.

A counter is one Redis hash (``spent``, ``reserved``, in nano-dollars as integers) per budget,
period and, for ``each_customer``, customer; each request's hold on it is kept by id and lapses
after ``HOLD_SECONDS`` if it is never settled (a killed worker, a settlement the store missed).
Reserving checks every counter a request falls under and reserves on all of them in one script,
so two workers can never both take the last dollar (the check-then-increment race of proxies
that read, then write). Settlements are sent a few at a time (``settle_soon``). Without Redis
(the embedded mode, one process) the same operations run on a dict under a lock.

A counter that does not exist (a new period, a restart of the embedded mode, a Redis flush) is
reported as such, and the guard seeds it from the database (``apps.budgets.spend``) before it
reserves: spend survives the loss of the store. The store's own trouble is reported as
``StoreUnavailable``; after a failure it is left alone for a moment (``costr.throttle``'s
``StoreHealth``), so a stalled Redis costs requests nothing while it lasts.
"""

import asyncio
import contextlib
import functools
import hashlib
import logging
import threading
import time
from decimal import ROUND_CEILING, Decimal

from django.conf import settings
from redis.asyncio.connection import Connection, parse_url
from redis.exceptions import NoScriptError, ResponseError

from costr.throttle import StoreHealth

logger = logging.getLogger("costr.budgets.store")

NANO = Decimal("0.000000001")
KEY_PREFIX = "costr:budget"
OK, NEEDS_SEED, REFUSED = 0, 1, 2
# Connections to the store per worker's event loop; more commands at once wait for one.
MAX_CONNECTIONS = 64
# Alert-only counters are reserved on but never refuse.
NO_LIMIT = -1
# A request's hold lapses after this long without being settled (its worker was killed, or the
# store missed the settlement): it must not keep a budget blocked for the rest of its period. A
# request that runs longer (a very long stream) then holds nothing; its cost still counts when
# it ends.
HOLD_SECONDS = 3600
# Settlements are sent together, at most this long after the first of them.
SETTLE_LINGER_SECONDS = 0.005

# Each counter is a hash (``spent``, ``reserved``, and ``h:<hold id>`` = the amount each request
# holds) beside a sorted set ``<counter>:holds`` of hold ids by the time they lapse. The set's
# name is derived from the counter's, so it shares its Redis Cluster slot.
#
# KEYS: the counters. ARGV: amount, hold id, now, lapse time (Unix seconds), then the limit of
# each KEYS[i] (or -1). Returns {code, index of the counter that needs seeding or refused}.
_RESERVE = """
local amount, hold, now, lapse = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then return {1, i} end
end
for i, key in ipairs(KEYS) do
  local holds = key .. ':holds'
  for _, lapsed in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now)) do
    local held = tonumber(redis.call('HGET', key, 'h:' .. lapsed) or '0')
    redis.call('HDEL', key, 'h:' .. lapsed)
    redis.call('HINCRBY', key, 'reserved', -held)
    redis.call('ZREM', holds, lapsed)
  end
  local limit = tonumber(ARGV[4 + i])
  if limit >= 0 then
    local held = redis.call('HMGET', key, 'spent', 'reserved')
    if tonumber(held[1]) + tonumber(held[2]) + amount > limit then return {2, i} end
  end
end
for i, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'reserved', amount)
  redis.call('HSET', key, 'h:' .. hold, amount)
  redis.call('ZADD', key .. ':holds', lapse, hold)
  redis.call('EXPIRE', key .. ':holds', redis.call('TTL', key))
end
return {0, 0}
"""
# ARGV: hold id, amount spent, 1 to release the hold (0: a session's response, the hold stays).
# A hold that lapsed, or a counter that vanished (seeded again from the database, which will
# hold this spend once it is written), is left alone.
_SETTLE = """
local hold, spent, release = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    if release then
      local held = redis.call('HGET', key, 'h:' .. hold)
      if held then
        redis.call('HDEL', key, 'h:' .. hold)
        redis.call('HINCRBY', key, 'reserved', -tonumber(held))
        redis.call('ZREM', key .. ':holds', hold)
      end
    end
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
    # so one script can take them together. The customer is the client's own string: as a digest
    # it cannot end in ":holds" and name another counter's set of holds (a type error in the
    # script, which would count as the store failing, for every organization on the worker).
    if subject:
        subject = hashlib.blake2b(subject.encode(), digest_size=16).hexdigest()
    return f"{KEY_PREFIX}:{{{organization_id}}}:{rule_id}:{period}:{start}:{subject}"


class RedisStore:
    def __init__(self, url: str, timeout: float):
        self.url = url
        self.timeout = timeout
        self.health = StoreHealth(logger, "budget store")
        # Per event loop (a worker has one): its client and the scripts registered on it, so a
        # call sends the script's SHA1 (EVALSHA), not its text; and its settlements waiting to
        # be sent together.
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._sync_client = None

    def _state(self) -> "_LoopState":
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(self.url, self.timeout)
        return state

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
            result = await self._state().connections.eval(script, keys, args)
        except ResponseError as error:
            # Redis answered, refusing this call (a key of the wrong type, say): this request
            # cannot be checked, but the store is up for everyone else's.
            logger.error("the budget store refused a call: %s", type(error).__name__)
            raise StoreUnavailable(type(error).__name__) from error
        except Exception as error:
            self.health.failed(error)
            raise StoreUnavailable(type(error).__name__) from error
        self.health.answered()
        return result

    async def reserve(
        self, keys: list[str], amount: int, limits: list[int], hold: str, now: float
    ) -> tuple[int, int]:
        """Hold ``amount`` on every counter under ``hold`` (an id unique to the request), or
        none: (OK, -1), (NEEDS_SEED, i) or (REFUSED, i) for the first counter in the way."""
        lapse = int(now) + HOLD_SECONDS
        code, index = await self._eval(_RESERVE, keys, [amount, hold, now, lapse, *limits])
        return int(code), int(index) - 1

    async def settle(self, keys: list[str], hold: str, spent: int, release: bool = True) -> None:
        """Add ``spent`` to the counters and (``release``) drop the request's hold."""
        await self._eval(_SETTLE, keys, [hold, spent, int(release)])

    def settle_soon(self, keys: list[str], hold: str, spent: int, release: bool = True) -> None:
        """``settle``, sent within ``SETTLE_LINGER_SECONDS`` together with the other
        settlements of this worker: one round trip for many requests."""
        state = self._state()
        state.pending.append((keys, [hold, spent, int(release)]))
        if state.flusher is None:
            state.flusher = asyncio.get_running_loop().create_task(self._flush(state))

    async def _flush(self, state: "_LoopState") -> None:
        await asyncio.sleep(SETTLE_LINGER_SECONDS)
        pending, state.pending, state.flusher = state.pending, [], None
        if not self.health.available():
            return  # the holds lapse; the reconciling task brings spend up from the database
        try:
            await state.connections.eval_many(_SETTLE, pending)
        except Exception as error:
            self.health.failed(error)
            return
        self.health.answered()

    async def settled(self) -> None:
        """Wait until the settlements handed over so far have been sent (tests, shutdown)."""
        state = self._state()
        while state.flusher is not None:
            await asyncio.shield(state.flusher)

    async def seed(self, key: str, spent: int, ttl: int) -> None:
        await self._eval(_SEED, [key], [spent, ttl])

    def seed_sync(self, key: str, spent: int, ttl: int) -> None:
        """``seed`` for synchronous callers (the reconciling task)."""
        try:
            self._client().eval(_SEED, 1, key, spent, ttl)
        except Exception as error:
            raise StoreUnavailable(type(error).__name__) from error

    def read(self, keys: list[str]) -> list[tuple[int, int] | None]:
        """(spent, reserved) of each counter, None for one that does not exist. A store that
        failed a moment ago is not asked (a page showing budgets does not wait on it)."""
        if not self.health.available():
            raise StoreUnavailable("the budget store failed a moment ago")
        try:
            pipe = self._client().pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, "spent", "reserved")
            found = pipe.execute()
        except Exception as error:
            self.health.failed(error)
            raise StoreUnavailable(type(error).__name__) from error
        self.health.answered()
        return [
            (int(spent), int(reserved)) if spent is not None else None for spent, reserved in found
        ]


class _LoopState:
    """A RedisStore's connections and pending settlements on one event loop."""

    def __init__(self, url: str, timeout: float):
        self.connections = _Connections(url, timeout)
        self.pending: list[tuple[list[str], list]] = []
        self.flusher: asyncio.Task | None = None


class _Connections:
    """Connections to the store for one event loop, used the shortest way redis-py allows.

    The proxy makes one call per budgeted request, so what a call costs is what a budget costs:
    through redis-py's client (its retry wrapper, its blocking pool's timeout and condition, its
    script objects) a call took about 100 µs of CPU here, on redis-py's own connections a third
    less; and the calls of concurrent requests go out together (``eval``). At most
    ``MAX_CONNECTIONS`` round trips run at once; more wait for a connection within the store
    timeout. A connection whose round trip failed is closed, never reused.
    """

    def __init__(self, url: str, timeout: float):
        options = parse_url(url)
        connection_class = options.pop("connection_class", Connection)
        self._new = functools.partial(
            connection_class, **options, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._idle: list[Connection] = []
        # Calls of this turn of the loop, waiting to be sent together: (script, command, answer).
        self._waiting: list[tuple[str, tuple, asyncio.Future]] = []
        self._sending: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._timeout = timeout
        self._shas = {
            source: hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 -- Redis's script id
            for source in (_RESERVE, _SETTLE, _SEED)
        }

    @contextlib.asynccontextmanager
    async def _connection(self):
        if self._slots.locked():
            await asyncio.wait_for(self._slots.acquire(), self._timeout)
        else:
            await self._slots.acquire()
        try:
            connection = self._idle.pop() if self._idle else self._new()
            try:
                yield connection
            except BaseException:
                await connection.disconnect()
                raise
            self._idle.append(connection)
        finally:
            self._slots.release()

    async def eval(self, script: str, keys: list[str], args: list):
        """``script`` on ``keys`` and ``args``. The calls made in one turn of the event loop go
        out together, in one round trip on one connection (the concurrent requests of a busy
        worker), their answers handed back to each in order."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._waiting.append(
            (script, ("EVALSHA", self._shas[script], len(keys), *keys, *args), answer)
        )
        if len(self._waiting) == 1:
            loop.call_soon(self._send_waiting)
        return await answer

    def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        sending = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _send(self, batch: list) -> None:
        try:
            async with self._connection() as connection:
                replies = await self._round_trip(connection, [command for _, command, _ in batch])
                lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if lost:  # Redis lost its scripts (a restart): load them, send those again
                    for script in {batch[i][0] for i in lost}:
                        await connection.send_command("SCRIPT", "LOAD", script)
                        await connection.read_response()
                    again = await self._round_trip(connection, [batch[i][1] for i in lost])
                    for i, reply in zip(lost, again, strict=True):
                        replies[i] = reply
        except BaseException as error:
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (_, _, answer), reply in zip(batch, replies, strict=True):
            if answer.done():
                continue  # its request went away meanwhile
            if isinstance(reply, Exception):
                answer.set_exception(reply)
            else:
                answer.set_result(reply)

    @staticmethod
    async def _round_trip(connection, commands: list) -> list:
        """Send ``commands`` at once; their replies in order, an error reply as its exception
        (redis-py reads it whole, so the connection stays in step)."""
        await connection.send_packed_command(connection.pack_commands(commands))
        replies = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as refused:
                replies.append(refused)
        return replies

    async def eval_many(self, script: str, calls: list[tuple[list[str], list]]) -> None:
        """``script`` once per (keys, args), together with the other calls of this turn of the
        event loop; raises the first error reply, if any."""
        replies = await asyncio.gather(
            *(self.eval(script, keys, args) for keys, args in calls), return_exceptions=True
        )
        failed = next((reply for reply in replies if isinstance(reply, BaseException)), None)
        if failed is not None:
            raise failed


class MemoryStore:
    """The store of the embedded mode: one process, so process memory is shared by all."""

    def __init__(self):
        # key → _Counter; its holds lapse as in Redis
        self._counters: dict[str, _Counter] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> "_Counter | None":
        counter = self._counters.get(key)
        if counter is not None and counter.expires <= time.monotonic():
            del self._counters[key]
            return None
        return counter

    async def reserve(
        self, keys: list[str], amount: int, limits: list[int], hold: str, now: float
    ) -> tuple[int, int]:
        with self._lock:
            counters = [self._live(key) for key in keys]
            for index, counter in enumerate(counters):
                if counter is None:
                    return NEEDS_SEED, index
            for index, (counter, limit) in enumerate(zip(counters, limits, strict=True)):
                counter.drop_lapsed(now)
                if limit >= 0 and counter.spent + counter.reserved + amount > limit:
                    return REFUSED, index
            for counter in counters:
                counter.reserved += amount
                counter.holds[hold] = (amount, now + HOLD_SECONDS)
            return OK, -1

    async def settle(self, keys: list[str], hold: str, spent: int, release: bool = True) -> None:
        self.settle_soon(keys, hold, spent, release)

    def settle_soon(self, keys: list[str], hold: str, spent: int, release: bool = True) -> None:
        with self._lock:
            for key in keys:
                counter = self._live(key)
                if counter is None:
                    continue
                if release and hold in counter.holds:
                    counter.reserved -= counter.holds.pop(hold)[0]
                counter.spent += spent

    async def settled(self) -> None:
        return None

    async def seed(self, key: str, spent: int, ttl: int) -> None:
        self.seed_sync(key, spent, ttl)

    def seed_sync(self, key: str, spent: int, ttl: int) -> None:
        with self._lock:
            counter = self._live(key)
            if counter is None:
                # A new counter (a new period, a new customer): past periods' counters go, as
                # Redis expires them, rather than waiting for a read that never comes.
                now = time.monotonic()
                for stale in [k for k, c in self._counters.items() if c.expires <= now]:
                    del self._counters[stale]
                self._counters[key] = _Counter(spent, now + ttl)
            elif counter.spent < spent:
                counter.spent = spent

    def read(self, keys: list[str]) -> list[tuple[int, int] | None]:
        with self._lock:
            return [
                (counter.spent, counter.reserved)
                if (counter := self._live(key)) is not None
                else None
                for key in keys
            ]


class _Counter:
    __slots__ = ("expires", "holds", "reserved", "spent")

    def __init__(self, spent: int, expires: float):
        self.spent, self.reserved, self.expires = spent, 0, expires
        self.holds: dict[str, tuple[int, float]] = {}  # hold id → (amount, lapses at)

    def drop_lapsed(self, now: float) -> None:
        for hold, (amount, lapses) in list(self.holds.items()):
            if lapses <= now:
                del self.holds[hold]
                self.reserved -= amount


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
