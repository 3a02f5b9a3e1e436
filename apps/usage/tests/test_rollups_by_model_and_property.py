"""The organization-level rollup (no customer, with a latency histogram) and the property rollup,
kept by the writer in the transaction that stores the events: what they count, checked against
hand-computed figures, on SQLite (summed in Python) and PostgreSQL (summed in SQL)."""

from datetime import date
from decimal import Decimal

import pytest

from apps.usage.metering.counters import LATENCY_BUCKETS
from apps.usage.metering.events import usage_events_write
from apps.usage.models import (
    DailyRollup,
    OrganizationDailyRollup,
    PropertyDailyRollup,
    UsageEvent,
)
from apps.usage.tests.test_writer import _record

pytestmark = pytest.mark.django_db

DAY = date(2026, 11, 2)  # the day of test_writer._record's timestamp
# gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million; _record's usage.
REQUEST_COST = (200 * Decimal("0.15") + 1000 * Decimal("0.075") + 300 * Decimal("0.6")) / 10**6
COUNTERS = (
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_requests",
    "latency_ms_sum",
    "ttfb_ms_sum",
    "ttfb_count",
)


def rollup_rows(model, org) -> list[tuple]:
    """Every field of the organization's rows of a rollup model but the id, sorted."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname != "id"]
    return sorted(model.objects.for_org(org).values_list(*names))


def test_latencies_fall_in_the_buckets_their_bounds_say(org):
    latencies = [0, 24, 25, 99, 100, 149_999, 150_000, 900_000]
    usage_events_write(
        [_record(org, f"l{n}", latency_ms=latency) for n, latency in enumerate(latencies)]
    )

    rollup = OrganizationDailyRollup.objects.for_org(org).get()

    # [0, 25): 0 and 24; [25, 50): 25; [50, 100): 99; [100, 200): 100;
    # [60000, 150000): 149999; [150000, ...): 150000 and 900000 (the last bucket is open).
    expected = [0] * 16
    expected[0], expected[1], expected[2], expected[3], expected[14], expected[15] = (
        2,
        1,
        1,
        1,
        1,
        2,
    )
    assert [getattr(rollup, name) for name in LATENCY_BUCKETS] == expected
    assert (rollup.requests, rollup.latency_ms_sum) == (8, sum(latencies))


def test_the_organization_rollup_is_the_customer_rollup_without_the_customer(org, other_org):
    usage_events_write(
        [
            _record(org, "a1", customer="acme"),
            _record(org, "a2", customer="globex", status=429, outcome="upstream_error"),
            _record(org, "a3", customer=None, output_tokens=None, ttfb_ms=None),
            _record(org, "a4", customer="acme", model="ft:unknown"),
            _record(org, "a5", customer="acme", provider="anthropic", model="claude-sonnet-4-5"),
            _record(other_org, "o1"),
        ]
    )

    rows = {(r.day, r.provider, r.model): r for r in OrganizationDailyRollup.objects.for_org(org)}

    assert set(rows) == {
        (DAY, "openai", "gpt-4o-mini"),
        (DAY, "openai", "ft:unknown"),
        (DAY, "anthropic", "claude-sonnet-4-5"),
    }
    mini = rows[(DAY, "openai", "gpt-4o-mini")]
    # a1, a2 priced as usual; a3 without output tokens: 200 input and 1000 cached only.
    a3_cost = (200 * Decimal("0.15") + 1000 * Decimal("0.075")) / 10**6
    assert (mini.requests, mini.errors, mini.unpriced_requests) == (3, 1, 0)
    assert mini.output_tokens == 600
    assert mini.cost_usd == 2 * REQUEST_COST + a3_cost
    assert (mini.ttfb_count, mini.ttfb_ms_sum) == (2, 20)
    assert rows[(DAY, "openai", "ft:unknown")].unpriced_requests == 1
    for key, row in rows.items():
        per_customer = DailyRollup.objects.for_org(org).filter(
            day=key[0], provider=key[1], model=key[2]
        )
        for name in COUNTERS:
            assert getattr(row, name) == sum(getattr(r, name) for r in per_customer), name
    assert OrganizationDailyRollup.objects.for_org(other_org).get().requests == 1


def test_properties_are_rolled_up_per_name_and_value(org, other_org):
    many = {f"p{n:02d}": "v" for n in range(25)}
    usage_events_write(
        [
            _record(org, "p1", properties={"feature": "chat", "env": "prod"}),
            _record(org, "p2", properties={"feature": "chat"}, status=500),
            _record(org, "p3", properties={"feature": None, "tier": 3, "flag": True}),
            _record(org, "p4", properties={"feature": "x" * 300}),
            _record(org, "p5", properties={"n" * 129: "v", "ok": "v"}),
            _record(org, "p6", properties=many),
            _record(org, "p7", properties=["not", "an", "object"]),
            _record(org, "p8", properties={}),
            _record(other_org, "o1", properties={"feature": "chat"}),
        ]
    )

    found = {
        (r.day, r.name, r.value): (r.requests, r.errors, r.cost_usd)
        for r in PropertyDailyRollup.objects.for_org(org)
    }

    one = (1, 0, REQUEST_COST)
    assert found == {
        (DAY, "feature", "chat"): (2, 1, 2 * REQUEST_COST),
        (DAY, "env", "prod"): one,
        # A JSON null is no value; other JSON values count as their JSON text.
        (DAY, "tier", "3"): one,
        (DAY, "flag", "true"): one,
        # Values cut to 255 characters; names over 128 characters not rolled up.
        (DAY, "feature", "x" * 255): one,
        (DAY, "ok", "v"): one,
        # At most 20 properties a request: the first 20.
        **{(DAY, f"p{n:02d}", "v"): one for n in range(20)},
    }
    stored = UsageEvent.objects.for_org(org).get(request_id="p6").properties
    assert stored == {f"p{n:02d}": "v" for n in range(20)}
    assert PropertyDailyRollup.objects.for_org(other_org).get().requests == 1


def test_a_replayed_batch_leaves_the_new_rollups_unchanged(org):
    batch = [
        _record(org, "r1", properties={"feature": "chat"}, latency_ms=120),
        _record(org, "r2", properties={"feature": "search"}, latency_ms=3000),
    ]
    usage_events_write(batch)
    by_model = rollup_rows(OrganizationDailyRollup, org)
    by_property = rollup_rows(PropertyDailyRollup, org)

    assert usage_events_write(batch) == 0
    assert rollup_rows(OrganizationDailyRollup, org) == by_model
    assert rollup_rows(PropertyDailyRollup, org) == by_property

    usage_events_write([*batch, _record(org, "r3", properties={"feature": "chat"})])

    assert OrganizationDailyRollup.objects.for_org(org).get().requests == 3
    values = PropertyDailyRollup.objects.for_org(org).filter(name="feature")
    assert dict(values.values_list("value", "requests")) == {"chat": 2, "search": 1}
