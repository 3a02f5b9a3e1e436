"""What the proxy hands to metering, and the limits both sides hold to. No Django import: the
proxy imports this module as it imports the sink.

Every string that reaches storage comes from outside (request headers, provider responses, the
ingest API) and is made safe once, where it enters, with ``clean_text``: valid UTF-8 (a lone
surrogate or an undecodable byte becomes U+FFFD), no NUL (PostgreSQL refuses it in text and
JSON), cut to its limit. A hostile string is then stored cleaned and can never make its own
record, or a record beside it, fail to encode or to store.
"""

import re
from datetime import datetime
from typing import Any, TypedDict

# The endpoint names a usage event records (DESIGN.md, "Usage event").
ENDPOINTS = (
    "chat",
    "responses",
    "embeddings",
    "completions",
    "messages",
    "count_tokens",
    "generate",
    "embed",
    "realtime",
    "transcriptions",
    "translations",
    "speech",
    "other",
)
# Endpoints the provider bills nothing for (``other``: models lists, files, batch management and
# whatever else Costr does not meter). A record of one of these without usage is priced
# ``no_usage`` (cost 0); a billable one that succeeded without readable usage ``usage_unknown``.
NON_BILLABLE_ENDPOINTS = ("count_tokens", "other")

# The token counts a usage record carries (DESIGN.md, "Usage event"): input includes cache
# reads and writes, output includes reasoning; null when the provider reported none.
TOKEN_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
)

# Usage beyond TOKEN_FIELDS that prices a request, under genai-prices' names: the audio share of
# the token counts (text is the rest), and the units of duration- and character-priced models
# (whisper-1, tts-1). What ``UsageRecord.usage_details`` may hold; any other key is dropped.
USAGE_DETAIL_KEYS = (
    "input_audio_tokens",
    "cache_audio_read_tokens",
    "output_audio_tokens",
    "audio_seconds",
    "input_characters",
)
# The service tier of a batch item (OpenAI /v1/batches, Anthropic message batches): priced at
# the catalogue's batch rate.
BATCH_TIER = "batch"

# The longest provider batch id Costr tracks (OpenAI ``batch_…`` and Anthropic ``msgbatch_…``
# ids are a few dozen characters); a longer one is not a batch id and is not followed.
MAX_BATCH_ID_LENGTH = 128


class BatchCreated(TypedDict):
    """What the proxy hands over, in the record of the request that created a batch, for Costr
    to follow the batch and meter its items (``apps.usage.batch_polling``): the provider's batch
    id and the vault id (``ProviderKey.secret_id``, not the key) of the provider key the batch
    was created with, so it is polled with the same provider account."""

    id: str
    key_secret_id: str | None


# How a forwarded request ended (DESIGN.md, "Usage event"). ``client_disconnected`` with a
# successful status is no error: the provider served the request and bills it.
OUTCOMES = ("ok", "upstream_error", "client_disconnected", "upstream_disconnected", "costr_error")
# Outcomes that make a request an error whatever its status (the rollups' ``errors``).
ERROR_OUTCOMES = ("upstream_error", "upstream_disconnected", "costr_error")


class UsageRecord(TypedDict, total=False):
    """One forwarded request's usage, as the proxy hands it to ``sink.emit`` and the ingest API
    to the writer. Keys are the ``UsageEvent`` fields' names; no ``cost_usd``: the writer prices.
    ``total=False``: a record from an older spool file may leave a field out, and the writer
    then stores the model's default."""

    request_id: str
    organization_id: int
    token_id: int | None
    timestamp: str | datetime  # ISO 8601 on the wire; a naive one is UTC
    provider: str
    endpoint: str  # one of ENDPOINTS
    model: str  # as the response reports it, else as requested
    requested_model: str
    customer: str | None
    properties: dict[str, str]
    status: int
    stream: bool
    outcome: str  # one of OUTCOMES
    input_tokens: int | None  # TOKEN_FIELDS: null when the provider reported none
    cached_input_tokens: int | None
    cache_write_tokens: int | None
    cache_write_1h_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    service_tier: str  # as the provider reports it; BATCH_TIER for a batch item
    usage_details: dict[str, int | float] | None  # USAGE_DETAIL_KEYS
    # False when the provider bills nothing for this request whatever its endpoint (a realtime
    # session that made no response); absent: NON_BILLABLE_ENDPOINTS and the status decide.
    billable: bool
    # The request id of an earlier event of the same organization whose customer and properties
    # this record takes when it names none: a background response's usage, which appears in a
    # later retrieve, goes to the customer of the request that created it. An id that names
    # no stored event of the organization (nor a record of the same batch) changes nothing.
    attribution_from: str
    raw_usage: dict[str, Any] | None
    latency_ms: int
    ttfb_ms: int | None
    overhead_ms: float | None  # None for what the ingest API reports
    source: str  # SOURCE_PROXY when absent
    # Only in the record of a successful batch creation (POST /v1/batches, /v1/messages/batches).
    batch: BatchCreated


# Where a usage event came from: the proxy, or the ingest API (its records name their own
# source, ``ingest`` when they name none; the client SDKs send ``sdk_fallback`` for calls made
# directly while Costr was down).
SOURCE_PROXY = "proxy"
SOURCE_INGEST = "ingest"
MAX_SOURCE_LENGTH = 32

MAX_CUSTOMER_LENGTH = 255
MAX_PROPERTY_NAME_LENGTH = 64
MAX_PROPERTY_VALUE_LENGTH = 255
MAX_PROPERTIES = 20
MAX_MODEL_LENGTH = 255

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str | bytes, limit: int) -> str:
    """``value`` as valid UTF-8 text without NUL, at most ``limit`` characters."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = value
        if not text.isascii():
            # A surrogate code point (a JSON "\ud800" escape, surrogateescape) has no UTF-8.
            text = _SURROGATE.sub(REPLACEMENT, text)
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    return text[:limit]
