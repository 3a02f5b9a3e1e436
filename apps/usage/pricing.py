"""What a request cost, in USD, as Decimal: genai-prices' catalog, or the organization's override.

Usage arrives normalised (DESIGN.md): ``input_tokens`` is the total input including cache reads
and writes, ``output_tokens`` includes reasoning. genai-prices takes the same convention, prices
at the request's timestamp (dated prices, tiers crossed by the whole request) and by service tier.
A model neither the catalog nor an override knows is *unpriced*: cost None, never 0. So is usage
the catalog refuses as inconsistent (more cached tokens than input, say): a guessed price would
be a wrong one.

Usage beyond the token counts (``usage_details``, under genai-prices' names: the audio share of
the tokens, audio seconds, input characters) is priced by the catalog, as genai-prices prices it
(whisper-1 per audio second, tts-1 per character, gpt-realtime's audio tokens at their own rate).
An override prices tokens only, so a request with such usage is priced by the catalog in full
(source ``catalog``), and is unpriced when the catalog does not know the model: audio is never
priced at a text rate, and the price source says which price applied.

A batch item (``service_tier`` ``batch``, ``contract.BATCH_TIER``) is priced at the catalog's
batch rate (genai-prices' ``processing: batch`` price variant); ``flex`` and ``priority`` at
theirs; any other tier at the standard rate.

The writer prices every event, so the catalog is read once per (provider, model) and the price in
force once per (model, tier, set of active date constraints); each event then costs a handful of
Decimal operations done in the same order as ``genai_prices.calc_price`` does them, so the result
is the library's to the last digit. Anything outside the five token kinds the fast path knows
(usage details, a model priced per image token, say) goes through ``calc_price`` itself.
"""

import fnmatch
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelPrice, StartDateConstraint, TieredPrices

from apps.usage.metering.contract import BATCH_TIER

COST_PLACES = Decimal("0.000000000001")  # 12 decimal places, as stored
PER_MILLION = Decimal(1_000_000)
# The service tiers with prices of their own, and the genai-prices price context each selects.
PRICE_CONTEXTS = {
    "flex": {"service_tier": "flex"},
    "priority": {"service_tier": "priority"},
    BATCH_TIER: {"processing": "batch"},
}


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

    def applies_to(self, provider: str, model: str) -> bool:
        return (not self.provider or self.provider == provider) and fnmatch.fnmatchcase(
            model.lower(), self.model_pattern.lower()
        )

    def matches(self, provider: str, model: str, timestamp: datetime) -> bool:
        return self.valid_from <= timestamp and self.applies_to(provider, model)

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


class Overrides:
    """One organization's overrides, with the patterns matched once per (provider, model) rather
    than once per event."""

    def __init__(self, overrides: list[OverridePrice] | tuple = ()):
        # Newest first: the newest override in force wins.
        self._all = sorted(overrides, key=lambda o: o.valid_from, reverse=True)
        self._by_model: dict[tuple[str, str], list[OverridePrice]] = {}

    def __bool__(self) -> bool:
        return bool(self._all)

    def find(self, provider: str, model: str, timestamp: datetime) -> OverridePrice | None:
        key = (provider, model)
        candidates = self._by_model.get(key)
        if candidates is None:
            candidates = [o for o in self._all if o.applies_to(provider, model)]
            self._by_model[key] = candidates
        for override in candidates:
            if override.valid_from <= timestamp:
                return override
        return None


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
    overrides: list[OverridePrice] | Overrides = (),
    usage_details: dict | None = None,
) -> Price:
    """The cost of one request. The newest override in force that matches wins over the catalog,
    for usage it can express (tokens only)."""
    if not isinstance(overrides, Overrides):
        overrides = Overrides(list(overrides))
    cost, source = price_tokens(
        provider,
        model,
        tokens.input_tokens,
        tokens.cached_input_tokens,
        tokens.cache_write_tokens,
        tokens.cache_write_1h_tokens,
        tokens.output_tokens,
        timestamp,
        service_tier,
        overrides,
        usage_details,
    )
    return Price(cost, source)


def price_tokens(
    provider: str,
    model: str,
    input_tokens: int | None,
    cached_input_tokens: int | None,
    cache_write_tokens: int | None,
    cache_write_1h_tokens: int | None,
    output_tokens: int | None,
    timestamp: datetime,
    service_tier: str,
    overrides: Overrides | None,
    usage_details: dict | None = None,
) -> tuple[Decimal | None, str]:
    """``price_usage`` without the objects, for the writer's loop: (cost or None, price source).

    ``usage_details`` are the storable ones (``metering.events.usage_details_storable``); a zero
    among them is no usage, so it neither leaves the fast path nor sets an override aside."""
    details = None
    if usage_details:
        details = {name: value for name, value in usage_details.items() if value}
    if not model or (input_tokens is None and output_tokens is None and not details):
        return None, "unpriced"
    if overrides and not details:
        override = overrides.find(provider, model, timestamp)
        if override is not None:
            tokens = TokenCounts(
                input_tokens, cached_input_tokens, cache_write_tokens, None, output_tokens
            )
            return override.cost(tokens).quantize(COST_PLACES), "override"
    cost = catalog_cost(
        provider,
        model,
        input_tokens or 0,
        cached_input_tokens or 0,
        cache_write_tokens or 0,
        cache_write_1h_tokens or 0,
        output_tokens or 0,
        timestamp,
        service_tier,
        details,
    )
    if cost is None:
        return None, "unpriced"
    return cost, "catalog"


