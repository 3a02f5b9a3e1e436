"""Why each event costs what it does (DESIGN.md, "Usage event"): the price sources ``catalog``,
``override``, ``unpriced``, ``no_usage`` and ``usage_unknown``; usage beyond tokens (audio,
seconds, characters) and batch items priced at the catalog's rates; hostile usage details; and
``reprice`` classifying old events the way the writer classifies new ones.

Every record goes through the real writer. Expected costs are worked out here from genai-prices'
published rates (per million tokens unless said otherwise), never by calling ``pricing``.
"""

from datetime import date
from decimal import Decimal

import pytest

from apps.usage.metering.events import usage_events_write
from apps.usage.metering.writer import store_events
from apps.usage.models import DailyRollup, OrganizationDailyRollup, PriceOverride, UsageEvent
from apps.usage.repricing import usage_reprice
from apps.usage.rollups import rollups_rebuild_day
from apps.usage.tests.factories import NO_TOKENS, usage_record

pytestmark = pytest.mark.django_db

M = Decimal(1_000_000)
DAY = date(2026, 11, 2)  # the factory's timestamp: after every batch rate's start (2026-10-14)
# gpt-4o-mini: $0.15 in, $0.60 out. 1000 in, 100 out = 150 + 60 µ$.
MINI_1000_100 = Decimal("0.000210")


def _stored(org) -> dict[str, tuple]:
    return {
        request_id: (cost, source)
        for request_id, cost, source in UsageEvent.objects.for_org(org).values_list(
            "request_id", "cost_usd", "price_source"
        )
    }


def _no_usage(org, request_id, **fields):
    return usage_record(org, request_id=request_id, **NO_TOKENS, **fields)


def test_each_price_source_by_its_rule(org):
    """One record per rule, all in one batch."""
    records = [
        usage_record(org, request_id="priced"),
        usage_record(org, request_id="unknown-model", model="my-llama"),
        # A billable call that succeeded without readable usage.
        _no_usage(org, "no-usage-read"),
        _no_usage(org, "left-after-success", outcome="client_disconnected"),
        _no_usage(org, "realtime-billable", endpoint="realtime", billable=True),
        # The provider bills nothing: an error by status or outcome, a non-billable endpoint,
        # a record marked not billable.
        _no_usage(org, "rate-limited", status=429),  # as stored before outcomes were fixed
        _no_usage(org, "server-error", status=500, outcome="upstream_error"),
        _no_usage(org, "bad-gateway", status=200, outcome="upstream_error"),
        _no_usage(org, "cut-off", outcome="upstream_disconnected"),
        _no_usage(org, "costr-broke", outcome="costr_error"),
        _no_usage(org, "models-list", endpoint="other"),
        _no_usage(
            org,
            "count-tokens",
            endpoint="count_tokens",
            provider="anthropic",
            model="claude-haiku-4-5",
        ),
        _no_usage(org, "silent-session", endpoint="realtime", billable=False),
        # An error that still reports usage is priced from it.
        usage_record(org, request_id="error-with-usage", status=500, outcome="upstream_error"),
    ]

    assert usage_events_write(records) == len(records)

    zero = Decimal(0)
    assert _stored(org) == {
        "priced": (MINI_1000_100, "catalog"),
        "unknown-model": (None, "unpriced"),
        "no-usage-read": (None, "usage_unknown"),
        "left-after-success": (None, "usage_unknown"),
        "realtime-billable": (None, "usage_unknown"),
        "rate-limited": (zero, "no_usage"),
        "server-error": (zero, "no_usage"),
        "bad-gateway": (zero, "no_usage"),
        "cut-off": (zero, "no_usage"),
        "costr-broke": (zero, "no_usage"),
        "models-list": (zero, "no_usage"),
        "count-tokens": (zero, "no_usage"),
        "silent-session": (zero, "no_usage"),
        "error-with-usage": (MINI_1000_100, "catalog"),
    }
    rollup = OrganizationDailyRollup.objects.for_org(org).get(day=DAY, model="gpt-4o-mini")
    # The unknown model and claude-haiku-4-5 have rows of their own; of gpt-4o-mini's 12
    # requests, 3 are usage-unknown and none unpriced.
    assert (rollup.requests, rollup.unpriced_requests, rollup.usage_unknown_requests) == (12, 0, 3)
    assert rollup.cost_usd == 2 * MINI_1000_100
    unknown = OrganizationDailyRollup.objects.for_org(org).get(day=DAY, model="my-llama")
    assert (unknown.requests, unknown.unpriced_requests, unknown.usage_unknown_requests) == (
        1,
        1,
        0,
    )


