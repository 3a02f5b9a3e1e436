"""What a request cost, in USD, as Decimal: genai-prices' catalog, or the organization's override.

Usage arrives normalised (DESIGN.md): ``input_tokens`` is the total input including cache reads
and writes, ``output_tokens`` includes reasoning. genai-prices takes the same convention, prices
at the request's timestamp (dated prices, tiers crossed by the whole request) and by service tier.
A model neither the catalog nor an override knows is *unpriced*: cost None, never 0.
"""

import fnmatch
import warnings
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from genai_prices import Usage, calc_price

COST_PLACES = Decimal("0.000000000001")  # 12 decimal places, as stored
PER_MILLION = Decimal(1_000_000)
PRICED_TIERS = ("flex", "priority")


@dataclass(frozen=True, slots=True)
class TokenCounts:
    input_tokens: int | None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def known(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None


@dataclass(frozen=True, slots=True)
class OverridePrice:
    """An organization's own price for models matching ``model_pattern`` (a shell-style glob),
    per million tokens, in force from ``valid_from``."""

    model_pattern: str
    provider: str  # "" for any provider
    valid_from: datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None

    def matches(self, provider: str, model: str, timestamp: datetime) -> bool:
        return (
            (not self.provider or self.provider == provider)
            and self.valid_from <= timestamp
            and fnmatch.fnmatchcase(model.lower(), self.model_pattern.lower())
        )

    def cost(self, tokens: TokenCounts) -> Decimal:
        total_input = tokens.input_tokens or 0
        cached = tokens.cached_input_tokens or 0
        writes = tokens.cache_write_tokens or 0
        uncached = max(total_input - cached - writes, 0)
        cached_price = self.cached_input_per_mtok
        write_price = self.cache_write_per_mtok
        amount = (
            uncached * self.input_per_mtok
            + cached * (self.input_per_mtok if cached_price is None else cached_price)
            + writes * (self.input_per_mtok if write_price is None else write_price)
            + (tokens.output_tokens or 0) * self.output_per_mtok
        )
        return amount / PER_MILLION


@dataclass(frozen=True, slots=True)
class Price:
    cost_usd: Decimal | None
    source: str  # catalog | override | unpriced


UNPRICED = Price(None, "unpriced")


def price_usage(
    *,
    provider: str,
    model: str,
    tokens: TokenCounts,
    timestamp: datetime,
    service_tier: str = "",
    overrides: list[OverridePrice] = (),
) -> Price:
    """The cost of one request. The newest override in force that matches wins over the catalog."""
    if not tokens.known or not model:
        return UNPRICED
    matching = [o for o in overrides if o.matches(provider, model, timestamp)]
    if matching:
        best = max(matching, key=lambda o: o.valid_from)
        return Price(best.cost(tokens).quantize(COST_PLACES), "override")
    usage = Usage(
        input_tokens=tokens.input_tokens or 0,
        cache_read_tokens=tokens.cached_input_tokens or 0,
        cache_write_tokens=tokens.cache_write_tokens or 0,
        cache_write_1h_tokens=tokens.cache_write_1h_tokens or 0,
        output_tokens=tokens.output_tokens or 0,
    )
    context = {"service_tier": service_tier} if service_tier in PRICED_TIERS else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calculation = calc_price(
                usage,
                model,
                provider_id=provider,
                genai_request_timestamp=timestamp,
                price_context=context,
            )
    except LookupError:
        return UNPRICED
    return Price(Decimal(calculation.total_price).quantize(COST_PLACES), "catalog")
