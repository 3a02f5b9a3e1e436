"""What the demo traffic is made of: the models it calls and how their providers report usage,
the features of the organization's own app that call them, the weekly and daily rhythm, the
error mix and the runaway batch job, and the seeded random numbers every draw comes from.

Everything is drawn from ``demo_random(seed)``: the same seed, window and sizes give the same
records (request ids included, so writing twice stores nothing new).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta

DEFAULT_SEED = 20251101


def demo_random(seed) -> random.Random:
    """Demo data wants repeatable draws, not secrets."""
    return random.Random(seed)  # noqa: S311


def cumulative_weights(weights) -> list[float]:
    return list(itertools.accumulate(weights))


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

ERROR_SPLIT = (
    # (cumulative chance, status, the provider answered); the rest are successes.
    (0.011, 429, True),  # the provider's rate limit, passed through
    (0.016, 500, True),  # the provider's own failure, passed through
    (0.019, 502, False),  # the provider could not be reached
    (0.020, 504, False),
    (0.023, 200, True),  # a user closed the tab mid-stream: billed, no error
)
MODEL_LIST_CHANCE = 0.002  # GET /v1/models from an SDK: forwarded, recorded, no tokens

# On the spike day one customer's batch job adds this much to the day's normal volume.
SPIKE_EXTRA = 2.5
SPIKE_FEATURE = "summarize"
SPIKE_MODEL = "gpt-4.1"


def day_weights(first: date, days: int, end: datetime, spike_index: int, rng) -> list[float]:
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