AUDIO_CASES = [
    # whisper-1: $0.36 per audio hour (= $0.006 a minute).
    (
        "whisper-minute",
        {"model": "whisper-1", "endpoint": "transcriptions", **NO_TOKENS},
        {"audio_seconds": 60},
        Decimal("0.36") * 60 / 3600,
    ),
    (
        "whisper-fraction",
        {"model": "whisper-1", "endpoint": "translations", **NO_TOKENS},
        {"audio_seconds": 12.5},
        Decimal("0.36") * Decimal("12.5") / 3600,
    ),
    # tts-1: $15 per million input characters.
    (
        "tts",
        {"model": "tts-1", "endpoint": "speech", **NO_TOKENS},
        {"input_characters": 1000},
        Decimal(15) * 1000 / M,
    ),
    # gpt-4o-transcribe: text in $2.50, audio in $6, out $10. 1000 in of which 800 audio, 100 out.
    (
        "transcribe",
        {
            "model": "gpt-4o-transcribe",
            "endpoint": "transcriptions",
            "input_tokens": 1000,
            "output_tokens": 100,
        },
        {"input_audio_tokens": 800},
        (200 * Decimal("2.5") + 800 * Decimal(6) + 100 * Decimal(10)) / M,
    ),
    # gpt-realtime: text in $4, cached text $0.40, audio in $32, cached audio $0.40, text out $16,
    # audio out $64. 1000 in: 300 cached (100 of them audio), 600 audio (the 100 cached
    # included); 200 out, 150 of them audio. Text in 1000 - 300 - 500 = 200, cached text 200,
    # audio in 500, cached audio 100, text out 50, audio out 150.
    (
        "realtime-audio",
        {
            "model": "gpt-realtime",
            "endpoint": "realtime",
            "input_tokens": 1000,
            "cached_input_tokens": 300,
            "output_tokens": 200,
        },
        {"input_audio_tokens": 600, "cache_audio_read_tokens": 100, "output_audio_tokens": 150},
        (
            200 * Decimal(4)
            + 200 * Decimal("0.4")
            + 500 * Decimal(32)
            + 100 * Decimal("0.4")
            + 50 * Decimal(16)
            + 150 * Decimal(64)
        )
        / M,
    ),
    # The same tokens all text: $4 in, $0.40 cached, $16 out.
    (
        "realtime-text",
        {
            "model": "gpt-realtime",
            "endpoint": "realtime",
            "input_tokens": 1000,
            "cached_input_tokens": 300,
            "output_tokens": 200,
        },
        None,
        (700 * Decimal(4) + 300 * Decimal("0.4") + 200 * Decimal(16)) / M,
    ),
]


@pytest.mark.parametrize(
    ("request_id", "fields", "details", "expected"), AUDIO_CASES, ids=[c[0] for c in AUDIO_CASES]
)
def test_audio_seconds_and_characters_are_priced_as_the_catalog_prices_them(
    org, request_id, fields, details, expected
):
    record = usage_record(org, request_id=request_id, usage_details=details, **fields)

    usage_events_write([record])

    event = UsageEvent.objects.for_org(org).get()
    assert (event.cost_usd, event.price_source) == (expected, "catalog")
    assert event.usage_details == details
    assert DailyRollup.objects.for_org(org).get().cost_usd == expected