def catalog_cost(
    provider: str,
    model: str,
    input_tokens: int,
    cached_input_tokens: int,
    cache_write_tokens: int,
    cache_write_1h_tokens: int,
    output_tokens: int,
    timestamp: datetime,
    service_tier: str = "",
    details: dict | None = None,
) -> Decimal | None:
    """The catalog's price, quantized to 12 places, or None when the catalog cannot price it.

    Usage with ``details`` (audio tokens, seconds, characters) is priced by ``calc_price``
    itself: such requests are few, and the fast path knows only token kinds."""
    entry = _catalog_entry(provider, model)
    if entry is None:
        return None
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    tier = service_tier if service_tier in PRICE_CONTEXTS else ""
    tokens = (input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens)
    cost = None
    if not details:
        compiled = entry.compiled_for(timestamp, tier)
        if compiled.fast and (
            type(input_tokens) is int
            and type(cached_input_tokens) is int
            and type(cache_write_tokens) is int
            and type(cache_write_1h_tokens) is int
            and type(output_tokens) is int
        ):
            # (Counts that are not ints, e.g. floats from a client, take the library's own path.)
            cost = compiled.cost(*tokens, output_tokens)
    if cost is None:
        cost = _library_cost(entry, *tokens, output_tokens, timestamp, tier, details)
        if cost is None:
            return None
    return cost.quantize(COST_PLACES)


