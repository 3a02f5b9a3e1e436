"""What the proxy calls: reserve a request's upper estimate before forwarding it, settle the
reservation with its actual cost when it ends (DESIGN.md, "Budgets, limits and alerts").

``admit`` is only reached for an organization that has budgets (``ResolvedToken.budgets`` is
None otherwise, and the proxy does nothing). It returns None when the request falls under no
budget, or the store could not be reached and no budget it falls under is fail-closed; raises
``BudgetRefused`` when it may not go; else returns the ``Reservation`` to settle.

Because every counter a request falls under is checked and reserved in one step, and each
reservation is an upper estimate of the request's cost, the spend admitted in a period stays
within the limit; only an estimate below the actual cost (a provider changing its prices, a
token counted differently) can let one request's difference past it.
"""

import asyncio
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from asgiref.sync import sync_to_async

from apps.budgets.estimate import MICRO, estimate_cost, provider_ceiling
from apps.budgets.policy import Match, Period, Policy, period_of
from apps.budgets.store import (
    NEEDS_SEED,
    NO_LIMIT,
    OK,
    REFUSED,
    StoreUnavailable,
    counter_key,
    get_store,
    nano,
)
from apps.usage.metering.contract import NON_BILLABLE_ENDPOINTS
from apps.usage.pricing import PER_MILLION, price_tokens
from costr.db import run_outside_request

logger = logging.getLogger("costr.budgets")

# A counter is kept this long past its period's end (the budgets page reads the last period).
KEEP_AFTER_PERIOD_SECONDS = 2 * 86_400
# How long a request waits for a missing counter's spend to be read from the database.
SEED_DEADLINE_SECONDS = 2.0
# Seconds a client is told to wait when a fail-closed budget cannot be checked.
UNAVAILABLE_RETRY_SECONDS = 5


class BudgetRefused(Exception):
    def __init__(self, code: str, budget_id: str, retry_after: int, message: str):
        super().__init__(message)
        self.code, self.budget_id, self.retry_after, self.message = (
            code,
            budget_id,
            retry_after,
            message,
        )


@dataclass(slots=True)
class Reservation:
    policy: Policy
    keys: list[str]
    hold: str  # the id of the request's hold on its counters
    estimate: Decimal
    provider: str
    now: datetime
    matches: list[Match] = field(default_factory=list)
    settled: bool = field(default=False)


async def admit(
    policy: Policy,
    *,
    token_id: int,
    customer: str | None,
    properties: dict,
    provider: str,
    endpoint: str,
    model: str,
    body: bytes | None,
    body_size: int,
    now: datetime,
    document: dict | None = None,
) -> Reservation | None:
    if endpoint in NON_BILLABLE_ENDPOINTS:
        return None
    matches = policy.matches(token_id, customer, properties)
    if not matches:
        return None
    estimate = estimate_cost(
        provider=provider,
        endpoint=endpoint,
        model=model,
        body=body,
        body_size=body_size,
        overrides=policy.overrides,
        now=now,
        document=document,
    )
    return await reserve(policy, matches, estimate, provider, now)


async def admit_session(
    policy: Policy,
    *,
    token_id: int,
    customer: str | None,
    properties: dict,
    provider: str,
    now: datetime,
) -> Reservation | None:
    """A WebSocket session: admitted while every budget it falls under has room left (a
    reservation of one micro-dollar, held until it ends); each of its responses is then counted
    as it finishes (``charge``). A session is one request: what it spends past the limit is
    that one session's."""
    matches = policy.matches(token_id, customer, properties)
    if not matches:
        return None
    return await reserve(policy, matches, MICRO, provider, now)


def _periods(policy: Policy, matches: list[Match], now: datetime) -> dict[str, Period]:
    return {kind: period_of(kind, policy.zone, now) for kind in {m.rule.period for m in matches}}


def _keys(policy: Policy, matches: list[Match], periods: dict[str, Period]) -> list[str]:
    return [
        counter_key(
            policy.organization_id, m.rule.id, m.rule.period, periods[m.rule.period].key, m.subject
        )
        for m in matches
    ]


async def reserve(
    policy: Policy, matches: list[Match], estimate: Decimal, provider: str, now: datetime
) -> Reservation | None:
    """Reserve ``estimate`` on every counter of ``matches`` at once (see ``admit``)."""
    periods = _periods(policy, matches, now)
    keys = _keys(policy, matches, periods)
    limits = [nano(m.rule.limit) if m.rule.enforce else NO_LIMIT for m in matches]
    amount, hold = nano(estimate), os.urandom(8).hex()
    store = get_store()
    try:
        for _ in range(len(keys) + 2):  # each counter may need seeding once
            code, index = await store.reserve(keys, amount, limits, hold, now.timestamp())
            if code == OK:
                return Reservation(policy, keys, hold, estimate, provider, now, matches)
            match = matches[index]
            period = periods[match.rule.period]
            if code == REFUSED:
                raise BudgetRefused(
                    "budget_exceeded",
                    match.rule.id,
                    period.seconds_left(now),
                    f"This request would take budget {match.rule.id} past its limit of "
                    f"${match.rule.limit.normalize():f} for the {match.rule.period}.",
                )
            if code == NEEDS_SEED:
                await _seed(store, policy.organization_id, match, period, keys[index], now)
        raise StoreUnavailable("a counter vanished as soon as it was seeded")
    except StoreUnavailable as error:
        closed = next((m for m in matches if m.rule.enforce and m.rule.fail_closed), None)
        if closed is not None:
            raise BudgetRefused(
                "budget_unavailable",
                closed.rule.id,
                UNAVAILABLE_RETRY_SECONDS,
                f"Budget {closed.rule.id} cannot be checked right now and is set to refuse "
                "requests meanwhile (fail-closed).",
            ) from error
        _note_fail_open(error)
        return None


