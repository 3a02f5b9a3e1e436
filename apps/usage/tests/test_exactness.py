"""Exactness (issue #5): thousands of requests with random usage, and the sum of event costs and
the sum of rollup costs equal the sum computed independently, to the last of 12 decimal places;
as many events as requests, and as many requests in the rollups.

The same through the real proxy, a few hundred requests to the fake provider, is
tests/test_metering_exactness.py (the proxy's fixtures are out of this app's reach).

The expected price of each request comes from ``genai_prices.calc_price`` itself, with Decimal,
never from ``apps.usage.pricing`` (whose fast path reimplements the catalog's arithmetic and is
what is under test). Sums are added up here from the rows read one by one: SQLite keeps DECIMAL
columns as doubles (15 significant digits, see ``DailyRollup``), which every single row here
respects but a database-side SUM over all of them would not.
"""

import random
import warnings
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from apps.usage.metering.counters import LATENCY_BUCKETS
from apps.usage.metering.events import usage_events_write
from apps.usage.models import (
    DailyRollup,
    OrganizationDailyRollup,
    PropertyDailyRollup,
    UsageEvent,
)

PLACES = Decimal("0.000000000001")
MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("openai", "gpt-4.1"),
    ("openai", "gpt-5"),
    ("openai", "o3-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("anthropic", "claude-opus-4-1"),
    ("google", "gemini-2.5-pro"),
    ("google", "gemini-2.5-flash"),
    ("google", "gemini-2.0-flash"),
    ("openai", "ft:gpt-4o-mini:acme:private"),  # unknown to the catalog
    ("anthropic", "claude-internal-test"),  # unknown too
]


