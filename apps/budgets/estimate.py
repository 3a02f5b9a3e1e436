"""The upper estimate of a request's cost that the proxy reserves against its budgets.

- Input: the request body's size in bytes, as tokens. A token of a byte-level tokenizer covers
  at least one byte of text, and the body holds the text plus its JSON, so this never counts
  fewer tokens than the provider will (images and audio sent as base64 count far more). A body
  too large to read whole counts by its declared length, or by the largest body Costr takes.
  A body that brings in input it does not hold (``CONTENT_ELSEWHERE``: an earlier response, a
  stored prompt, a file or image by id or URL, the provider's own search or code tools) counts
  its input as the model's whole context window.
- Output: the request's own cap (``max_tokens``, ``max_completion_tokens``,
  ``max_output_tokens``, Gemini's ``generationConfig.maxOutputTokens``), else the model's context
  window (the catalog has no separate output limit), else ``DEFAULT_OUTPUT_TOKENS``; times the
  answers it asks for (``n``, ``best_of``, ``candidateCount``); none for embeddings. Setting a
  cap on requests makes their reservations smaller.
- Audio, where the body is no text: a transcription or translation counts its upload as audio
  of at most ``body bytes / MIN_AUDIO_BYTES_PER_SECOND`` seconds (no speech codec goes below
  6 kbit/s), priced per second (whisper-1) or as ``AUDIO_TOKENS_PER_SECOND`` audio tokens in and
  ``TRANSCRIPT_TOKENS_PER_SECOND`` tokens out (the gpt-4o transcribers), whichever costs more;
  speech counts its input's characters (tts-1) or ``SPEECH_TOKENS_PER_CHARACTER`` audio tokens
  out per character (gpt-4o-mini-tts). Each rate is several times what the providers bill.
- Price: the organization's override for the model, else the catalog's price at the tier the
  body asks for (``priority`` costs more), with the input priced as one-hour cache writes when an
  Anthropic body marks ``cache_control``. A model neither knows is reserved at the most
  expensive input and output prices the catalog lists for its provider: never at zero.
"""

import json
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache

from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from apps.usage.pricing import PER_MILLION, Overrides, catalog_context_window, price_tokens

DEFAULT_OUTPUT_TOKENS = 200_000
# The input of a model whose context window the catalog does not know.
DEFAULT_WINDOW = 200_000
# JSON keys and values (quoted as in a body, so the same word inside a string, whose quotes are
# escaped, does not match) that bring in input the body does not hold: an earlier response or
# conversation, cached content, a file or an image named by id or URL, the provider's own tools
# (search, file search, code, fetch, computer use, MCP; Anthropic's tool types carry a date
# after the name, hence the prefixes). Such a request counts its input as the model's whole
# context window.
_ELSEWHERE_KEYS = (
    "previous_response_id",
    "conversation",
    "cachedContent",
    "cached_content",
    "file_id",
    "file_url",
    "fileUri",
    "file_uri",
    "fileData",
    "file_data",
    "image_url",
    "url",
    "file_search",
    "code_interpreter",
    "mcp",
    "mcp_servers",
    "googleSearch",
    "google_search",
    "urlContext",
    "url_context",
    "codeExecution",
)
_ELSEWHERE_PREFIXES = ("web_search", "web_fetch", "code_execution", "computer_use")
CONTENT_ELSEWHERE = (
    *(f'"{key}"'.encode() for key in _ELSEWHERE_KEYS),
    *(f'"{prefix}'.encode() for prefix in _ELSEWHERE_PREFIXES),
)
# Request fields that cap the answer's tokens, by provider.
_OUTPUT_CAPS = ("max_completion_tokens", "max_output_tokens", "max_tokens")
NO_OUTPUT_ENDPOINTS = frozenset({"embeddings"})
MICRO = Decimal("0.000001")
MIN_AUDIO_BYTES_PER_SECOND = 750  # 6 kbit/s
AUDIO_TOKENS_PER_SECOND = 50  # OpenAI bills audio input at about 10 tokens a second
TRANSCRIPT_TOKENS_PER_SECOND = 10  # speech runs at two to four words a second
SPEECH_TOKENS_PER_CHARACTER = 10  # about 3 audio tokens a character are spoken
TRANSCRIPTION_ENDPOINTS = frozenset({"transcriptions", "translations"})


def estimate_cost(
    *,
    provider: str,
    endpoint: str,
    model: str,
    body: bytes | None,
    body_size: int,
    overrides: Overrides,
    now: datetime,
    document: dict | None = None,
) -> Decimal:
    """An amount in USD that the request's cost will not exceed, rounded up to the micro-dollar.
    ``document`` is the body as the provider adapter already parsed it, if it did (else the
    body is parsed here)."""
    fields = document if document is not None else _fields(body)
    if endpoint in TRANSCRIPTION_ENDPOINTS or endpoint == "speech":
        return _rounded(_audio_cost(provider, endpoint, model, fields, body_size, overrides, now))
    input_tokens = max(body_size, 1)
    if body and (
        any(marker in body for marker in CONTENT_ELSEWHERE)
        or isinstance(fields.get("prompt"), dict)  # a stored prompt (Responses), not its text
    ):
        window = (catalog_context_window(provider, model) if model else None) or DEFAULT_WINDOW
        input_tokens = max(input_tokens, window)
    output_tokens = (
        0
        if endpoint in NO_OUTPUT_ENDPOINTS
        else _output_cap(provider, model, fields) * _choices(fields)
    )
    tier = "priority" if fields.get("service_tier") == "priority" else ""
    cache_writes = (
        input_tokens if provider == "anthropic" and body and b"cache_control" in body else 0
    )
    cost = None
    if model:
        cost, _ = price_tokens(
            provider,
            model,
            input_tokens,
            0,
            cache_writes,
            cache_writes,
            output_tokens,
            now,
            tier,
            overrides,
        )
    if cost is None:
        ceiling_in, ceiling_out = provider_ceiling(provider)
        cost = (input_tokens * ceiling_in + output_tokens * ceiling_out) / PER_MILLION
    return _rounded(cost)