BATCH_CASES = [
    # claude-sonnet-4-5: $3 in, $15 out; batch $1.50 in, $7.50 out.
    ("anthropic", "claude-sonnet-4-5", Decimal("0.0045"), Decimal("0.00225")),
    # gpt-4o-mini: $0.15 in, $0.60 out; batch $0.075 in, $0.30 out.
    ("openai", "gpt-4o-mini", Decimal("0.000210"), Decimal("0.000105")),
    # gemini-2.5-flash: $0.30 in, $2.50 out; batch $0.15 in, $1.25 out.
    ("google", "gemini-2.5-flash", Decimal("0.00055"), Decimal("0.000275")),
]


@pytest.mark.parametrize(("provider", "model", "standard", "batch"), BATCH_CASES)
def test_a_batch_item_is_priced_at_the_batch_rate(org, provider, model, standard, batch):
    """1000 tokens in, 100 out, as a live request and as a batch item."""
    common = {"provider": provider, "model": model, "input_tokens": 1000, "output_tokens": 100}
    usage_events_write(
        [
            usage_record(org, request_id="live", **common),
            usage_record(org, request_id="batch", service_tier="batch", **common),
        ]
    )

    assert _stored(org) == {"live": (standard, "catalog"), "batch": (batch, "catalog")}


def test_an_override_prices_tokens_and_leaves_audio_to_the_catalog(org):
    """An override expresses tokens only: a request with audio, seconds or characters is priced
    by the catalog in full, or unpriced when the catalog does not know the model; one whose
    usage details are all zero is only tokens, and the override prices it."""
    for pattern in ("gpt-realtime*", "whisper-1", "my-whisper"):
        PriceOverride.objects.create(
            organization=org,
            model_pattern=pattern,
            valid_from="2026-01-01T00:00:00Z",
            input_per_mtok=Decimal(1),
            output_per_mtok=Decimal(1),
        )
    realtime = {"model": "gpt-realtime", "endpoint": "realtime"}
    usage_events_write(
        [
            usage_record(
                org,
                request_id="audio",
                input_tokens=1000,
                output_tokens=200,
                usage_details={"input_audio_tokens": 600, "output_audio_tokens": 150},
                **realtime,
            ),
            usage_record(
                org,
                request_id="text",
                input_tokens=1000,
                output_tokens=200,
                usage_details={"input_audio_tokens": 0, "output_audio_tokens": 0},
                **realtime,
            ),
            usage_record(
                org,
                request_id="whisper",
                model="whisper-1",
                usage_details={"audio_seconds": 60},
                **NO_TOKENS,
            ),
            usage_record(
                org,
                request_id="self-hosted",
                model="my-whisper",
                usage_details={"audio_seconds": 60},
                **NO_TOKENS,
            ),
        ]
    )

    assert _stored(org) == {
        # Catalog: text in 400 at $4, audio in 600 at $32, text out 50 at $16, audio out 150 at
        # $64.
        "audio": ((400 * 4 + 600 * 32 + 50 * 16 + 150 * 64) / M, "catalog"),
        # The override: 1200 tokens at $1.
        "text": (1200 / M, "override"),
        "whisper": (Decimal("0.006"), "catalog"),
        "self-hosted": (None, "unpriced"),
    }


