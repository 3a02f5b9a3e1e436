"""Spend for the budgets pages, API and selectors tests, stored through the real writer (events,
customers and rollups as in production), at prices worked out by hand: an override prices
models named budget-* at $1 per million input tokens, so ``spend(org, "2.5")`` is a request
that cost exactly $2.50."""

import time
from datetime import UTC, datetime
from decimal import Decimal

from django.utils import timezone

from apps.budgets.models import Budget
from apps.budgets.policy import period_of
from apps.budgets.store import counter_key, get_store, nano
from apps.keys import services as keys
from apps.usage.models import PriceOverride
from apps.usage.tests.factories import store_usage


def price(org):
    PriceOverride.objects.create(
        organization=org,
        model_pattern="budget-*",
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(1),
    )
    return org


def spend(org, dollars: str, *, customer: str | None = "acme", when=None, **overrides) -> dict:
    """One request of ``customer`` that cost ``dollars`` (``price`` must have run), at ``when``
    (now by default: inside every current period, whatever the zone)."""
    tokens = int(Decimal(dollars) * 1_000_000)
    return store_usage(
        org,
        customer=customer,
        model="budget-test",
        requested_model="budget-test",
        input_tokens=tokens,
        output_tokens=0,
        raw_usage={"prompt_tokens": tokens, "completion_tokens": 0},
        timestamp=(when or timezone.now()).isoformat(),
        **overrides,
    )


def seed_counter(org, budget: Budget, spent: str, *, reserved: str = "0", subject: str = ""):
    """Put a live counter in the store for ``budget``'s current period, as the proxy's guard
    does: seeded with ``spent``, then ``reserved`` held by a request still running."""
    from zoneinfo import ZoneInfo

    from asgiref.sync import async_to_sync

    period = period_of(budget.period, ZoneInfo(org.time_zone), timezone.now())
    key = counter_key(org.pk, budget.public_id, budget.period, period.key, subject)
    store = get_store()
    store.seed_sync(key, nano(Decimal(spent)), 3600)
    if Decimal(reserved):
        hold = f"test-hold-{key}"
        async_to_sync(store.reserve)([key], nano(Decimal(reserved)), [-1], hold, time.time())
    return key


def bearer(org, *scopes) -> dict:
    created = keys.proxy_token_create(organization=org, name="api", scopes=list(scopes), actor=None)
    return {"HTTP_AUTHORIZATION": f"Bearer {created.plaintext}"}
