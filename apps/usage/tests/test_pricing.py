"""Prices against figures worked out by hand from the providers' published price lists."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.usage.pricing import (
    COST_PLACES,
    UNPRICED,
    OverridePrice,
    TokenCounts,
    catalog_cost,
    price_usage,
)

NOW = datetime(2026, 11, 1, tzinfo=UTC)
M = Decimal(1_000_000)


def _price(provider, model, tokens, **kwargs):
    return price_usage(provider=provider, model=model, tokens=tokens, timestamp=NOW, **kwargs)


def test_openai_cached_input_is_priced_at_the_cache_rate_and_not_twice():
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million tokens.
    tokens = TokenCounts(input_tokens=1200, cached_input_tokens=1000, output_tokens=300)

    price = _price("openai", "gpt-4o-mini", tokens)

    expected = (200 * Decimal("0.15") + 1000 * Decimal("0.075") + 300 * Decimal("0.60")) / M
    assert price.cost_usd == expected
    assert price.source == "catalog"


def test_openai_reasoning_tokens_are_part_of_output():
    # o3-mini: $1.10 input, $4.40 output per million; 500 output of which 400 reasoning.
    tokens = TokenCounts(input_tokens=100, output_tokens=500)

    price = _price("openai", "o3-mini", tokens)

    assert price.cost_usd == (100 * Decimal("1.10") + 500 * Decimal("4.40")) / M


def test_anthropic_cache_reads_and_5m_and_1h_writes():
    # claude-sonnet-4-5: $3 input, $0.30 cache read, $3.75 5-minute write, $6 1-hour write,
    # $15 output per million. 40 plain + 1000 read + 100 (5m) + 200 (1h) written.
    tokens = TokenCounts(
        input_tokens=1340,
        cached_input_tokens=1000,
        cache_write_tokens=300,
        cache_write_1h_tokens=200,
        output_tokens=250,
    )

    price = _price("anthropic", "claude-sonnet-4-5", tokens)

    expected = (
        40 * Decimal(3)
        + 1000 * Decimal("0.30")
        + 100 * Decimal("3.75")
        + 200 * Decimal(6)
        + 250 * Decimal(15)
    ) / M
    assert price.cost_usd == expected


def test_gemini_thoughts_are_output_and_a_long_prompt_crosses_the_tier():
    # gemini-2.5-pro: $1.25 in / $10 out up to 200k prompt tokens, $2.50 / $15 beyond,
    # applied to the whole request.
    short = TokenCounts(input_tokens=10_000, output_tokens=1_000 + 500)  # candidates + thoughts
    long = TokenCounts(input_tokens=250_000, output_tokens=1_000)

    assert (
        _price("google", "gemini-2.5-pro", short).cost_usd
        == (10_000 * Decimal("1.25") + 1_500 * Decimal(10)) / M
    )
    assert (
        _price("google", "gemini-2.5-pro", long).cost_usd
        == (250_000 * Decimal("2.50") + 1_000 * Decimal(15)) / M
    )


def test_the_flex_tier_is_priced_at_its_own_rate():
    # gpt-5: $1.25 / $10 standard, $0.625 / $5 flex per million.
    tokens = TokenCounts(input_tokens=1200, output_tokens=300)

    standard = _price("openai", "gpt-5", tokens)
    flex = _price("openai", "gpt-5", tokens, service_tier="flex")

    assert standard.cost_usd == (1200 * Decimal("1.25") + 300 * Decimal(10)) / M
    assert flex.cost_usd == (1200 * Decimal("0.625") + 300 * Decimal(5)) / M


def test_an_unknown_model_is_unpriced_never_zero():
    price = _price("openai", "ft:my-private-model", TokenCounts(input_tokens=10, output_tokens=5))

    assert (price.cost_usd, price.source) == (None, "unpriced")


def test_unknown_tokens_are_unpriced():
    assert _price("openai", "gpt-4o-mini", TokenCounts(input_tokens=None)).source == "unpriced"


def test_the_newest_override_in_force_wins_over_the_catalog():
    tokens = TokenCounts(input_tokens=1000, cached_input_tokens=400, output_tokens=100)
    old = OverridePrice(
        "gpt-4o*", "openai", datetime(2026, 1, 1, tzinfo=UTC), Decimal(1), Decimal(2)
    )
    newer = OverridePrice(
        "gpt-4o-mini",
        "",
        datetime(2026, 10, 1, tzinfo=UTC),
        Decimal("0.10"),
        Decimal("0.40"),
        cached_input_per_mtok=Decimal("0.01"),
    )
    future = OverridePrice(
        "gpt-4o-mini", "", datetime(2027, 1, 1, tzinfo=UTC), Decimal(9), Decimal(9)
    )

    price = _price("openai", "gpt-4o-mini", tokens, overrides=[old, newer, future])

    assert price.source == "override"
    assert (
        price.cost_usd
        == (600 * Decimal("0.10") + 400 * Decimal("0.01") + 100 * Decimal("0.40")) / M
    )


def test_an_override_prices_a_model_the_catalog_does_not_know():
    override = OverridePrice(
        "my-llama-*", "", datetime(2026, 1, 1, tzinfo=UTC), Decimal(2), Decimal(3)
    )

    price = _price(
        "openai",
        "My-Llama-70B",
        TokenCounts(input_tokens=10, output_tokens=10),
        overrides=[override],
    )

    assert price.cost_usd == (10 * Decimal(2) + 10 * Decimal(3)) / M


@pytest.mark.parametrize("places", [12])
def test_costs_carry_twelve_decimal_places(places):
    price = _price("openai", "gpt-4o-mini", TokenCounts(input_tokens=1, output_tokens=1))

    assert -price.cost_usd.as_tuple().exponent == places


# The writer's fast path against genai-prices itself, over the whole bundled catalog of the three
# providers Costr proxies: every model, tiers, dates on both sides of price changes, usages with
# and without cache reads and writes, across tier thresholds.

CATALOG_DATES = [datetime(2025, 3, 1, tzinfo=UTC), datetime(2026, 11, 1, 15, 30, tzinfo=UTC)]


def _catalog_models():
    from genai_prices.data_snapshot import get_snapshot

    return [
        (provider.id, model.id)
        for provider in get_snapshot().providers
        if provider.id in ("openai", "anthropic", "google")
        for model in provider.models
    ]


def _library_price(provider, model, tokens, timestamp, tier):
    import warnings

    from genai_prices import Usage, calc_price

    inputs, cached, writes, writes_1h, output = tokens
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calculation = calc_price(
                Usage(
                    input_tokens=inputs,
                    cache_read_tokens=cached,
                    cache_write_tokens=writes,
                    cache_write_1h_tokens=writes_1h,
                    output_tokens=output,
                ),
                model,
                provider_id=provider,
                genai_request_timestamp=timestamp,
                price_context={"service_tier": tier} if tier else None,
            )
    except (LookupError, ValueError):
        return None
    return Decimal(calculation.total_price)


def test_the_fast_catalog_path_prices_every_model_as_genai_prices_does():
    import random

    from apps.usage.pricing import _catalog_entry

    rng = random.Random(7)
    compared = fast = 0
    for provider, model in _catalog_models():
        entry = _catalog_entry(provider, model)
        if entry is None:  # an id its own match rules do not accept (e.g. ft:gpt-4o)
            assert _library_price(provider, model, (1, 0, 0, 0, 1), CATALOG_DATES[0], "") is None
            continue
        for timestamp in CATALOG_DATES:
            for tier in ("", "flex", "priority"):
                compiled = entry.compiled_for(timestamp, tier)
                fast += compiled.fast
                for _ in range(4):
                    inputs = rng.choice([rng.randint(0, 5_000), rng.randint(150_000, 400_000)])
                    cached = rng.randint(0, inputs // 2)
                    writes = rng.randint(0, inputs - cached)
                    tokens = (inputs, cached, writes, rng.randint(0, writes), rng.randint(0, 9_999))
                    expected = _library_price(provider, model, tokens, timestamp, tier)
                    if compiled.fast:
                        # The arithmetic itself, not only through the guard that checks it.
                        assert compiled.cost(*tokens) == expected, (model, tier, tokens)
                    got = catalog_cost(provider, model, *tokens, timestamp, tier)
                    assert got == (None if expected is None else expected.quantize(COST_PLACES))
                    compared += 1
    assert compared > 1000
    # Nearly every entry takes the fast path; the rest are priced by the library itself.
    assert fast > 0.9 * compared / 4


def test_usage_the_catalog_rejects_is_unpriced():
    # More cache reads than input in total cannot be decomposed.
    tokens = TokenCounts(input_tokens=100, cached_input_tokens=500, output_tokens=10)

    assert _price("openai", "gpt-4o-mini", tokens) == UNPRICED
