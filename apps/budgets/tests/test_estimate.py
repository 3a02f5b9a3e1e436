"""The reservation's upper estimate: never below what the provider bills for the request, and
never zero (apps/budgets/estimate.py). Prices are genai-prices' own, worked by hand here."""

import json
from datetime import UTC, datetime
from decimal import Decimal

from apps.budgets.estimate import DEFAULT_OUTPUT_TOKENS, estimate_cost, provider_ceiling
from apps.usage.pricing import OverridePrice, Overrides

NOW = datetime(2026, 12, 1, tzinfo=UTC)
MINI_IN, MINI_OUT = Decimal("0.15"), Decimal("0.60")  # gpt-4o-mini, per million tokens


def _estimate(body: dict | bytes | None, *, provider="openai", endpoint="chat", model=None, **kw):
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    if model is None and isinstance(body, dict):
        model = body.get("model", "")
    return estimate_cost(
        provider=provider,
        endpoint=endpoint,
        model=model or "",
        body=raw,
        body_size=kw.pop("body_size", len(raw or b"")),
        overrides=kw.pop("overrides", Overrides()),
        now=NOW,
    )


def _micro_ceiling(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.000001"), rounding="ROUND_CEILING")


def test_input_is_the_body_in_bytes_and_output_the_requests_cap():
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 500,
    }
    size = len(json.dumps(body).encode())
    expected = (size * MINI_IN + 500 * MINI_OUT) / 1_000_000
    assert _estimate(body) == _micro_ceiling(expected)


def test_each_providers_output_cap_is_read():
    responses = {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 70}
    completion = {"model": "gpt-4o-mini", "messages": [], "max_completion_tokens": 70}
    size_r, size_c = (len(json.dumps(b).encode()) for b in (responses, completion))
    assert _estimate(responses, endpoint="responses") == _micro_ceiling(
        (size_r * MINI_IN + 70 * MINI_OUT) / 1_000_000
    )
    assert _estimate(completion) == _micro_ceiling((size_c * MINI_IN + 70 * MINI_OUT) / 1_000_000)
    gemini = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 9}}
    # gemini-2.0-flash: $0.10 in, $0.40 out per million.
    size_g = len(json.dumps(gemini).encode())
    assert _estimate(gemini, provider="google", endpoint="generate", model="gemini-2.0-flash") == (
        _micro_ceiling((size_g * Decimal("0.10") + 9 * Decimal("0.40")) / 1_000_000)
    )


def test_without_a_cap_the_output_is_the_models_context_window():
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    size = len(json.dumps(body).encode())
    # gpt-4o-mini's context window in the catalog: 128,000 tokens.
    assert _estimate(body) == _micro_ceiling((size * MINI_IN + 128_000 * MINI_OUT) / 1_000_000)


def test_embeddings_have_no_output():
    body = {"model": "text-embedding-3-small", "input": "hello"}
    size = len(json.dumps(body).encode())
    assert _estimate(body, endpoint="embeddings") == _micro_ceiling(
        size * Decimal("0.02") / 1_000_000
    )


def test_an_unpriced_model_reserves_at_its_providers_highest_prices_never_zero():
    body = {"model": "my-finetune-xyz", "messages": [], "max_tokens": 10}
    size = len(json.dumps(body).encode())
    ceiling_in, ceiling_out = provider_ceiling("openai")
    assert ceiling_in >= Decimal(150) and ceiling_out >= Decimal(600)  # o1-pro's, at least
    assert _estimate(body) == _micro_ceiling((size * ceiling_in + 10 * ceiling_out) / 1_000_000)
    # No model at all, no body: still the provider's highest prices, never zero.
    unknown = _estimate(None, model="", body_size=0)
    assert unknown >= _micro_ceiling(DEFAULT_OUTPUT_TOKENS * ceiling_out / 1_000_000) > 0


def test_an_organizations_override_prices_the_estimate():
    override = OverridePrice(
        model_pattern="my-finetune-*",
        provider="openai",
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        input_per_mtok=Decimal(2),
        output_per_mtok=Decimal(8),
    )
    body = {"model": "my-finetune-xyz", "messages": [], "max_tokens": 10}
    size = len(json.dumps(body).encode())
    assert _estimate(body, overrides=Overrides([override])) == _micro_ceiling(
        (size * 2 + 10 * 8) / Decimal(1_000_000)
    )


