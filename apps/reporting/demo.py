"""Demo data: realistic usage, Stripe revenue and refused-request counts for an organization.

Two users: ``manage.py costr_demo`` (a month for ~50 customers, so a newcomer sees living
dashboards) and the reporting benchmark (a million events for 500 customers over 90 days).

The traffic goes through ``usage_events_write``, the writer real traffic goes through, so events,
customers and daily rollups are exactly what the proxy would have produced, priced by the same
catalog. Records look like the proxy's: each provider's own usage object in ``raw_usage``, token
fields normalised as DESIGN.md says (input includes cache reads and writes, output includes
reasoning), the response's dated model name next to the requested alias.

What makes it look real: a few large customers and a long tail (Zipf weights), customers that
start or stop during the window, a weekly rhythm with quiet weekends and business-hour peaks,
slow growth, one day with a runaway batch job, per-feature model choice (embeddings for search,
reasoning models for code review), cache reads and 5-minute/1-hour cache writes, reasoning tokens
and Gemini thoughts, ~2% errors (429, 500, upstream failures), a few client disconnects, latency
and time to first byte per model, and a streaming share per feature.

Everything is drawn from one ``_random(seed)``: the same seed, window and sizes give the
same records (request ids included, so writing twice stores nothing new).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Organization, User
from apps.accounts.services import organization_create, organization_deletion_mark
from apps.billing.models import (
    RevenueSource,
    StripeBalanceTransaction,
    StripeCharge,
    StripeConnection,
    StripeCustomer,
    SyncStatus,
)
from apps.billing.services import stripe_mappings_resolve
from apps.billing.sync import revenue_rebuild
from apps.keys.keyring import seal
from apps.keys.services import organization_secrets_destroy
from apps.reporting.selectors import usage_by
from apps.usage.lifecycle import organization_data_delete
from apps.usage.models import Customer
from apps.usage.services import refusals_record, usage_events_write

DEMO_SLUG = "demo"
DEMO_OWNER_EMAIL = "demo@example.com"
DEFAULT_SEED = 20251101
WRITE_BATCH = 20_000


@dataclass(frozen=True)
class ModelProfile:
    """One model as traffic uses it: token sizes (log-normal medians), speed, and how its
    provider reports usage."""

    provider: str
    model: str  # as the response reports it
    requested: str  # as clients ask for it
    input_median: int
    output_median: int
    ttfb_ms: int  # median time to first byte of a streamed answer
    ms_per_token: float
    reasoning: float = 0.0  # share of output that is reasoning; 0: none
    reasoning_chance: float = 1.0  # how often a request reasons at all
    cache_read_chance: float = 0.0
    cache_write_chance: float = 0.0  # Anthropic only: explicit cache writes
    embedding: bool = False


# provider, response model, requested alias, input and output medians, ttfb ms, ms per output
# token, reasoning share, reasoning chance, cache-read chance[, cache-write chance | embedding]
_PROFILES = (
    ("openai", "gpt-4o-2024-08-06", "gpt-4o", 1800, 350, 450, 11, 0, 0, 0.35),
    ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini", 1200, 250, 300, 7, 0, 0, 0.3),
    ("openai", "gpt-4.1-2025-04-14", "gpt-4.1", 3000, 500, 500, 12, 0, 0, 0.4),
    ("openai", "gpt-4.1-mini-2025-04-14", "gpt-4.1-mini", 2000, 300, 350, 8, 0, 0, 0.3),
    ("openai", "o3-mini-2025-01-31", "o3-mini", 1500, 2000, 2500, 6, 0.7, 1, 0.2),
    ("openai", "o4-mini-2025-04-16", "o4-mini", 1800, 2400, 3000, 6, 0.75, 1, 0.25),
    ("openai", "text-embedding-3-small", "text-embedding-3-small", 600, 0, 120, 0, 0, 0, 0),
    ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4-0", 4000, 600, 900, 14, 0, 0,
     0.45, 0.15),
    ("anthropic", "claude-3-5-haiku-20241022", "claude-3-5-haiku-latest", 2500, 300, 500, 9,
     0, 0, 0.35, 0.12),
    ("google", "gemini-2.5-flash", "gemini-2.5-flash", 2000, 400, 600, 4, 0.5, 0.6, 0.2),
    ("google", "gemini-2.5-pro", "gemini-2.5-pro", 3000, 900, 2000, 9, 0.6, 1, 0.25),
    ("google", "gemini-2.0-flash", "gemini-2.0-flash", 1500, 300, 350, 4, 0, 0, 0.15),
)  # fmt: skip
MODELS: dict[str, ModelProfile] = {
    row[2]: ModelProfile(*row, embedding=row[1].startswith("text-embedding")) for row in _PROFILES
}


@dataclass(frozen=True)
class Feature:
    """A product feature of the organization's own app (the ``feature`` property): which models
    it calls (relative weights), how big its prompts are, how often it streams."""

    name: str
    weight: float
    models: dict[str, float]
    input_scale: float = 1.0
    stream_share: float = 0.0


FEATURES = (
    Feature(
        "chat-assistant",
        34,
        {
            "gpt-4o-mini": 5, "gpt-4o": 3, "gpt-4.1-mini": 2, "claude-3-5-haiku-latest": 2,
            "claude-sonnet-4-0": 2, "gemini-2.5-flash": 3, "gemini-2.0-flash": 2,
        },
        1.0, 0.85,
    ),
    Feature(
        "support-bot",
        20,
        {"gpt-4o-mini": 4, "gpt-4.1-mini": 3, "claude-3-5-haiku-latest": 3, "gemini-2.0-flash": 2},
        1.4, 0.7,
    ),
    Feature(
        "summarize",
        14,
        {
            "gpt-4.1": 3, "gpt-4o": 2, "claude-sonnet-4-0": 3, "gemini-2.5-flash": 2,
            "gemini-2.5-pro": 1,
        },
        3.0, 0.2,
    ),
    Feature(
        "extraction",
        10,
        {"gpt-4.1-mini": 3, "gpt-4o-mini": 3, "gemini-2.0-flash": 2, "claude-3-5-haiku-latest": 1},
        1.6, 0.0,
    ),
    Feature(
        "code-review",
        7,
        {"o4-mini": 3, "o3-mini": 2, "claude-sonnet-4-0": 3, "gemini-2.5-pro": 2, "gpt-4.1": 1},
        2.2, 0.5,
    ),
    Feature("search", 15, {"text-embedding-3-small": 1}, 1.0, 0.0),
)  # fmt: skip

# Relative traffic by UTC hour: Europe's working day, then America's.
HOUR_WEIGHTS = (
    2, 1.5, 1.2, 1, 1, 1.2, 2, 3, 5, 7, 8, 8.5, 8, 9, 10, 10.5, 10, 9, 8, 7, 6, 5, 4, 3,
)  # fmt: skip
WEEKDAY_WEIGHTS = (1.0, 1.06, 1.05, 1.02, 0.94, 0.46, 0.4)  # Monday first

_WORDS = (
    "acme", "northwind", "globex", "initech", "umbrella", "stark", "wayne", "hooli", "vandelay",
    "tyrell", "cyberdyne", "soylent", "wonka", "oscorp", "aperture", "blackmesa", "gringotts",
    "monarch", "pied-piper", "dunder", "prestige", "massive", "sterling", "bluth", "kramerica",
    "nakatomi", "virtucon", "zorg", "abstergo", "octan", "rekall", "spacely", "cogswell", "gekko",
    "duff", "krusty", "lacroix", "mooby", "nimbus", "orbit", "pinnacle", "quantum", "redwood",
    "summit", "tandem", "unity", "vertex", "willow", "yonder", "zenith",
)  # fmt: skip
_SUFFIXES = (
    "labs", "health", "bank", "ai", "io", "legal", "retail", "travel", "energy", "media", "games",
    "logistics",
)  # fmt: skip

ERROR_SPLIT = (
    # (cumulative chance, status, outcome); the rest are successes.
    (0.011, 429, "ok"),  # the provider's rate limit, passed through
    (0.016, 500, "ok"),  # the provider's own failure, passed through
    (0.019, 502, "upstream_error"),  # the provider could not be reached
    (0.020, 504, "upstream_error"),
    (0.023, 200, "client_disconnected"),  # a user closed the tab mid-stream: billed, no error
)
MODEL_LIST_CHANCE = 0.002  # GET /v1/models from an SDK: forwarded, recorded, no tokens


@dataclass(frozen=True)
class DemoCustomer:
    external_id: str
    name: str
    weight: float
    first_day: int  # index of the first day it sends traffic
    last_day: int  # index of the last day
    provider: str  # the provider it leans on
    features: tuple[float, ...]  # relative weight of each of FEATURES


def demo_customers(count: int, days: int, seed: int = DEFAULT_SEED) -> list[DemoCustomer]:
    """``count`` customers, biggest first: Zipf weights (a few big ones, a long tail); about one
    in ten joins during the window and one in twenty leaves before its end (never the ten
    biggest, whose absence would look like an outage)."""
    rng = _random(f"{seed}:customers")
    names = [f"{word}-{suffix}" for word in _WORDS for suffix in _SUFFIXES]
    rng.shuffle(names)
    if count > len(names):
        names += [f"customer-{index:05d}" for index in range(count - len(names))]
    customers = []
    for rank in range(count):
        external_id = names[rank]
        first_day, last_day = 0, days - 1
        if rank >= 10 and rng.random() < 0.1:
            first_day = rng.randrange(1, max(days - 3, 2))
        elif rank >= 10 and rng.random() < 0.05:
            last_day = rng.randrange(days // 2, days)
        provider = rng.choices(("openai", "anthropic", "google"), (55, 27, 18))[0]
        features = tuple(f.weight * rng.lognormvariate(0, 0.8) for f in FEATURES)
        customers.append(
            DemoCustomer(
                external_id=external_id,
                name=external_id.replace("-", " ")
                .title()
                .replace(" Ai", " AI")
                .replace(" Io", ".io"),
                weight=1 / (rank + 1) ** 1.1,
                first_day=first_day,
                last_day=last_day,
                provider=provider,
                features=features,
            )
        )
    return customers


def _random(seed) -> random.Random:
    """Demo data wants repeatable draws, not secrets."""
    return random.Random(seed)  # noqa: S311


def _cumulative(weights) -> list[float]:
    return list(itertools.accumulate(weights))


class _CustomerChoices:
    """Per customer, the cumulative weights of its features and, per feature, of its models
    (the models of the provider it leans on count three times)."""

    def __init__(self, customer: DemoCustomer):
        self.features = _cumulative(customer.features)
        self.models: list[tuple[list[ModelProfile], list[float]]] = []
        for feature in FEATURES:
            profiles = [MODELS[name] for name in feature.models]
            weights = [
                weight * (3 if MODELS[name].provider == customer.provider else 1)
                for name, weight in feature.models.items()
            ]
            self.models.append((profiles, _cumulative(weights)))


def _day_weights(first: date, days: int, end: datetime, spike_index: int, rng) -> list[float]:
    weights = []
    hour_total = sum(HOUR_WEIGHTS)
    for index in range(days):
        day = first + timedelta(days=index)
        weight = WEEKDAY_WEIGHTS[day.weekday()] * (0.8 + 0.4 * index / max(days - 1, 1))
        weight *= rng.uniform(0.9, 1.1)
        if day == end.date():  # today: only the hours gone by
            weight *= sum(HOUR_WEIGHTS[: end.hour]) / hour_total
        if index == spike_index:
            weight *= 1 + SPIKE_EXTRA
        weights.append(weight)
    return weights


# On the spike day one customer's batch job adds this much to the day's normal volume.
SPIKE_EXTRA = 2.5
SPIKE_FEATURE = "summarize"
SPIKE_MODEL = "gpt-4.1"


def demo_records(
    *,
    organization_id: int,
    days: int,
    customers: int,
    events: int,
    end: datetime,
    seed: int = DEFAULT_SEED,
    token_id: int | None = None,
) -> Iterator[dict]:
    """Usage records, day by day, for ``days`` UTC days ending with ``end``'s (the last day only
    up to ``end``'s hour): ``events`` in all, for ``customers`` customers.

    The spike: a week before the last day (the middle of a short window), the fourth-biggest
    customer's summarising job runs away for a few afternoon hours on gpt-4.1 with long prompts.
    """
    end = end.astimezone(UTC)
    rng = _random(seed)
    people = demo_customers(customers, days, seed)
    choices = [_CustomerChoices(c) for c in people]
    first = end.date() - timedelta(days=days - 1)
    spike_index = days - 8 if days > 10 else (days // 2 if days >= 3 else -1)
    spike_customer = min(3, len(people) - 1)
    weights = _day_weights(first, days, end, spike_index, rng)
    total_weight = sum(weights)
    counts = [int(events * w / total_weight) for w in weights]
    counts[-2 if len(counts) > 1 else -1] += events - sum(counts)
    feature_index = {f.name: i for i, f in enumerate(FEATURES)}
    sequence = itertools.count()
    for index, count in enumerate(counts):
        day = first + timedelta(days=index)
        midnight = datetime.combine(day, time.min, tzinfo=UTC)
        hours = range(24) if day != end.date() else range(end.hour)
        if not hours or not count:
            continue
        hour_weights = _cumulative(HOUR_WEIGHTS[h] for h in hours)
        active = [(i, c.weight) for i, c in enumerate(people) if c.first_day <= index <= c.last_day]
        active_ids, active_weights = zip(*active, strict=True)
        spike = 0
        if index == spike_index:
            spike = int(count * SPIKE_EXTRA / (1 + SPIKE_EXTRA))
        who = rng.choices(active_ids, cum_weights=_cumulative(active_weights), k=count - spike)
        when = rng.choices(hours, cum_weights=hour_weights, k=count - spike)
        plan = [(c, h, None) for c, h in zip(who, when, strict=True)]
        plan += [
            (spike_customer, rng.choice((13, 14, 15, 16)), feature_index[SPIKE_FEATURE])
            for _ in range(spike)
        ]
        for customer_index, hour, forced_feature in plan:
            offset = hour * 3600 + rng.random() * 3600
            timestamp = midnight + timedelta(seconds=offset)
            number = next(sequence)
            yield _record(
                rng=rng,
                organization_id=organization_id,
                token_id=token_id,
                request_id=f"demo-{organization_id}-{seed}-{number:08d}",
                timestamp=timestamp,
                customer=people[customer_index],
                choices=choices[customer_index],
                forced_feature=forced_feature,
            )


def _lognormal(rng, median: float, sigma: float) -> int:
    return max(1, int(median * math.exp(rng.gauss(0, sigma))))


def _record(
    *, rng, organization_id, token_id, request_id, timestamp, customer, choices, forced_feature
) -> dict:
    if forced_feature is None:
        feature_index = bisect.bisect(choices.features, rng.random() * choices.features[-1])
    else:
        feature_index = forced_feature
    feature = FEATURES[feature_index]
    if forced_feature is not None:
        profile = MODELS[SPIKE_MODEL]
    else:
        profiles, cumulative = choices.models[feature_index]
        profile = profiles[bisect.bisect(cumulative, rng.random() * cumulative[-1])]
    environment = "production" if rng.random() < 0.93 else "staging"
    record = {
        "request_id": request_id,
        "organization_id": organization_id,
        "token_id": token_id,
        "timestamp": timestamp,
        "provider": profile.provider,
        "model": profile.model,
        "requested_model": profile.requested,
        "customer": customer.external_id,
        "properties": {"feature": feature.name, "environment": environment},
        "service_tier": "",
        "overhead_ms": round(rng.lognormvariate(-0.6, 0.35), 3),
    }
    roll = rng.random()
    if roll < MODEL_LIST_CHANCE and profile.provider == "openai":
        return _model_list(record, rng)
    for chance, status, outcome in ERROR_SPLIT:
        if roll < chance:
            if status >= 400:
                return _failed(record, rng, profile, status, outcome)
            return _succeeded(record, rng, profile, feature, disconnected=True)
    return _succeeded(record, rng, profile, feature, disconnected=False)


def _endpoint(profile: ModelProfile, rng) -> str:
    if profile.provider == "anthropic":
        return "messages"
    if profile.provider == "google":
        return "generate"
    if profile.embedding:
        return "embeddings"
    return "responses" if rng.random() < 0.2 else "chat"


def _empty_usage(record: dict) -> dict:
    record.update(
        input_tokens=None,
        cached_input_tokens=None,
        cache_write_tokens=None,
        cache_write_1h_tokens=None,
        output_tokens=None,
        reasoning_tokens=None,
        raw_usage=None,
    )
    return record


def _model_list(record: dict, rng) -> dict:
    latency = _lognormal(rng, 120, 0.4)
    record.update(
        endpoint="other",
        model="",
        requested_model="",
        status=200,
        stream=False,
        outcome="ok",
        latency_ms=latency,
        ttfb_ms=latency,
    )
    return _empty_usage(record)


def _failed(record: dict, rng, profile: ModelProfile, status: int, outcome: str) -> dict:
    if status == 429:
        latency = _lognormal(rng, 90, 0.5)
    elif status == 504:
        latency = _lognormal(rng, 30_000, 0.3)
    else:
        latency = _lognormal(rng, 700, 0.8)
    record.update(
        endpoint=_endpoint(profile, rng),
        status=status,
        stream=False,
        outcome=outcome,
        latency_ms=latency,
        ttfb_ms=None if outcome == "upstream_error" else latency,
    )
    return _empty_usage(record)


def _succeeded(record, rng, profile: ModelProfile, feature: Feature, *, disconnected) -> dict:
    endpoint = _endpoint(profile, rng)
    stream = not profile.embedding and (disconnected or rng.random() < feature.stream_share)
    input_tokens = _lognormal(rng, profile.input_median * feature.input_scale, 0.9)
    if profile.embedding:
        output = reasoning = 0
    else:
        output = _lognormal(rng, profile.output_median, 0.8)
        reasoning = 0
        if profile.reasoning and rng.random() < profile.reasoning_chance:
            reasoning = int(output * min(0.95, profile.reasoning * rng.uniform(0.7, 1.25)))
        if disconnected:  # stopped early: billed for what was generated
            output = max(1, int(output * rng.uniform(0.1, 0.7)))
            reasoning = min(reasoning, output)
    cached = writes = writes_1h = 0
    if rng.random() < profile.cache_read_chance and input_tokens >= 1024:
        cached = int(input_tokens * rng.uniform(0.4, 0.9))
        if profile.provider == "openai":
            cached -= cached % 128  # OpenAI caches in 128-token steps
    if rng.random() < profile.cache_write_chance:
        writes = int((input_tokens - cached) * rng.uniform(0.3, 0.8))
        writes_1h = writes if rng.random() < 0.3 else 0
    ttfb = _lognormal(rng, profile.ttfb_ms, 0.45)
    generation = int(output * profile.ms_per_token * rng.uniform(0.8, 1.3))
    latency = ttfb + generation if stream else _lognormal(rng, profile.ttfb_ms, 0.3) + generation
    record.update(
        endpoint=endpoint,
        status=200,
        stream=stream,
        outcome="client_disconnected" if disconnected else "ok",
        latency_ms=latency,
        ttfb_ms=ttfb if stream else latency,
        **_usage_fields(
            profile, endpoint, input_tokens, cached, writes, writes_1h, output, reasoning
        ),
    )
    return record


def _usage_fields(profile, endpoint, input_tokens, cached, writes, writes_1h, output, reasoning):
    """Normalised counts plus the usage object the provider would have sent."""
    fields = {
        "input_tokens": input_tokens,
        "cached_input_tokens": cached,
        "cache_write_tokens": writes,
        "cache_write_1h_tokens": None,
        "output_tokens": output,
        "reasoning_tokens": reasoning,
    }
    if profile.provider == "anthropic":
        fields["cache_write_1h_tokens"] = writes_1h
        fields["reasoning_tokens"] = None  # Anthropic reports no thinking count
        fields["raw_usage"] = {
            "input_tokens": input_tokens - cached - writes,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": writes,
            "cache_creation": {
                "ephemeral_5m_input_tokens": writes - writes_1h,
                "ephemeral_1h_input_tokens": writes_1h,
            },
            "output_tokens": output,
        }
    elif profile.provider == "google":
        fields["cache_write_tokens"] = None
        fields["raw_usage"] = {
            "promptTokenCount": input_tokens,
            "cachedContentTokenCount": cached,
            "candidatesTokenCount": output - reasoning,
            "thoughtsTokenCount": reasoning,
            "totalTokenCount": input_tokens + output,
        }
    elif profile.embedding:
        fields.update(output_tokens=None, reasoning_tokens=None)
        fields["raw_usage"] = {"prompt_tokens": input_tokens, "total_tokens": input_tokens}
    elif endpoint == "responses":
        fields["raw_usage"] = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output,
        }
    else:
        fields["raw_usage"] = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output,
            "total_tokens": input_tokens + output,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
        }
    return fields


def demo_traffic_write(
    *,
    organization: Organization,
    days: int,
    customers: int,
    events: int,
    end: datetime,
    seed: int = DEFAULT_SEED,
    batch_size: int = WRITE_BATCH,
    token_id: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the demo traffic through the usage writer in batches; returns events stored.
    ``progress`` is called with the running count after each batch."""
    stored = 0
    batch: list[dict] = []
    for record in demo_records(
        organization_id=organization.pk,
        days=days,
        customers=customers,
        events=events,
        end=end,
        seed=seed,
        token_id=token_id,
    ):
        batch.append(record)
        if len(batch) >= batch_size:
            stored += usage_events_write(batch)
            batch = []
            if progress:
                progress(stored)
    if batch:
        stored += usage_events_write(batch)
        if progress:
            progress(stored)
    return stored


