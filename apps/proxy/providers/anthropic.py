"""Anthropic: the Messages API.

Usage rules (PROVIDERS.md): ``input_tokens`` EXCLUDES the cache, so the total input is
``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``; the 5m/1h split of
cache writes is in ``cache_creation`` (``usage_from_anthropic_usage``, shared with the batch
poller in ``apps.usage.metering.provider_usage``). A stream starts with ``message_start`` (the
full starting usage) and each ``message_delta`` repeats the usage so far, cumulatively: the
last value of each field wins, never a sum, and fields a delta omits keep their
``message_start`` value.
"""

import json
from collections.abc import Iterable
from typing import Any

from django.views.decorators.debug import sensitive_variables

from apps.proxy.providers.base import (
    Adapter,
    Headers,
    JsonBodyUsageReader,
    RequestInfo,
    SSEUsageReader,
    UsageReader,
    bearer_token,
    header_value,
    loads_or_none,
    request_info_from_body,
    with_headers_set,
)
from apps.proxy.sse import Event
from apps.usage.metering.provider_usage import (
    Usage,
    text_or_none,
    usage_from_anthropic_body,
    usage_from_anthropic_usage,
)
from costr.net.decoding import ContentDecoder

_ENDPOINTS = {
    "v1/messages": "messages",
    "v1/messages/count_tokens": "count_tokens",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Events that never carry usage or the model, skipped without parsing their JSON.
_EVENTS_WITHOUT_USAGE = frozenset(
    {"ping", "content_block_start", "content_block_delta", "content_block_stop"}
)


class AnthropicStreamUsageReader(SSEUsageReader):
    """``message_start`` usage, overwritten field by field by each ``message_delta`` usage.

    A delta's null field does not erase a known value. Complete at ``message_stop``: a stream
    may carry more than one ``message_delta``, and only the last holds the final counts.
    """

    def __init__(self, decoder: ContentDecoder):
        super().__init__(decoder)
        self._model: str | None = None
        self._usage: dict[str, Any] | None = None

    def _on_event(self, event: Event) -> None:
        if event.truncated or event.event in _EVENTS_WITHOUT_USAGE:
            return
        document = loads_or_none(event.data)
        if not isinstance(document, dict):
            return
        kind = document.get("type", event.event)
        if kind == "message_start":
            message = document.get("message")
            if isinstance(message, dict):
                self._model = text_or_none(message.get("model")) or self._model
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self._usage = dict(usage)
        elif kind == "message_delta":
            usage = document.get("usage")
            if isinstance(usage, dict):
                merged = dict(self._usage or {})
                merged.update((key, value) for key, value in usage.items() if value is not None)
                self._usage = merged
        elif kind == "message_stop":
            self._complete = True

    def _result(self) -> Usage | None:
        return usage_from_anthropic_usage(self._usage, model=self._model)


class AnthropicAdapter(Adapter):
    name = "anthropic"
    default_upstream = "https://api.anthropic.com"
    # count_tokens answers {"input_tokens": N}: a count, not billed usage.
    metered_endpoints = frozenset({"messages"})

    @sensitive_variables()
    def credential_from(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes
    ) -> str | None:
        api_key = (header_value(headers, b"x-api-key") or b"").strip()
        if api_key:
            return api_key.decode("latin-1")
        return bearer_token(header_value(headers, b"authorization"))

    @sensitive_variables()
    def swap_credential(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes, provider_key: str
    ) -> tuple[Headers, bytes]:
        """The key goes where the client put its credential: ``x-api-key``, or ``Authorization:
        Bearer`` (Anthropic accepts both); both places when the client used both."""
        headers = list(headers)
        key = provider_key.encode("latin-1")
        values: dict[bytes, bytes] = {}
        if header_value(headers, b"x-api-key") is not None:
            values[b"x-api-key"] = key
        if header_value(headers, b"authorization") is not None:
            values[b"authorization"] = b"Bearer " + key
        if not values:
            values[b"x-api-key"] = key
        return with_headers_set(headers, values), query_string

    def inspect_request(self, method: str, path: str, body_head: bytes | None) -> RequestInfo:
        if method.upper() != "POST":
            return RequestInfo("other")
        return request_info_from_body(_ENDPOINTS.get(path.strip("/"), "other"), body_head)

    def error_body(self, status: int, code: str, message: str) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()

    def _stream_reader(self, info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
        return AnthropicStreamUsageReader(decoder)

    def _body_reader(self, info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
        return JsonBodyUsageReader(decoder, usage_from_anthropic_body, "usage", ("model",))


adapter = AnthropicAdapter()
