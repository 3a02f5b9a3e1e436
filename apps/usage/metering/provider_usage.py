"""How a provider's ``usage`` object becomes the token counts of a usage record: one definition
for the proxy's adapters, which read it from the responses passing through, and for the batch
poller (``apps.usage.batch_polling``), which reads it from the lines of a batch's results file.
The same body must be metered the same way whichever of the two reads it.

No Django import, like ``contract``: the proxy imports this module, and it may import nothing
of the proxy (import-linter holds both).

Usage rules (PROVIDERS.md): OpenAI ``prompt_tokens`` includes ``prompt_tokens_details.
cached_tokens`` and ``completion_tokens`` includes ``completion_tokens_details.
reasoning_tokens``; the Responses API says ``input_tokens``/``output_tokens`` with ``*_details``
alike. Anthropic ``input_tokens`` EXCLUDES the cache, so the total input is ``input_tokens +
cache_creation_input_tokens + cache_read_input_tokens``; the 5m/1h split of cache writes is in
``cache_creation``.
"""

from dataclasses import dataclass
from typing import Any

from apps.usage.metering.contract import TOKEN_FIELDS


@dataclass(slots=True)
class Usage:
    """Token usage normalised across providers, as the usage event records it.

    ``input_tokens`` is the TOTAL input, cache reads and writes included; ``output_tokens``
    includes reasoning. A token field is None when the provider reported nothing for it: every
    field when there was no usage object at all, and the fields a provider or endpoint has no
    notion of (OpenAI and Gemini have no 1-hour cache writes, Gemini reports no cache writes,
    embeddings have no output). When a usage object was reported, a detail count it omits
    (cached, cache writes, reasoning) is 0, because providers omit zero details; the exception is
    Anthropic reasoning, which older responses never break out of ``output_tokens``.

    ``model`` is the model the response reports; ``service_tier`` is ``flex`` or ``priority``
    when the response reports one of those, else None (standard pricing); ``raw`` is the usage
    object as the provider sent it (for an Anthropic stream, ``message_start``'s usage updated
    by the last ``message_delta``), kept so that events can be re-priced later.
    """

    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    model: str | None = None
    service_tier: str | None = None
    raw: dict[str, Any] | None = None


def token_counts(usage: Usage | None) -> dict[str, int | None]:
    """A usage record's token counts (``contract.TOKEN_FIELDS``) from ``usage``, all None
    without one: for the proxy's records and the batch poller's alike."""
    if usage is None:
        return dict.fromkeys(TOKEN_FIELDS)
    return {
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def count(mapping: Any, key: str) -> int | None:
    """A token count from a usage mapping, or None when absent, null or not an integer."""
    if not isinstance(mapping, dict):
        return None
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def normalise_service_tier(value: Any) -> str | None:
    """The tiers that change the price (``flex``, ``priority``); anything else is standard."""
    return value if value in ("flex", "priority") else None


# ---------------------------------------------------------------------------------------------
# OpenAI


def usage_from_openai_usage(
    raw: Any, *, model: Any = None, service_tier: Any = None
) -> Usage | None:
    """Normalise an OpenAI ``usage`` object, in Chat Completions or Responses API naming.

    Embeddings report only ``prompt_tokens``, so their output fields stay None.
    """
    model = text_or_none(model)
    tier = normalise_service_tier(service_tier)
    if not isinstance(raw, dict):
        return Usage(model=model, service_tier=tier) if model else None
    if "input_tokens" in raw or "output_tokens" in raw:
        input_tokens, input_details = count(raw, "input_tokens"), raw.get("input_tokens_details")
        output_tokens = count(raw, "output_tokens")
        output_details = raw.get("output_tokens_details")
    else:
        input_tokens, input_details = count(raw, "prompt_tokens"), raw.get("prompt_tokens_details")
        output_tokens = count(raw, "completion_tokens")
        output_details = raw.get("completion_tokens_details")
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=_detail(input_tokens, input_details, "cached_tokens"),
        cache_write_tokens=_detail(input_tokens, input_details, "cache_write_tokens"),
        output_tokens=output_tokens,
        reasoning_tokens=_detail(output_tokens, output_details, "reasoning_tokens"),
        model=model,
        service_tier=tier,
        raw=raw,
    )


def _detail(parent: int | None, details: Any, key: str) -> int | None:
    """A breakdown count: 0 when omitted under a reported parent, None without a parent."""
    if parent is None:
        return None
    value = count(details, key)
    return 0 if value is None else value


def usage_from_openai_body(document: Any) -> Usage | None:
    """Usage of a whole response body (chat completion, response, embedding list)."""
    if not isinstance(document, dict):
        return None
    return usage_from_openai_usage(
        document.get("usage"),
        model=document.get("model"),
        service_tier=document.get("service_tier"),
    )


# ---------------------------------------------------------------------------------------------
# Anthropic


def usage_from_anthropic_usage(raw: Any, *, model: Any = None) -> Usage | None:
    """Normalise an Anthropic ``usage`` object (a body's, or a stream's merged one)."""
    model = text_or_none(model)
    if not isinstance(raw, dict):
        return Usage(model=model) if model else None
    uncached = count(raw, "input_tokens")
    cache_writes = count(raw, "cache_creation_input_tokens")
    cache_reads = count(raw, "cache_read_input_tokens")
    input_tokens = cached = writes = writes_1h = None
    if uncached is not None or cache_writes is not None or cache_reads is not None:
        cached, writes = cache_reads or 0, cache_writes or 0
        input_tokens = (uncached or 0) + writes + cached
        writes_1h = count(raw.get("cache_creation"), "ephemeral_1h_input_tokens") or 0
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=writes,
        cache_write_1h_tokens=writes_1h,
        output_tokens=count(raw, "output_tokens"),
        reasoning_tokens=count(raw.get("output_tokens_details"), "thinking_tokens"),
        model=model,
        service_tier=normalise_service_tier(raw.get("service_tier")),
        raw=raw,
    )


def usage_from_anthropic_body(document: Any) -> Usage | None:
    """Usage of a whole Message body."""
    if not isinstance(document, dict):
        return None
    return usage_from_anthropic_usage(document.get("usage"), model=document.get("model"))