def expected_cost(provider, model, tokens, timestamp, tier) -> Decimal | None:
    """What the catalog says, as DESIGN.md applies it: usage normalised (input includes cache
    reads and writes), the request's timestamp, flex/priority tiers, 12 places; a model or usage
    the catalog cannot price is None. Every record without tokens here is a provider error,
    which the provider bills nothing for: ``no_usage``, cost 0."""
    inputs, cached, writes, writes_1h, output = tokens
    if inputs is None and output is None:
        return Decimal(0)
    usage = Usage(
        input_tokens=inputs or 0,
        cache_read_tokens=cached or 0,
        cache_write_tokens=writes or 0,
        cache_write_1h_tokens=writes_1h or 0,
        output_tokens=output or 0,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calculation = calc_price(
                usage,
                model,
                provider_id=provider,
                genai_request_timestamp=timestamp,
                price_context={"service_tier": tier} if tier in ("flex", "priority") else None,
            )
    except (LookupError, ValueError):
        return None
    return Decimal(calculation.total_price).quantize(PLACES)


def _random_tokens(rng, provider):
    """(input, cached, cache writes, of which 1-hour, output, reasoning), normalised."""
    if rng.random() < 0.04:
        return None, None, None, None, None, None  # an error, or an endpoint without usage
    long_prompt = rng.random() < 0.08  # past the 200k tier of Gemini Pro and Sonnet
    plain = rng.randint(200_001, 400_000) if long_prompt else rng.randint(0, 30_000)
    cached = rng.choice([0, 0, rng.randint(1, 50_000)])
    writes = writes_1h = 0
    if provider == "anthropic" and rng.random() < 0.6:
        writes = rng.randint(1, 20_000)
        writes_1h = rng.choice([0, writes, rng.randint(0, writes)])
    output = rng.randint(0, 8_000)
    reasoning = rng.randint(0, output) if rng.random() < 0.3 else 0
    return plain + cached + writes, cached, writes, writes_1h, output, reasoning


def _records(org_ids, count, seed):
    rng = random.Random(seed)
    properties = random.Random(seed + 1)  # apart, so the usage drawn stays what it was
    start = datetime(2025, 9, 20, tzinfo=UTC)
    customers = [f"cust_{n}" for n in range(12)] + [None]
    records = []
    for index in range(count):
        provider, model = rng.choice(MODELS)
        inputs, cached, writes, writes_1h, output, reasoning = _random_tokens(rng, provider)
        timestamp = start + timedelta(days=rng.randint(0, 420), seconds=rng.randint(0, 86_399))
        records.append(
            {
                "request_id": f"exact_{seed}_{index}",
                "organization_id": rng.choice(org_ids),
                "token_id": None,
                "timestamp": timestamp.isoformat(),
                "provider": provider,
                "endpoint": "chat",
                "model": model,
                "requested_model": model,
                "customer": rng.choice(customers),
                "properties": properties.choice(
                    [{}, {"feature": "chat"}, {"feature": "search", "env": "prod"}, {"env": "dev"}]
                ),
                "status": 200 if inputs is not None else rng.choice([429, 500, 502]),
                "stream": rng.random() < 0.5,
                "outcome": "ok",
                "input_tokens": inputs,
                "cached_input_tokens": cached,
                "cache_write_tokens": writes,
                "cache_write_1h_tokens": writes_1h,
                "output_tokens": output,
                "reasoning_tokens": reasoning,
                "service_tier": rng.choice(["", "", "flex", "priority"])
                if model == "gpt-5"
                else "",
                "raw_usage": None,
                "latency_ms": rng.randint(50, 9_000),
                "ttfb_ms": rng.randint(10, 900),
                "overhead_ms": 0.5,
            }
        )
    return records


def _expected(record) -> Decimal | None:
    return expected_cost(
        record["provider"],
        record["model"],
        (
            record["input_tokens"],
            record["cached_input_tokens"],
            record["cache_write_tokens"],
            record["cache_write_1h_tokens"],
            record["output_tokens"],
        ),
        datetime.fromisoformat(record["timestamp"]),
        record["service_tier"],
    )


def _rollup_totals(organizations, model=DailyRollup, **only):
    """(requests, cost, unpriced requests) summed over a rollup's rows of ``organizations``
    (those matching ``only``), row by row in Decimal."""
    rows = model.objects.unscoped(reason="test: the orgs of this test").filter(
        organization__in=organizations, **only
    )
    requests = cost = unpriced = 0
    for row in rows.values_list("requests", "cost_usd", "unpriced_requests"):
        requests += row[0]
        cost += row[1]
        unpriced += row[2]
    return requests, cost, unpriced


@pytest.mark.django_db
def test_thousands_of_random_records_sum_exactly(org, other_org):
    organizations = [org, other_org]
    records = _records([o.pk for o in organizations], 3000, seed=20261123)
    batches = [records[start : start + 400] for start in range(0, len(records), 400)]

    stored = 0
    for index, batch in enumerate(batches):
        stored += usage_events_write(batch)
        if index == 2:
            stored += usage_events_write(batches[1])  # a batch replayed
    stored += usage_events_write(records[1000:1900])  # and a stretch written a third time

    expected = {r["request_id"]: _expected(r) for r in records}
    events = dict(
        UsageEvent.objects.unscoped(reason="test: the orgs of this test")
        .filter(organization__in=organizations)
        .values_list("request_id", "cost_usd")
    )
    assert stored == len(events) == len(records)
    # Each event as the catalog prices it (None: unpriced), which also makes the sums honest.
    assert events == expected
    priced = [cost for cost in expected.values() if cost is not None]
    assert len(priced) > 2000 and len(priced) < len(records)
    expected_total = sum(priced, Decimal(0))
    assert sum((c for c in events.values() if c is not None), Decimal(0)) == expected_total
    requests, rollup_cost, unpriced = _rollup_totals(organizations)
    assert rollup_cost == expected_total
    assert requests == len(records)
    assert unpriced == len(records) - len(priced)
    # Without the customer: the same sums, and every request in one latency bucket.
    everything = (expected_total, len(records), len(records) - len(priced))
    requests, rollup_cost, unpriced = _rollup_totals(organizations, OrganizationDailyRollup)
    assert (rollup_cost, requests, unpriced) == everything
    histograms = OrganizationDailyRollup.objects.unscoped(reason="test").filter(
        organization__in=organizations
    )
    assert sum(sum(row) for row in histograms.values_list(*LATENCY_BUCKETS)) == len(records)
    # Per property value: the requests that carried it, each priced as the catalog says.
    for name, value in (("feature", "chat"), ("feature", "search"), ("env", "prod")):
        carrying = [r for r in records if r["properties"].get(name) == value]
        costs = [expected[r["request_id"]] for r in carrying]
        requests, rollup_cost, unpriced = _rollup_totals(
            organizations, PropertyDailyRollup, name=name, value=value
        )
        assert requests == len(carrying) > 300
        assert rollup_cost == sum((c for c in costs if c is not None), Decimal(0))
        assert unpriced == costs.count(None)
