"""Google Gemini API (generativelanguage.googleapis.com).

Usage rules (PROVIDERS.md): ``promptTokenCount`` INCLUDES ``cachedContentTokenCount``; billed
output is ``candidatesTokenCount + thoughtsTokenCount``; zero counts may be omitted. Streamed
chunks carry RUNNING TOTALS, so the last ``usageMetadata`` is the usage -- never a sum -- and a
stream is only known to be complete when it ends. ``toolUsePromptTokenCount`` (tokens of tool
results such as search grounding fed back to the model) is separate from ``promptTokenCount``
and billed as input: it is added to ``input_tokens``, as genai-prices' Google extractor does.
"""

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from django.views.decorators.debug import sensitive_variables

from apps.proxy.providers.base import (
    Adapter,
    Headers,
    JsonBodyUsageReader,
    RequestInfo,
    SSEUsageReader,
    UsageReader,
    header_value,
    loads_or_none,
    query_param,
    query_with_param_replaced,
    with_headers_set,
)
from apps.proxy.providers.recovery import recover_fields
from apps.proxy.sse import Event
from apps.usage.metering.provider_usage import Usage, count, text_or_none
from costr.net.decoding import ContentDecoder

# {version}/models/{model}:{method}; the version segment (v1, v1beta, v1alpha) does not matter.
_MODEL_METHOD = re.compile(r"^v1(?:alpha|beta)?/(models|tunedModels)/([^/:]+):(\w+)$")
_METHOD_ENDPOINTS = {
    "generateContent": "generate",
    "streamGenerateContent": "generate",
    "embedContent": "embed",
    "batchEmbedContents": "embed",
    "countTokens": "count_tokens",
}
_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_STRING_KEYS = ("modelVersion",)


def usage_from_gemini_usage(raw: Any, *, model: Any = None) -> Usage | None:
    """Normalise a ``usageMetadata`` object (omitted counts are zeros)."""
    model = text_or_none(model)
    if not isinstance(raw, dict):
        return Usage(model=model) if model else None
    thoughts = count(raw, "thoughtsTokenCount") or 0
    return Usage(
        input_tokens=(count(raw, "promptTokenCount") or 0)
        + (count(raw, "toolUsePromptTokenCount") or 0),
        cached_input_tokens=count(raw, "cachedContentTokenCount") or 0,
        output_tokens=(count(raw, "candidatesTokenCount") or 0) + thoughts,
        reasoning_tokens=thoughts,
        model=model,
        raw=raw,
    )


def usage_from_gemini_body(document: Any) -> Usage | None:
    """Usage of a whole response body.

    ``streamGenerateContent`` without ``alt=sse`` answers a JSON array of chunks: its running
    totals make the last usage the one that counts.
    """
    chunks = document if isinstance(document, list) else [document]
    usage = model = None
    for chunk in chunks:
        if isinstance(chunk, dict):
            usage = chunk.get("usageMetadata", usage)
            model = chunk.get("modelVersion", model)
    return usage_from_gemini_usage(usage, model=model)


class GeminiStreamUsageReader(SSEUsageReader):
    """The last ``usageMetadata`` of the stream; never complete before the stream ends.

    A chunk holding a generated image can outgrow the event limit; its usage is then recovered
    from the chunk's tail, where ``usageMetadata`` follows the candidates.
    """

    def __init__(self, decoder: ContentDecoder):
        super().__init__(decoder)
        self._model: str | None = None
        self._usage: dict[str, Any] | None = None

    def _on_event(self, event: Event) -> None:
        if event.truncated:
            chunk = recover_fields(b"", event.data, "usageMetadata", _STRING_KEYS)
        else:
            chunk = loads_or_none(event.data)
        if not isinstance(chunk, dict):
            return
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = usage
        self._model = text_or_none(chunk.get("modelVersion")) or self._model

    def _result(self) -> Usage | None:
        return usage_from_gemini_usage(self._usage, model=self._model)


class GoogleAdapter(Adapter):
    name = "google"
    default_upstream = "https://generativelanguage.googleapis.com"
    metered_endpoints = frozenset({"generate", "embed"})

    @sensitive_variables()
    def credential_from(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes
    ) -> str | None:
        api_key = (header_value(headers, b"x-goog-api-key") or b"").strip()
        if api_key:
            return api_key.decode("latin-1")
        return query_param(query_string, b"key") or None

    @sensitive_variables()
    def swap_credential(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes, provider_key: str
    ) -> tuple[Headers, bytes]:
        """The key goes where the client put its credential: the ``x-goog-api-key`` header, or
        the ``key=`` query parameter, replaced in place with the rest of the query kept byte
        for byte; both places when the client used both."""
        headers = list(headers)
        in_query = query_param(query_string, b"key") is not None
        if in_query:
            query_string = query_with_param_replaced(query_string, b"key", provider_key)
        if header_value(headers, b"x-goog-api-key") is not None or not in_query:
            headers = with_headers_set(headers, {b"x-goog-api-key": provider_key.encode("latin-1")})
        return headers, query_string

    def inspect_request(self, method: str, path: str, body_head: bytes | None) -> RequestInfo:
        """Model and stream flag come from the path (``models/{model}:streamGenerateContent``)."""
        match = _MODEL_METHOD.match(unquote(path.strip("/")))
        if match is None:
            return RequestInfo("other")
        collection, model, model_method = match.groups()
        if collection == "tunedModels":
            model = f"tunedModels/{model}"
        if method.upper() != "POST":
            return RequestInfo("other", model)
        endpoint = _METHOD_ENDPOINTS.get(model_method, "other")
        return RequestInfo(endpoint, model, model_method == "streamGenerateContent")

    def error_body(self, status: int, code: str, message: str) -> bytes:
        """Google's error shape; Costr's code travels as an ``ErrorInfo`` reason, as Google's
        own APIs carry theirs."""
        error = {
            "code": status,
            "message": message,
            "status": _STATUSES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"),
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": code,
                    "domain": "costr",
                }
            ],
        }
        return json.dumps({"error": error}).encode()

    def _stream_reader(self, info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
        return GeminiStreamUsageReader(decoder)

    def _body_reader(self, info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
        return JsonBodyUsageReader(decoder, usage_from_gemini_body, "usageMetadata", _STRING_KEYS)


adapter = GoogleAdapter()
