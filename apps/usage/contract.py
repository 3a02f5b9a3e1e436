"""What the proxy hands to metering, and the limits both sides hold to. No Django import: the
proxy imports this module as it imports the sink.

Every string that reaches storage comes from outside (request headers, provider responses, the
ingest API) and is made safe once, where it enters, with ``clean_text``: valid UTF-8 (a lone
surrogate or an undecodable byte becomes U+FFFD), no NUL (PostgreSQL refuses it in text and
JSON), cut to its limit. A hostile string is then stored cleaned and can never make its own
record, or a record beside it, fail to encode or to store.
"""

import re

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
    "other",
)

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