def demo_customer_names_apply(
    *, organization: Organization, customers: int, days: int, seed=DEFAULT_SEED
):
    """Give the demo customers display names (the writer knows only their external ids)."""
    names = {c.external_id: c.name for c in demo_customers(customers, days, seed)}
    rows = list(Customer.objects.for_org(organization).filter(external_id__in=list(names)))
    for row in rows:
        row.name = names[row.external_id]
    Customer.objects.for_org(organization).bulk_update(rows, ["name"], batch_size=500)


# --- Stripe revenue ----------------------------------------------------------------------------

PLAN_TIERS = (29, 49, 99, 249, 499, 999, 1999, 4999, 9999, 19999)  # monthly, major units
EUR_RANK = 5  # this customer pays in euros: its margin is not computed (no USD revenue)
UNPROFITABLE_RANKS = (1, 6)  # these pay less than their AI costs
WITHOUT_STRIPE = 4  # the smallest customers are on a free trial: no Stripe customer


def _fee(amount: int, currency: str) -> int:
    """Stripe's card fee in minor units: 2.9% + 30¢ (USD), 1.5% + 25c (EUR)."""
    rate, fixed = (Decimal("0.029"), 30) if currency == "usd" else (Decimal("0.015"), 25)
    return int((amount * rate).quantize(Decimal(1), ROUND_HALF_UP)) + fixed


