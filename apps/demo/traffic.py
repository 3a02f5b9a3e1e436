"""The demo traffic: usage records the proxy could have produced, and the requests it refused.

Two users: ``manage.py costr_demo`` (a month for ~50 customers, so a newcomer sees living
dashboards) and the reporting benchmark (a million events for 500 customers over 90 days).

The traffic goes through ``usage_events_write``, the writer real traffic goes through, so events,
customers and daily rollups are exactly what the proxy would have produced, priced by the same
catalog; refusals go through ``refusals_record``, as the proxy's counts do. Records look like the
proxy's: each provider's own usage object in ``raw_usage``, token fields normalised as DESIGN.md
says (input includes cache reads and writes, output includes reasoning), the response's dated
model name next to the requested alias.

What makes it look real (the numbers are in ``profiles``, the customers in ``customers``): a few
large customers and a long tail (Zipf weights), customers that start or stop during the window, a
weekly rhythm with quiet weekends and business-hour peaks, slow growth, one day with a runaway
batch job, per-feature model choice (embeddings for search, reasoning models for code review),
cache reads and 5-minute/1-hour cache writes, reasoning tokens and Gemini thoughts, ~2% errors
(429, 500, upstream failures), a few client disconnects, latency and time to first byte per
model, and a streaming share per feature.

Everything is drawn from one ``demo_random(seed)``: the same seed, window and sizes give the
same records (request ids included, so writing twice stores nothing new).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time, timedelta

from apps.accounts.models import Organization
from apps.demo.customers import CustomerChoices, demo_customers
from apps.demo.profiles import (
    DEFAULT_SEED,
    ERROR_SPLIT,
    FEATURES,
    HOUR_WEIGHTS,
    MODEL_LIST_CHANCE,
    MODELS,
    SPIKE_EXTRA,
    SPIKE_FEATURE,
    SPIKE_MODEL,
    Feature,
    ModelProfile,
    cumulative_weights,
    day_weights,
    demo_random,
)
from apps.usage.metering.events import refusals_record, usage_events_write

WRITE_BATCH = 20_000


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
    rng = demo_random(seed)
    people = demo_customers(customers, days, seed)
    choices = [CustomerChoices(c) for c in people]
    first = end.date() - timedelta(days=days - 1)
    spike_index = days - 8 if days > 10 else (days // 2 if days >= 3 else -1)
    spike_customer = min(3, len(people) - 1)
    weights = day_weights(first, days, end, spike_index, rng)
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
        hour_weights = cumulative_weights(HOUR_WEIGHTS[h] for h in hours)
        active = [(i, c.weight) for i, c in enumerate(people) if c.first_day <= index <= c.last_day]
        active_ids, active_weights = zip(*active, strict=True)
        spike = 0
        if index == spike_index:
            spike = int(count * SPIKE_EXTRA / (1 + SPIKE_EXTRA))
        who = rng.choices(
            active_ids, cum_weights=cumulative_weights(active_weights), k=count - spike
        )
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
    for chance, status, answered in ERROR_SPLIT:
        if roll < chance:
            if status >= 400:
                return _failed(record, rng, profile, status, answered=answered)
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


def _failed(record: dict, rng, profile: ModelProfile, status: int, *, answered: bool) -> dict:
    """A provider error, or a provider Costr could not reach (``answered`` False: no first
    byte): no usage, so the writer prices it ``no_usage`` (cost 0, neither unpriced nor
    usage-unknown), outcome ``upstream_error`` as the proxy records it (DESIGN.md, "Usage
    event")."""
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
        outcome="upstream_error",
        latency_ms=latency,
        ttfb_ms=latency if answered else None,
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


def demo_refusals_record(
    *, organization: Organization, end: datetime, days: int, seed=DEFAULT_SEED
):
    """A few requests the proxy refused before forwarding: an old token still in a cron job,
    a staging service without the proxy scope, one oversized upload."""
    rng = demo_random(f"{seed}:refusals")
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