def _library_cost(
    entry, input_tokens, cached, writes, writes_1h, output_tokens, timestamp, tier, details=None
) -> Decimal | None:
    """``calc_price`` itself: the slow, general path, and the reference for the fast one."""
    try:
        usage = Usage(
            input_tokens=input_tokens,
            cache_read_tokens=cached,
            cache_write_tokens=writes,
            cache_write_1h_tokens=writes_1h,
            output_tokens=output_tokens,
            **(details or {}),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calculation = calc_price(
                usage,
                entry.model_ref,
                provider_id=entry.provider_id,
                genai_request_timestamp=timestamp,
                price_context=PRICE_CONTEXTS.get(tier),
            )
    except (LookupError, ValueError, ArithmeticError, TypeError):
        # LookupError: unknown model. ValueError: usage the catalog's units cannot decompose
        # (e.g. cache reads above the input total, audio tokens above it), or a price entry it
        # rejects. ArithmeticError, TypeError: a count Decimal cannot take.
        return None
    return Decimal(calculation.total_price)


def catalog_model_id(provider: str, model: str) -> str:
    """The price catalogue's id for ``model`` of ``provider`` (``gpt-4o-mini-2024-07-18`` and
    ``gpt-4o-mini`` are both ``gpt-4o-mini``), the name itself for a model the catalogue does
    not know, "" for none. Reports group by it (DESIGN.md, "Usage event": one model, one row);
    it depends on the installed genai-prices only, so it is worked out when reports are read,
    never stored. The look-up is the pricing's own, cached per (provider, model)."""
    if not model:
        return ""
    entry = _catalog_entry(provider, model)
    return model if entry is None else entry.info.id


def catalog_context_window(provider: str, model: str) -> int | None:
    """The catalog's context window for ``model`` of ``provider`` (input and output together),
    None when it does not know the model or its window."""
    entry = _catalog_entry(provider, model)
    return entry.info.context_window if entry is not None else None


@lru_cache(maxsize=4096)
def _catalog_entry(provider: str, model: str) -> "_CatalogEntry | None":
    """The catalog's model for (provider, model), looked up once. Bounded: model names come from
    clients."""
    try:
        found_provider, info = get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    return _CatalogEntry(provider, model, found_provider, info)


class _CatalogEntry:
    """A model found in the catalog, with its prices compiled per (tier, active constraints).

    What ``ModelInfo.get_prices`` returns depends on the timestamp only through which of the
    model's date constraints are active, so that tuple of booleans (plus the tier) is an exact
    cache key.
    """

    __slots__ = (
        "by_day",
        "compiled",
        "constraints",
        "daily",
        "info",
        "model_ref",
        "own",
        "provider",
        "provider_id",
    )

    def __init__(self, provider_id, model_ref, provider, info):
        self.provider_id = provider_id
        self.model_ref = model_ref
        self.provider = provider
        self.info = info
        # calc_price ignores the tier for a model borrowed from a fallback provider.
        self.own = any(info is candidate for candidate in provider.models)
        constraints = []
        if not isinstance(info.prices, ModelPrice):
            constraints += [c.constraint for c in info.prices if c.constraint is not None]
        constraints += [v.constraint for v in info.price_variants or () if v.constraint is not None]
        self.constraints = tuple(constraints)
        self.compiled: dict[tuple, _CompiledPrice] = {}
        # Start dates are all the catalog uses for these providers: then the UTC day decides,
        # and one lookup replaces checking each constraint for every event.
        self.daily = all(isinstance(c, StartDateConstraint) for c in constraints)
        self.by_day: dict[tuple, _CompiledPrice] = {}

    def compiled_for(self, timestamp: datetime, tier: str) -> "_CompiledPrice":
        if self.daily:
            day_key = (tier, timestamp.astimezone(UTC).date())
            compiled = self.by_day.get(day_key)
            if compiled is None:
                compiled = self.by_day[day_key] = self._compiled_for(timestamp, tier)
            return compiled
        return self._compiled_for(timestamp, tier)

    def _compiled_for(self, timestamp: datetime, tier: str) -> "_CompiledPrice":
        key = (tier, *(c.active(timestamp) for c in self.constraints))
        compiled = self.compiled.get(key)
        if compiled is None:
            context = PRICE_CONTEXTS.get(tier)
            if context and self.own:
                model_price = self.info.get_prices(timestamp, context)
            else:
                model_price = self.info.get_prices(timestamp)
            compiled = _CompiledPrice(model_price)
            if compiled.fast and not compiled.agrees_with_library(self, timestamp, tier):
                compiled.fast = False
            self.compiled[key] = compiled
        return compiled


# Price keys of the token kinds Costr reports, and the leaf each prices.
_FAST_TOKEN_KEYS = {
    "input_mtok": "input",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write",
    "cache_write_5m_mtok": "cache_write_5m",
    "cache_write_1h_mtok": "cache_write_1h",
    "output_mtok": "output",
}
_PER_REQUEST_KEY = "requests_kcount"
# The order of the counts ``_CompiledPrice.cost`` computes.
_LEAVES = (
    "input",
    "cache_read",
    "cache_write",
    "cache_write_5m",
    "cache_write_1h",
    "output",
    "request",
)
# Probes that cross every tier in the catalog and give each token kind its own count.
_PROBES = (
    (1_234_567, 300_007, 90_011, 40_009, 123_457),
    (10_009, 2_003, 1_201, 401, 5_003),
    (1, 0, 0, 0, 1),
)


class _CompiledPrice:
    """One resolved ``ModelPrice`` as a list of terms, priced the way genai-prices prices it:
    each priced unit gets the count left once its priced descendants are taken out (cache reads
    and writes come out of the input total, the 1-hour writes out of all writes), tiers are chosen
    by the whole request's input, and terms are added in the price entry's own order."""

    __slots__ = ("fast", "has", "terms")

    def __init__(self, model_price: ModelPrice):
        self.terms: list[tuple[int, object, int, bool]] = []  # (leaf, price, per, tiered)
        self.fast = True  # False: every event goes through calc_price
        for key, price in model_price.__dict__.items():
            if key.startswith("_") or price is None:
                continue
            if key in _FAST_TOKEN_KEYS:
                leaf, per = _LEAVES.index(_FAST_TOKEN_KEYS[key]), 1_000_000
            elif key == _PER_REQUEST_KEY:
                leaf, per = _LEAVES.index("request"), 1000
            else:
                # A unit outside the token counts (audio or image tokens, web searches, audio
                # hours…): with no usage details, which take ``calc_price`` instead,
                # genai-prices counts 0 of it and takes 0 out of its ancestors, so it adds
                # nothing. ``agrees_with_library`` checks that it also does not make the entry
                # invalid.
                continue
            self.terms.append((leaf, price, per, isinstance(price, TieredPrices)))
        self.has = {_LEAVES[leaf] for leaf, _, _, _ in self.terms}

    def cost(self, inputs, cached, writes, writes_1h, output) -> Decimal | None:
        """None when a leaf would be negative: the library rejects such usage, let it say so."""
        has = self.has
        leaf_1h = writes_1h if "cache_write_1h" in has else 0
        leaf_writes = writes - leaf_1h
        leaf_input = inputs
        if "cache_read" in has:
            leaf_input -= cached
        if "cache_write" in has:
            leaf_input -= writes
        elif "cache_write_1h" in has:
            leaf_input -= leaf_1h
        if leaf_input < 0 or leaf_writes < 0 or min(cached, writes_1h, output) < 0:
            return None
        leaves = (leaf_input, cached, leaf_writes, 0, leaf_1h, output, 1)
        total = Decimal(0)
        for leaf, price, per, tiered in self.terms:
            if tiered:
                rate = price.base
                for tier in reversed(price.tiers):
                    if inputs > tier.start:
                        rate = tier.price
                        break
            else:
                rate = price
            total += rate * Decimal(leaves[leaf]) / per
        return total

    def agrees_with_library(self, entry: _CatalogEntry, timestamp: datetime, tier: str) -> bool:
        """A guard against a new genai-prices release pricing differently: checked once per
        compiled price, on probes that exercise every term; on disagreement the library prices
        every event of this entry itself."""
        for probe in _PROBES:
            expected = _library_cost(entry, *probe, timestamp, tier)
            if expected is None or self.cost(*probe) != expected:
                return False
        return True