def test_priority_tier_and_anthropic_cache_writes_are_priced_at_their_higher_rates():
    plain = {"model": "gpt-4o-mini", "messages": [], "max_tokens": 100}
    priority = {**plain, "service_tier": "priority"}
    assert _estimate(priority) > _estimate(plain)
    message = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": []}
    cached = {
        **message,
        "system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
    }
    assert _estimate(cached, provider="anthropic", endpoint="messages") > _estimate(
        message, provider="anthropic", endpoint="messages"
    )


def test_a_body_that_is_not_json_or_lies_about_its_cap_still_gets_an_upper_estimate():
    garbage = _estimate(b"\xff\x00not json", model="gpt-4o-mini")
    assert garbage == _micro_ceiling((9 * MINI_IN + 128_000 * MINI_OUT) / 1_000_000)
    for cap in (-5, 0, "100", 10**12, True):
        body = {"model": "gpt-4o-mini", "messages": [], "max_tokens": cap}
        size = len(json.dumps(body).encode())
        assert _estimate(body) == _micro_ceiling((size * MINI_IN + 128_000 * MINI_OUT) / 1_000_000)


def test_audio_is_estimated_by_its_duration_or_characters_never_as_text_at_the_ceiling():
    # 45,000 bytes of upload: at most 60 seconds at 6 kbit/s. whisper-1: $0.006 a minute.
    assert _estimate(b"--form", endpoint="transcriptions", model="whisper-1", body_size=45_000) == (
        Decimal("0.006")
    )
    # gpt-4o-transcribe: 3,000 audio tokens in at $6/M and 600 text tokens out at $10/M.
    assert _estimate(
        b"--form", endpoint="translations", model="gpt-4o-transcribe", body_size=45_000
    ) == Decimal("0.024")
    # tts-1: $15 per million characters of input.
    speech = {"model": "tts-1", "input": "a" * 1000, "voice": "alloy"}
    assert _estimate(speech, endpoint="speech") == Decimal("0.015")
    # An audio model nothing prices: the provider's highest token prices, at the same bounds.
    ceiling_in, ceiling_out = provider_ceiling("openai")
    assert _estimate(
        b"--form", endpoint="transcriptions", model="no-such-whisper", body_size=45_000
    ) == _micro_ceiling((3000 * ceiling_in + 600 * ceiling_out) / 1_000_000)


def test_input_the_provider_fetches_or_adds_counts_as_the_whole_context_window():
    window = (128_000 * MINI_IN + 10 * MINI_OUT) / 1_000_000  # gpt-4o-mini's window
    searched = {
        "model": "gpt-4o-mini",
        "input": "news?",
        "tools": [{"type": "web_search"}],
        "max_output_tokens": 10,
    }
    stored_prompt = {"model": "gpt-4o-mini", "prompt": {"id": "pmpt_1"}, "max_output_tokens": 10}
    for body in (searched, stored_prompt):
        assert _estimate(body, endpoint="responses") >= _micro_ceiling(window)
    # Anthropic's server tools carry a date after their name.
    tool = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "messages": [],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    }
    plain = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}
    assert _estimate(tool, provider="anthropic", endpoint="messages") > 100 * _estimate(
        plain, provider="anthropic", endpoint="messages"
    )
    # The same words inside a message's text (their quotes escaped) are only text.
    text = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": 'Explain {"url": "x", "file_id": "y"}'}],
        "max_tokens": 10,
    }
    size = len(json.dumps(text).encode())
    assert _estimate(text) == _micro_ceiling((size * MINI_IN + 10 * MINI_OUT) / 1_000_000)


def test_the_body_the_adapter_parsed_is_read_not_parsed_again():
    body = {"model": "gpt-4o-mini", "messages": [], "max_tokens": 100}
    raw = json.dumps(body).encode()

    def estimate(document):
        return estimate_cost(
            provider="openai",
            endpoint="chat",
            model="gpt-4o-mini",
            body=raw,
            body_size=len(raw),
            overrides=Overrides(),
            now=NOW,
            document=document,
        )

    assert estimate(body) == estimate(None)  # the same reading of the same body
    assert estimate({**body, "max_tokens": 1000}) > estimate(None)  # the document is what counts