def test_hostile_usage_details_are_dropped_and_never_fail_the_batch(org):
    """Whatever a record's usage details hold, the batch is stored whole (nothing set aside),
    each keeps only the known keys with non-negative finite numbers, and one whose details are
    inconsistent with its tokens is unpriced, not refused."""
    whisper = {"model": "whisper-1", "endpoint": "transcriptions", **NO_TOKENS}
    hostile = {
        "strings": {"audio_seconds": "60"},
        "negative": {"audio_seconds": -5, "input_characters": 10},
        "nan": {"audio_seconds": float("nan")},
        "infinite": {"audio_seconds": float("inf")},
        "huge": {"audio_seconds": 10**30},
        "bools": {"audio_seconds": True},
        "nested": {"audio_seconds": {"value": 60}, "input\x00_characters": 5},
        "unknown-keys": {"audio_hours": 1, "cost_usd": 0, "\ud800": 1},
        "a-list": [60],
        "a-string": "audio_seconds=60",
        "empty": {},
    }
    records = [
        usage_record(org, request_id=name, usage_details=details, **whisper)
        for name, details in hostile.items()
    ]
    # Audio tokens beyond the input they are a share of: stored, but no price can be right.
    records.append(
        usage_record(
            org,
            request_id="too-much-audio",
            model="gpt-realtime",
            input_tokens=100,
            output_tokens=10,
            usage_details={"input_audio_tokens": 500},
        )
    )
    set_aside = []

    stored = store_events(records, dead_letter=lambda *args: set_aside.append(args))

    assert (stored, set_aside) == (len(records), [])
    details = dict(UsageEvent.objects.for_org(org).values_list("request_id", "usage_details"))
    assert details == {
        **dict.fromkeys(hostile),
        "negative": {"input_characters": 10},
        "too-much-audio": {"input_audio_tokens": 500},
    }
    stored_prices = _stored(org)
    # tts-1's unit on whisper-1: the catalog prices whisper-1 by seconds only, 10 characters add
    # nothing (genai-prices counts a unit the model has no price for as 0).
    assert stored_prices["negative"] == (Decimal(0), "catalog")
    assert stored_prices["too-much-audio"] == (None, "unpriced")
    # No usage left at all: a billable success whose usage could not be read.
    assert stored_prices["nan"] == (None, "usage_unknown")


def _as_stored_before_price_sources(org) -> None:
    """What the writer stored before ``no_usage`` and ``usage_unknown`` existed: every event
    without a cost ``unpriced`` (an error without usage included), the rollups to match."""
    events = UsageEvent.objects.for_org(org)
    events.filter(input_tokens=None, output_tokens=None).exclude(
        request_id="silent-session"
    ).update(cost_usd=None, price_source="unpriced")
    rollups_rebuild_day(organization=org, day=DAY)


def test_reprice_reclassifies_events_stored_unpriced_for_want_of_usage(org):
    usage_events_write(
        [
            usage_record(org, request_id="priced"),
            usage_record(org, request_id="unknown-model", model="my-llama"),
            _no_usage(org, "no-usage-read"),
            _no_usage(org, "rate-limited", status=429),
            _no_usage(org, "models-list", endpoint="other"),
            # Not billable by the record's flag, which is not stored: stays no_usage.
            _no_usage(org, "silent-session", endpoint="realtime", billable=False),
        ]
    )
    _as_stored_before_price_sources(org)
    before = OrganizationDailyRollup.objects.for_org(org).get(day=DAY, model="gpt-4o-mini")
    assert (before.unpriced_requests, before.usage_unknown_requests) == (3, 0)

    assert usage_reprice(org) == 6

    zero = Decimal(0)
    assert _stored(org) == {
        "priced": (MINI_1000_100, "catalog"),
        "unknown-model": (None, "unpriced"),
        "no-usage-read": (None, "usage_unknown"),
        "rate-limited": (zero, "no_usage"),
        "models-list": (zero, "no_usage"),
        "silent-session": (zero, "no_usage"),
    }
    after = OrganizationDailyRollup.objects.for_org(org).get(day=DAY, model="gpt-4o-mini")
    assert (after.requests, after.unpriced_requests, after.usage_unknown_requests) == (5, 0, 1)
    daily = DailyRollup.objects.for_org(org).get(day=DAY, model="gpt-4o-mini")
    assert (daily.unpriced_requests, daily.usage_unknown_requests) == (0, 1)
    assert daily.cost_usd == MINI_1000_100
