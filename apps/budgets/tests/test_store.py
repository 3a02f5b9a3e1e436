"""The store of spent and reserved amounts (apps/budgets/store.py), Redis and in-process alike:
reserving is all-or-nothing across a request's counters, never lets concurrent requests past a
limit together, and a missing counter is reported for seeding rather than taken as zero.

Redis is a redis-server of this module's own (``tests.outage.RedisServer``), so it can be
stopped without touching anyone else's."""

import asyncio
import uuid

import pytest
from django.test import override_settings

from apps.budgets import store as store_module
from apps.budgets.store import (
    HOLD_SECONDS,
    NEEDS_SEED,
    NO_LIMIT,
    OK,
    REFUSED,
    MemoryStore,
    RedisStore,
    StoreUnavailable,
    counter_key,
    nano,
    usd,
)
from tests.outage import RedisServer, free_port


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("budget-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "memory"])
def store(request, redis_server):
    if request.param == "redis":
        return RedisStore(redis_server.url, timeout=0.5)
    return MemoryStore()


NOW = 1_800_000_000.0  # Unix seconds
_holds = iter(range(10**9))


def _reserve(store, keys, amount, limits, *, hold=None, now=NOW):
    return asyncio.run(store.reserve(keys, amount, limits, hold or f"h{next(_holds)}", now))


def _keys(n: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [counter_key(1, f"bud_{run}{i}", "day", "2026-12-07", "") for i in range(n)]


def test_amounts_are_whole_nano_dollars_rounded_up():
    from decimal import Decimal

    assert nano(Decimal("0.000000001")) == 1
    assert nano(Decimal("0.0000000011")) == 2  # never below what was spent
    assert nano(Decimal("12.5")) == 12_500_000_000
    assert usd(12_500_000_001) == Decimal("12.500000001")


def test_a_missing_counter_is_reported_for_seeding_and_nothing_is_reserved(store):
    first, second = _keys(2)
    asyncio.run(store.seed(first, 0, 60))
    assert _reserve(store, [first, second], 10, [100, 100]) == (NEEDS_SEED, 1)
    assert store.read([first, second]) == [(0, 0), None]


def test_reserving_is_all_or_nothing_across_counters(store):
    roomy, tight = _keys(2)
    asyncio.run(store.seed(roomy, 0, 60))
    asyncio.run(store.seed(tight, 95, 60))
    assert _reserve(store, [roomy, tight], 10, [1000, 100]) == (REFUSED, 1)
    assert store.read([roomy, tight]) == [(0, 0), (95, 0)]
    assert _reserve(store, [roomy, tight], 5, [1000, 100]) == (OK, -1)
    assert store.read([roomy, tight]) == [(0, 5), (95, 5)]


def test_an_alert_only_counter_is_reserved_on_but_never_refuses(store):
    (key,) = _keys(1)
    asyncio.run(store.seed(key, 10**12, 60))
    assert _reserve(store, [key], 10, [NO_LIMIT]) == (OK, -1)
    assert store.read([key]) == [(10**12, 10)]


def test_settling_replaces_the_hold_with_the_spend(store):
    (key,) = _keys(1)
    asyncio.run(store.seed(key, 0, 60))
    _reserve(store, [key], 50, [100], hold="first")
    _reserve(store, [key], 40, [100], hold="second")
    assert _reserve(store, [key], 20, [100]) == (REFUSED, 0)  # 50 + 40 + 20 > 100
    asyncio.run(store.settle([key], "first", 12))
    assert store.read([key]) == [(12, 40)]
    # Settling the same hold again, or one the counter never had (it was lost and seeded
    # again meanwhile), releases nothing more.
    asyncio.run(store.settle([key], "first", 0))
    asyncio.run(store.settle([key], "unknown", 0))
    assert store.read([key]) == [(12, 40)]
    # A session's response: spend counted, its hold kept.
    asyncio.run(store.settle([key], "second", 5, release=False))
    assert store.read([key]) == [(17, 40)]


def test_settlements_handed_over_together_are_all_applied(store):
    keys = _keys(3)
    for key in keys:
        asyncio.run(store.seed(key, 0, 60))

    async def many():
        for number in range(30):
            await store.reserve(keys, 10, [1000] * 3, f"m{number}", NOW)
        for number in range(30):
            store.settle_soon(keys, f"m{number}", 3)
        await store.settled()

    asyncio.run(many())
    assert store.read(keys) == [(90, 0)] * 3


def test_a_hold_never_settled_lapses_and_frees_the_budget(store):
    (key,) = _keys(1)
    asyncio.run(store.seed(key, 0, 2 * HOLD_SECONDS))
    _reserve(store, [key], 90, [100], hold="killed-worker")
    assert _reserve(store, [key], 20, [100], now=NOW + HOLD_SECONDS - 1) == (REFUSED, 0)
    assert _reserve(store, [key], 20, [100], now=NOW + HOLD_SECONDS) == (OK, -1)
    assert store.read([key]) == [(0, 20)]
    # Its settlement, if it ever comes, still counts what the request cost.
    asyncio.run(store.settle([key], "killed-worker", 7))
    assert store.read([key]) == [(7, 20)]


def test_seeding_an_existing_counter_only_raises_its_spend(store):
    (key,) = _keys(1)
    asyncio.run(store.seed(key, 30, 60))
    asyncio.run(store.seed(key, 10, 60))
    assert store.read([key]) == [(30, 0)]
    store.seed_sync(key, 45, 60)
    assert store.read([key]) == [(45, 0)]


def test_concurrent_requests_never_reserve_past_the_limit_together(store):
    """200 at once: more than a worker has connections to the store, so some wait for one."""
    (key,) = _keys(1)
    asyncio.run(store.seed(key, 0, 60))

    async def race():
        return await asyncio.gather(
            *(store.reserve([key], 7, [100], f"r{number}", NOW) for number in range(200))
        )

    answers = asyncio.run(race())
    assert sum(code == OK for code, _ in answers) == 14  # 14 x 7 = 98; a 15th would be 105
    assert store.read([key]) == [(0, 98)]


def test_a_store_that_does_not_answer_is_unavailable_and_then_skipped_for_a_moment():
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    (key,) = _keys(1)
    with pytest.raises(StoreUnavailable):
        asyncio.run(dead.reserve([key], 1, [10], "h", NOW))
    # Left alone after failing: the next call does not wait for a connection at all.
    with pytest.raises(StoreUnavailable, match="failed a moment ago"):
        asyncio.run(dead.reserve([key], 1, [10], "h", NOW))
    with pytest.raises(StoreUnavailable, match="failed a moment ago"):
        dead.read([key])  # a page reading budgets does not wait on it either


def test_the_process_store_follows_redis_url():
    with override_settings(REDIS_URL=""):
        assert isinstance(store_module.get_store(), MemoryStore)
    with override_settings(REDIS_URL="redis://127.0.0.1:6399/0"):
        assert isinstance(store_module.get_store(), RedisStore)


def test_settlements_still_apply_after_redis_forgot_its_scripts(redis_server):
    import redis

    store = RedisStore(redis_server.url, timeout=0.5)
    (key,) = _keys(1)

    async def scenario():
        await store.seed(key, 0, 60)
        await store.reserve([key], 10, [100], "before", NOW)
        redis.Redis.from_url(redis_server.url).script_flush()  # as after a restart
        store.settle_soon([key], "before", 4)
        await store.settled()

    asyncio.run(scenario())
    assert store.read([key]) == [(4, 0)]


def test_a_customer_named_like_another_counters_holds_is_a_counter_of_its_own(store):
    """Customer ids are the client's strings: "acme:holds" must not name the set of holds of
    customer "acme" (on Redis, a type error that counts as the store failing, for everyone)."""
    run = uuid.uuid4().hex[:8]
    acme, twin = (
        counter_key(1, f"bud_{run}", "day", "2026-12-07", c) for c in ("acme", "acme:holds")
    )
    assert acme != twin and not twin.startswith(acme)
    for key in (acme, twin):
        asyncio.run(store.seed(key, 0, 60))
    assert _reserve(store, [acme], 10, [100]) == (OK, -1)
    assert _reserve(store, [twin], 10, [100]) == (OK, -1)
    assert store.read([acme, twin]) == [(0, 10), (0, 10)]


def test_a_call_redis_refuses_fails_that_call_only_not_the_store(redis_server):
    import redis

    store = RedisStore(redis_server.url, timeout=0.5)
    broken, fine = _keys(2)
    redis.Redis.from_url(redis_server.url).set(broken, "not a counter")  # a key of another type
    asyncio.run(store.seed(fine, 0, 60))
    with pytest.raises(StoreUnavailable):
        _reserve(store, [broken], 1, [10])
    assert _reserve(store, [fine], 1, [10]) == (OK, -1)  # not left alone for a moment


def test_the_memory_store_drops_past_periods_counters_when_it_makes_a_new_one():
    store = MemoryStore()
    old, new = _keys(2)
    asyncio.run(store.seed(old, 5, 0))  # a counter whose period has ended (kept 0 s more)
    asyncio.run(store.seed(new, 0, 60))
    assert old not in store._counters and new in store._counters