def _months_back(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


@transaction.atomic
def demo_revenue_create(
    *, organization: Organization, end: datetime, days: int, seed: int = DEFAULT_SEED
) -> dict:
    """A Stripe account as Costr's sync would have mirrored it: a read-only connection, one
    Stripe customer per paying Costr customer (mapped by the ``costr_customer_id`` metadata),
    and a monthly subscription charge for the last three months, priced from each customer's
    AI cost over the window so margins look like a real business's: most customers pay several
    times their cost, two pay less (unprofitable), one pays in EUR (no margin: no USD revenue),
    the smallest have no Stripe customer. One charge is partly refunded.

    Returns counts of what was created. Nothing here talks to Stripe."""
    rng = _random(f"{seed}:revenue")
    end = end.astimezone(UTC)
    start = end - timedelta(days=days)
    costs = {
        key: totals.cost
        for key, totals in usage_by(
            organization=organization, start=start, end=end, group_by="customer"
        ).items()
        if key
    }
    ranked = sorted(costs, key=lambda key: (-costs[key], key))
    paying = ranked[: max(len(ranked) - WITHOUT_STRIPE, 0)]
    monthly_cost_scale = Decimal(30) / Decimal(days)

    connection = StripeConnection(
        organization=organization,
        livemode=False,
        last4="demo",
        account_id="acct_demo",
        account_name="Demo account (no Stripe calls)",
        is_demo=True,
        permissions=dict.fromkeys(
            ("customers", "charges", "disputes", "balance_transactions", "invoices"), True
        ),
        revenue_source=RevenueSource.BALANCE,
        sync_status=SyncStatus.OK,
        last_success_at=end,
    )
    seal(connection, "rk_test_" + secrets.token_hex(16))  # a placeholder: never used
    connection.save()

    stripe_customers, charges, transactions = [], [], []
    first_month = _months_back(end.date(), 3)
    for rank, external_id in enumerate(paying):
        currency = "eur" if rank == EUR_RANK else "usd"
        monthly_cost = costs[external_id] * monthly_cost_scale
        if rank in UNPROFITABLE_RANKS:
            # A discounted early deal that no longer covers what the customer uses.
            plan = max(1, int(monthly_cost * Decimal(rng.uniform(0.45, 0.8))))
        else:
            wanted = monthly_cost * Decimal(rng.uniform(2.5, 6))
            plan = min([t for t in PLAN_TIERS if t >= wanted] or [PLAN_TIERS[-1]])
        stripe_id = f"cus_demo{rank:05d}"
        billing_day = rng.randint(1, 28)
        stripe_customers.append(
            StripeCustomer(
                organization=organization,
                stripe_id=stripe_id,
                email=f"billing@{external_id}.example.com",
                name=external_id.replace("-", " ").title(),
                metadata={"costr_customer_id": external_id},
                currency=currency,
                created=datetime.combine(_months_back(first_month, 1), time(9), tzinfo=UTC),
            )
        )
        for month_offset in range(4):
            month = _months_back(end.date(), 3 - month_offset)
            created = datetime(month.year, month.month, billing_day, 10, tzinfo=UTC) + timedelta(
                minutes=rng.randrange(600)
            )
            if created >= end:
                continue
            amount = plan * 100
            charge_id = f"ch_demo{rank:05d}{month:%Y%m}"
            fee = _fee(amount, currency)
            charges.append(
                StripeCharge(
                    organization=organization,
                    stripe_id=charge_id,
                    stripe_customer_id=stripe_id,
                    amount=amount,
                    currency=currency,
                    created=created,
                )
            )
            transactions.append(
                StripeBalanceTransaction(
                    organization=organization,
                    stripe_id=f"txn_demo{rank:05d}{month:%Y%m}",
                    type="charge",
                    reporting_category="charge",
                    amount=amount,
                    fee=fee,
                    net=amount - fee,
                    currency=currency,
                    created=created,
                    source_id=charge_id,
                    charge_id=charge_id,
                    stripe_customer_id=stripe_id,
                )
            )
    # One unhappy customer got a fifth of its last charge back.
    refunded = next((t for t in reversed(transactions) if t.currency == "usd"), None)
    if refunded is not None:
        refund = refunded.amount // 5
        transactions.append(
            StripeBalanceTransaction(
                organization=organization,
                stripe_id=f"txn_demo_refund_{refunded.charge_id}",
                type="refund",
                reporting_category="refund",
                amount=-refund,
                fee=0,
                net=-refund,
                currency="usd",
                created=min(refunded.created + timedelta(days=2), end - timedelta(minutes=1)),
                source_id=f"re_demo_{refunded.charge_id}",
                charge_id=refunded.charge_id,
                stripe_customer_id=refunded.stripe_customer_id,
            )
        )
    StripeCustomer.objects.for_org(organization).bulk_create(stripe_customers)
    StripeCharge.objects.for_org(organization).bulk_create(charges)
    StripeBalanceTransaction.objects.for_org(organization).bulk_create(transactions)
    stripe_mappings_resolve(organization=organization)
    revenue_rebuild(organization=organization)
    return {
        "stripe_customers": len(stripe_customers),
        "charges": len(charges),
        "balance_transactions": len(transactions),
    }


def demo_refusals_record(
    *, organization: Organization, end: datetime, days: int, seed=DEFAULT_SEED
):
    """A few requests the proxy refused before forwarding: an old token still in a cron job,
    a staging service without the proxy scope, one oversized upload."""
    rng = _random(f"{seed}:refusals")
    first = end.astimezone(UTC).date() - timedelta(days=days - 1)
    counts = []
    for index in range(days):
        day = (first + timedelta(days=index)).isoformat()
        if index >= days - 12:  # a revoked token that a cron job still sends, daily
            counts.append(_refusal(organization, day, 401, "invalid_token", rng.randint(20, 30)))
        if rng.random() < 0.15:
            counts.append(_refusal(organization, day, 403, "token_scope", rng.randint(1, 6)))
    counts.append(_refusal(organization, first.isoformat(), 413, "body_too_large", 1))
    counts.append(_refusal(organization, first.isoformat(), 400, "invalid_customer", 2))
    return refusals_record(counts)


def _refusal(organization, day: str, status: int, code: str, count: int) -> dict:
    return {
        "org_slug": organization.slug,
        "day": day,
        "status": status,
        "code": code,
        "count": count,
    }


# --- the demo organization ---------------------------------------------------------------------


def demo_organization_destroy(*, organization: Organization) -> None:
    """Everything of an earlier demo organization, at once: the account deletion path (marked
    out of reach, secrets destroyed, data deleted in batches, the row last), run here rather
    than queued, so the slug is free when this returns."""
    if organization.deletion_requested_at is None:
        with transaction.atomic():
            organization_deletion_mark(organization=organization, actor=None)
            organization_secrets_destroy(organization=organization)
    while not organization_data_delete(organization_id=organization.pk, max_batches=1000):
        pass


@sensitive_variables("password")
def demo_organization_create(*, slug: str, email: str, password: str) -> Organization:
    """The demo organization, owned by ``email`` with ``password`` (an existing person with that
    address is reused and gets the new password)."""
    with transaction.atomic():
        owner = User.objects.filter(email__iexact=email).first()
        if owner is None:
            owner = User.objects.create_user(email=email, password=password, name="Demo Owner")
        else:
            owner.set_password(password)
            owner.save(update_fields=["password"])
        return organization_create(name="Demo Inc.", slug=slug, owner=owner)
