"""What the proxy calls (apps/budgets/guard.py), on real stores and a real database: counters
seeded from what the database holds, fail-open and fail-closed when the store does not answer,
an each_customer default that yields to a customer's own budget, and what a finished request
counts against its budgets. Costs are worked by hand (gpt-4o-mini: $0.15 in, $0.60 out per
million tokens)."""

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.test import override_settings

from apps.accounts.tests.factories import OrganizationFactory
from apps.budgets import guard
from apps.budgets.policy import load_policy
from apps.budgets.services import budget_create
from apps.budgets.store import get_store
from apps.usage.tests.factories import store_usage
from tests.outage import free_port

pytestmark = pytest.mark.django_db(transaction=True)  # the guard reads from its own thread
NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
BODY = b'{"model":"gpt-4o-mini","messages":[],"max_tokens":100}'  # 55 bytes
ESTIMATE = Decimal("0.000069")  # (55 x 0.15 + 100 x 0.60) / 1e6 = 0.00006825, rounded up


def _admit(policy, customer="acme", **overrides):
    fields = {
        "token_id": 0,
        "customer": customer,
        "properties": {},
        "provider": "openai",
        "endpoint": "chat",
        "model": "gpt-4o-mini",
        "body": BODY,
        "body_size": len(BODY),
        "now": NOW,
        **overrides,
    }
    return asyncio.run(guard.admit(policy, **fields))


def _admitted(policy, attempts: int, customer="acme") -> int:
    """How many of ``attempts`` requests in a row are admitted (refused ones are not)."""
    count = 0
    for _ in range(attempts):
        try:
            _admit(policy, customer)
        except guard.BudgetRefused:
            continue
        count += 1
    return count


def _budget(org, **fields):
    return budget_create(organization=org, actor=None, **{"period": "month", **fields})


def test_an_organization_without_budgets_has_no_policy():
    org = OrganizationFactory()
    assert load_policy(org) is None
    _budget(org, scope="organization", limit_usd="5")
    assert load_policy(org) is not None


@override_settings(REDIS_URL="")
def test_a_new_counter_starts_from_the_spend_the_database_holds():
    org = OrganizationFactory()
    # $0.00021 each, this month: three leave $0.00037 of a $0.001 limit.
    for _ in range(3):
        store_usage(org, customer="acme", timestamp="2026-11-01T10:00:00+00:00")
    budget = _budget(org, scope="customer", customer="acme", limit_usd="0.001")
    policy = load_policy(org)
    # 0.00063 + 5 x 0.000069 = 0.000975 fits; a sixth would be 0.001044.
    assert _admitted(policy, 10) == 5
    with pytest.raises(guard.BudgetRefused) as refused:
        _admit(policy)
    assert (refused.value.code, refused.value.budget_id) == ("budget_exceeded", budget.public_id)
    # Seconds from 2026-11-02 12:00 UTC to the end of November.
    assert refused.value.retry_after == 28 * 86_400 + 12 * 3600


@override_settings(REDIS_URL="")
def test_settling_counts_the_actual_cost_and_frees_the_rest():
    org = OrganizationFactory()
    _budget(org, scope="customer", customer="acme", limit_usd="0.0002")
    policy = load_policy(org)
    first, second = _admit(policy), _admit(policy)
    assert first is not None and second is not None
    with pytest.raises(guard.BudgetRefused):
        _admit(policy)  # 3 x 0.000069 > 0.0002

    async def settle_both():
        # 10 in, 10 out: $0.0000075; the other request failed at the provider: nothing.
        guard.settle(first, {"input_tokens": 10, "output_tokens": 10, "model": "gpt-4o-mini"})
        guard.settle(second, {"status": 500, "outcome": "upstream_error"})
        await get_store().settled()

    asyncio.run(settle_both())
    assert _admitted(policy, 5) == 2  # 0.0000075 + 2 x 0.000069 fits, a third does not


@override_settings(REDIS_URL="")
def test_a_background_response_keeps_its_hold_until_its_usage_is_stored():
    org = OrganizationFactory()
    _budget(org, scope="customer", customer="acme", limit_usd="0.0002")
    policy = load_policy(org)
    created = _admit(policy)

    async def settle_created():
        # The creating call's record: accepted (200), its usage to come with a retrieve.
        guard.settle(created, {"status": 200, "outcome": "ok", "billable": False})
        await get_store().settled()

    asyncio.run(settle_created())
    assert _admitted(policy, 5) == 1  # the background response still holds its estimate


@override_settings(REDIS_URL="")
def test_each_customer_gives_every_customer_its_own_cap_unless_it_has_its_own_budget():
    org = OrganizationFactory()
    default = _budget(org, scope="each_customer", limit_usd="0.0001")
    _budget(org, scope="customer", customer="vip", limit_usd="1")
    policy = load_policy(org)
    for customer in ("acme", "globex"):
        assert _admit(policy, customer) is not None
        with pytest.raises(guard.BudgetRefused) as refused:
            _admit(policy, customer)
        assert refused.value.budget_id == default.public_id
    assert all(_admit(policy, "vip") is not None for _ in range(5))
    assert _admit(policy, None) is None  # no customer: no each_customer counter