_fail_open_logged_at = 0.0


def _note_fail_open(error: Exception) -> None:
    """Log that requests go unchecked, at most once a minute per process."""
    global _fail_open_logged_at
    now = time.monotonic()
    if now - _fail_open_logged_at >= 60:
        _fail_open_logged_at = now
        logger.warning(
            "budget store unavailable (%s): requests are forwarded unchecked (fail-open) and "
            "their spend is counted from the database when it answers again",
            type(error).__name__,
        )


# Seeds in flight per (event loop, counter): requests that miss the same counter together
# wait for one read of the database.
_seeds: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future] = {}


async def _seed(store, organization_id: int, match: Match, period: Period, key: str, now) -> None:
    loop = asyncio.get_running_loop()
    seeding = _seeds.get((loop, key))
    if seeding is None:
        seeding = asyncio.ensure_future(_seed_once(store, organization_id, match, period, key, now))
        _seeds[(loop, key)] = seeding
        seeding.add_done_callback(lambda _: _seeds.pop((loop, key), None))
    try:
        await asyncio.wait_for(asyncio.shield(seeding), SEED_DEADLINE_SECONDS)
    except StoreUnavailable:
        raise
    except Exception as error:  # the database did not answer in time, or failed
        raise StoreUnavailable(
            f"seeding from the database failed: {type(error).__name__}"
        ) from error


async def _seed_once(store, organization_id, match: Match, period: Period, key: str, now) -> None:
    from apps.budgets.spend import match_spend

    read = functools.partial(match_spend, organization_id, match, period)
    spent = await sync_to_async(run_outside_request)(read, idempotent=True)
    ttl = int((period.end - now).total_seconds()) + KEEP_AFTER_PERIOD_SECONDS
    await store.seed(key, nano(spent), ttl)


def settle(reservation: Reservation, record: dict) -> None:
    """Replace the reservation with the request's actual cost (also after an error or a client
    that left): handed to the store, which sends it with others, never waited for."""
    if reservation.settled:
        return
    reservation.settled = True
    if record.get("billable") is False and (record.get("status") or 0) < 400:
        # Work the provider goes on with after answering (a background response, whose usage
        # comes with a later retrieve): the hold stays until it lapses (``store.HOLD_SECONDS``),
        # and the reconciling task adds the usage to the counter once it is stored.
        return
    spent = nano(actual_cost(reservation, record))
    get_store().settle_soon(reservation.keys, reservation.hold, spent)


def charge(reservation: Reservation, record: dict) -> None:
    """Count one finished response of a session against its budgets, keeping its hold."""
    spent = nano(actual_cost(reservation, record, unknown=Decimal(0)))
    if not spent:
        return
    # A session that runs past midnight (or a month's end) spends in the period it is in now:
    # that period's counters (one not made yet gets this spend from the database when seeded).
    policy, matches = reservation.policy, reservation.matches
    keys = _keys(policy, matches, _periods(policy, matches, datetime.now(UTC)))
    get_store().settle_soon(keys, reservation.hold, spent, release=False)


def release(reservation: Reservation) -> None:
    """Give the reservation back: the request was never forwarded (or the session ended)."""
    if reservation.settled:
        return
    reservation.settled = True
    get_store().settle_soon(reservation.keys, reservation.hold, 0)


def actual_cost(reservation: Reservation, record: dict, unknown: Decimal | None = None) -> Decimal:
    """What the request counts against its budgets: its price when its usage is known (at the
    provider's highest prices for a model nothing prices); when the provider answered it
    (status below 400) but no usage was read, even if the answer was cut off (the provider may
    well bill it), ``unknown``, by default its reservation; nothing when the provider refused it
    or it bills nothing."""
    if unknown is None:
        unknown = reservation.estimate
    tokens = [record.get(name) for name in ("input_tokens", "output_tokens")]
    details = record.get("usage_details")
    if record.get("billable") is False:
        return Decimal(0)
    if any(count is not None for count in tokens) or details:
        cost, _ = price_tokens(
            reservation.provider,
            record.get("model") or "",
            record.get("input_tokens"),
            record.get("cached_input_tokens"),
            record.get("cache_write_tokens"),
            record.get("cache_write_1h_tokens"),
            record.get("output_tokens"),
            reservation.now,
            record.get("service_tier") or "",
            reservation.policy.overrides,
            details,
        )
        if cost is not None:
            return cost
        ceiling_in, ceiling_out = provider_ceiling(reservation.provider)
        known = (tokens[0] or 0) * ceiling_in + (tokens[1] or 0) * ceiling_out
        return known / PER_MILLION if known else unknown
    # No usage seen. An answer the provider began (a status below 400) may be billed in full
    # even if it was cut off (by the upstream, Costr or the client); one it refused is not.
    status = record.get("status") or 0
    return unknown if 0 < status < 400 else Decimal(0)