def _rounded(cost: Decimal) -> Decimal:
    return max(cost, MICRO).quantize(MICRO, rounding=ROUND_CEILING)


def _audio_cost(provider, endpoint, model, fields, body_size, overrides, now) -> Decimal:
    """The most that audio in (transcriptions, translations) or out (speech) can cost, by the
    generous rates above: the higher of its per-second (or per-character) and per-token
    prices; the provider's highest token prices when neither is known."""
    if endpoint in TRANSCRIPTION_ENDPOINTS:
        seconds = -(-max(body_size, 1) // MIN_AUDIO_BYTES_PER_SECOND)
        audio_tokens = seconds * AUDIO_TOKENS_PER_SECOND
        tokens_in, tokens_out = audio_tokens, seconds * TRANSCRIPT_TOKENS_PER_SECOND
        by_unit = {"audio_seconds": seconds}
        by_token = {"input_audio_tokens": audio_tokens}
    else:
        text = fields.get("input")
        characters = len(text) if isinstance(text, str) else max(body_size, 1)
        tokens_in, tokens_out = max(body_size, 1), characters * SPEECH_TOKENS_PER_CHARACTER
        by_unit = {"input_characters": characters}
        by_token = {"output_audio_tokens": tokens_out}
    costs = []
    if model:
        for counts, details in (((None, None), by_unit), ((tokens_in, tokens_out), by_token)):
            cost, _ = price_tokens(
                provider, model, counts[0], 0, 0, 0, counts[1], now, "", overrides, details
            )
            if cost is not None:
                costs.append(cost)
    if costs:
        return max(costs)
    ceiling_in, ceiling_out = provider_ceiling(provider)
    return (tokens_in * ceiling_in + tokens_out * ceiling_out) / PER_MILLION


def _fields(body: bytes | None) -> dict:
    if not body or body[:1] not in (b"{", b" ", b"\n", b"\t", b"\r"):
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _output_cap(provider: str, model: str, fields: dict) -> int:
    for name in _OUTPUT_CAPS:
        value = fields.get(name)
        if _count(value):
            return value
    config = fields.get("generationConfig") or fields.get("generation_config")
    if isinstance(config, dict):
        value = config.get("maxOutputTokens", config.get("max_output_tokens"))
        if _count(value):
            return value
    window = catalog_context_window(provider, model) if model else None
    return window or DEFAULT_OUTPUT_TOKENS


def _choices(fields: dict) -> int:
    """How many answers the request asks for, each up to the output cap: ``n`` (chat),
    ``best_of`` (completions, billed for every candidate), Gemini's ``candidateCount``."""
    config = fields.get("generationConfig") or fields.get("generation_config")
    counts = [fields.get("n"), fields.get("best_of")]
    if isinstance(config, dict):
        counts += [config.get("candidateCount"), config.get("candidate_count")]
    return max([1, *(value for value in counts if type(value) is int and 0 < value <= 128)])


def _count(value) -> bool:
    return type(value) is int and 0 < value <= 10_000_000


@lru_cache(maxsize=8)
def provider_ceiling(provider: str) -> tuple[Decimal, Decimal]:
    """The highest input price (cache writes included) and output price per million tokens that
    the catalog lists for any model of ``provider``, at any tier or date; for a provider it does
    not know, the highest of all."""
    snapshot = get_snapshot()
    providers = [p for p in snapshot.providers if p.id == provider] or snapshot.providers
    ceiling_in = ceiling_out = Decimal(0)
    for found in providers:
        for model in found.models:
            for price in _model_prices(model):
                ceiling_in = max(
                    ceiling_in,
                    _highest(price.input_mtok),
                    _highest(getattr(price, "cache_write_mtok", None)),
                    _highest(getattr(price, "cache_write_1h_mtok", None)),
                )
                ceiling_out = max(ceiling_out, _highest(price.output_mtok))
    return ceiling_in, ceiling_out


def _model_prices(model) -> list[ModelPrice]:
    prices = (
        [model.prices]
        if isinstance(model.prices, ModelPrice)
        else [conditional.prices for conditional in model.prices]
    )
    prices += [variant.prices for variant in model.price_variants or ()]
    return [price for price in prices if isinstance(price, ModelPrice)]


def _highest(value) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, TieredPrices):
        return max([value.base, *(tier.price for tier in value.tiers)])
    return Decimal(value)