@override_settings(REDIS_URL="")
def test_alert_only_budgets_never_refuse_and_unbillable_endpoints_reserve_nothing():
    org = OrganizationFactory()
    _budget(org, scope="organization", limit_usd="0.0001", enforce=False)
    policy = load_policy(org)
    assert all(_admit(policy) is not None for _ in range(5))
    assert _admit(policy, endpoint="count_tokens") is None


def test_a_store_that_does_not_answer_fails_open_unless_the_budget_is_fail_closed():
    org = OrganizationFactory()
    closed = _budget(org, scope="customer", customer="strict", limit_usd="1", fail_closed=True)
    _budget(org, scope="customer", customer="lenient", limit_usd="1")
    policy = load_policy(org)
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        assert _admit(policy, "lenient") is None  # forwarded, unchecked
        with pytest.raises(guard.BudgetRefused) as refused:
            _admit(policy, "strict")
    assert refused.value.code == "budget_unavailable"
    assert refused.value.budget_id == closed.public_id
    assert refused.value.retry_after == guard.UNAVAILABLE_RETRY_SECONDS


def _reservation(estimate="0.5"):
    org = OrganizationFactory()
    _budget(org, scope="organization", limit_usd="100")
    return guard.Reservation(load_policy(org), [], "hold", Decimal(estimate), "openai", NOW)


def test_what_a_finished_request_counts_against_its_budgets():
    reservation = _reservation()
    priced = {"input_tokens": 1000, "output_tokens": 100, "model": "gpt-4o-mini", "status": 200}
    assert guard.actual_cost(reservation, priced) == Decimal("0.00021")
    # Usage of a model nothing prices: the provider's highest prices, per token.
    unpriced = {**priced, "model": "no-such-model"}
    ceiling_in, ceiling_out = guard.provider_ceiling("openai")
    assert guard.actual_cost(reservation, unpriced) == (1000 * ceiling_in + 100 * ceiling_out) / (
        10**6
    )
    # Succeeded without readable usage: the provider may bill it, so the reservation stands.
    assert guard.actual_cost(reservation, {"status": 200, "outcome": "ok"}) == Decimal("0.5")
    assert guard.actual_cost(reservation, {"status": 200, "outcome": "client_disconnected"}) == (
        Decimal("0.5")
    )
    # Cut off after the provider began answering: it may bill the whole answer.
    for outcome in ("upstream_disconnected", "costr_error"):
        assert guard.actual_cost(reservation, {"status": 200, "outcome": outcome}) == Decimal("0.5")
    # Refused by the provider, never answered, or billing nothing: nothing.
    assert guard.actual_cost(reservation, {"status": 429, "outcome": "upstream_error"}) == 0
    assert guard.actual_cost(reservation, {"status": 502, "outcome": "upstream_error"}) == 0
    assert guard.actual_cost(reservation, {**priced, "billable": False}) == 0


@override_settings(REDIS_URL="")
def test_a_session_that_runs_past_midnight_charges_the_day_it_is_in():
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from apps.budgets.policy import period_of
    from apps.budgets.store import counter_key, nano

    org = OrganizationFactory(time_zone="UTC")
    budget = _budget(org, scope="customer", customer="acme", period="day", limit_usd="1")
    policy = load_policy(org)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    session = asyncio.run(
        guard.admit_session(
            policy, token_id=0, customer="acme", properties={}, provider="openai", now=yesterday
        )
    )
    today = period_of("day", ZoneInfo("UTC"), datetime.now(UTC))
    today_key = counter_key(org.pk, budget.public_id, "day", today.key, "")
    get_store().seed_sync(today_key, 0, 60)

    async def response_done():
        guard.charge(session, {"input_tokens": 1000, "output_tokens": 100, "model": "gpt-4o-mini"})
        await get_store().settled()

    asyncio.run(response_done())
    assert get_store().read([today_key]) == [(nano(Decimal("0.00021")), 0)]


@override_settings(REDIS_URL="")
def test_a_request_under_many_new_counters_seeds_them_all_and_is_checked():
    org = OrganizationFactory()
    _budget(org, scope="organization", limit_usd="10")
    _budget(org, scope="organization", period="day", limit_usd="10")
    _budget(org, scope="each_customer", limit_usd="10")
    tight = _budget(org, scope="customer", customer="acme", limit_usd="0.00001")  # below one
    with pytest.raises(guard.BudgetRefused) as refused:
        _admit(load_policy(org))  # four counters, none made yet
    assert refused.value.budget_id == tight.public_id
