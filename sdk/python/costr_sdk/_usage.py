"""Usage read in passing from a direct call's response: counts and the model, never content.

Each provider's rules (the same as Costr's proxy follows):
- OpenAI: ``prompt_tokens`` / ``input_tokens`` include cached tokens, output includes reasoning;
  a chat stream carries usage only in its last chunk (``stream_options.include_usage``); the
  Responses API's in ``response.completed`` / ``.incomplete`` / ``.failed``.
- Anthropic: ``input_tokens`` excludes cache reads and writes (added here); in a stream
  ``message_start``'s usage is overwritten field by field by each ``message_delta``.
- Gemini: ``promptTokenCount`` includes cached tokens (``toolUsePromptTokenCount`` is added),
  output is candidates + thoughts; every chunk carries running totals: the last one counts.

Bodies are read from a copy of the bytes as they pass: a JSON body is kept until it ends (up to
``MAX_JSON_BYTES``), a stream only one line at a time, and only lines that can carry usage are
parsed. A body past the bound, an unreadable encoding or a cut stream gives unknown counts.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

TOKEN_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
)
# The content codings read here; a direct call asks the provider for no other.
READABLE_ENCODINGS = ("gzip", "deflate", "identity")
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024
MAX_MODEL_LENGTH = 255

_GEMINI_METHOD = re.compile(r"/models/([^/:]+):([A-Za-z]+)$")
_OPENAI_ENDPOINTS = (
    ("/chat/completions", "chat"),
    ("/responses", "responses"),
    ("/embeddings", "embeddings"),
    ("/completions", "completions"),
    ("/audio/transcriptions", "transcriptions"),
    ("/audio/translations", "translations"),
    ("/audio/speech", "speech"),
)
_GEMINI_ENDPOINTS = {
    "generateContent": "generate",
    "streamGenerateContent": "generate",
    "embedContent": "embed",
    "batchEmbedContents": "embed",
    "countTokens": "count_tokens",
}


def endpoint_and_model(provider: str, method: str, path: str, body: bytes) -> tuple[str, str]:
    """The endpoint name (as Costr's usage events name it) and the requested model."""
    model = ""
    if provider == "google":
        match = _GEMINI_METHOD.search(path)
        if match and method == "POST":
            return _GEMINI_ENDPOINTS.get(match.group(2), "other"), match.group(1)
        return "other", ""
    if method == "POST" and body[:1] == b"{":
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("model"), str):
            model = document["model"]
    if provider == "anthropic":
        if method == "POST" and path.endswith("/v1/messages"):
            return "messages", model
        if method == "POST" and path.endswith("/v1/messages/count_tokens"):
            return "count_tokens", model
        return "other", model
    if method == "POST":
        for suffix, name in _OPENAI_ENDPOINTS:
            if path.endswith(suffix):
                return name, model
    return "other", model


def _count(mapping: Any, key: str) -> int | None:
    if not isinstance(mapping, dict):
        return None
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _part(parent: int | None, mapping: Any, key: str) -> int | None:
    if parent is None:
        return None
    return _count(mapping, key) or 0


def openai_counts(raw: Any) -> dict[str, int | None] | None:
    if not isinstance(raw, dict):
        return None
    if "input_tokens" in raw or "output_tokens" in raw:
        names = ("input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details")
    else:
        names = (
            "prompt_tokens",
            "prompt_tokens_details",
            "completion_tokens",
            "completion_tokens_details",
        )
    total_in, in_details = _count(raw, names[0]), raw.get(names[1])
    total_out, out_details = _count(raw, names[2]), raw.get(names[3])
    return {
        "input_tokens": total_in,
        "cached_input_tokens": _part(total_in, in_details, "cached_tokens"),
        "cache_write_tokens": _part(total_in, in_details, "cache_write_tokens"),
        "cache_write_1h_tokens": None,
        "output_tokens": total_out,
        "reasoning_tokens": _part(total_out, out_details, "reasoning_tokens"),
    }


def anthropic_counts(raw: Any) -> dict[str, int | None] | None:
    if not isinstance(raw, dict):
        return None
    uncached = _count(raw, "input_tokens")
    writes = _count(raw, "cache_creation_input_tokens")
    reads = _count(raw, "cache_read_input_tokens")
    counts: dict[str, int | None] = dict.fromkeys(TOKEN_FIELDS)
    if uncached is not None or writes is not None or reads is not None:
        counts["input_tokens"] = (uncached or 0) + (writes or 0) + (reads or 0)
        counts["cached_input_tokens"] = reads or 0
        counts["cache_write_tokens"] = writes or 0
        counts["cache_write_1h_tokens"] = (
            _count(raw.get("cache_creation"), "ephemeral_1h_input_tokens") or 0
        )
    counts["output_tokens"] = _count(raw, "output_tokens")
    counts["reasoning_tokens"] = _count(raw.get("output_tokens_details"), "thinking_tokens")
    return counts


def gemini_counts(raw: Any) -> dict[str, int | None] | None:
    if not isinstance(raw, dict):
        return None
    thoughts = _count(raw, "thoughtsTokenCount") or 0
    return {
        "input_tokens": (_count(raw, "promptTokenCount") or 0)
        + (_count(raw, "toolUsePromptTokenCount") or 0),
        "cached_input_tokens": _count(raw, "cachedContentTokenCount") or 0,
        "cache_write_tokens": None,
        "cache_write_1h_tokens": None,
        "output_tokens": (_count(raw, "candidatesTokenCount") or 0) + thoughts,
        "reasoning_tokens": thoughts,
    }


class _Decoder:
    """The response's content coding undone on a copy, incrementally; None when unreadable."""

    def __init__(self, encoding: str) -> None:
        codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
        self.readable = all(c in READABLE_ENCODINGS for c in codings)
        self._stages = [self._stage(c) for c in reversed(codings) if c != "identity"]

    @staticmethod
    def _stage(coding: str) -> Any:
        if coding == "gzip":
            return zlib.decompressobj(zlib.MAX_WBITS | 16)
        return zlib.decompressobj()  # deflate: zlib-wrapped, as the RFC says

    def decode(self, data: bytes) -> bytes:
        for stage in self._stages:
            data = stage.decompress(data)
        return data


class UsageReader:
    """Fed the response bytes as they pass; ``result()`` gives (model, counts or None)."""

    def __init__(
        self, provider: str, requested_model: str, content_type: str, content_encoding: str
    ) -> None:
        self.provider = provider
        self.model = requested_model
        self.counts: dict[str, int | None] | None = None
        self.failed = False
        self._decoder = _Decoder(content_encoding)
        self.failed = not self._decoder.readable
        self._sse = "text/event-stream" in content_type.lower()
        self._buffer = bytearray()
        self._skipping_line = False
        self._anthropic_usage: dict[str, Any] = {}
        self._model_seen = False

    def feed(self, chunk: bytes) -> None:
        if self.failed or not chunk:
            return
        try:
            data = self._decoder.decode(chunk)
        except zlib.error:
            self.failed = True
            return
        if not self._sse:
            if len(self._buffer) + len(data) > MAX_JSON_BYTES:
                self.failed = True
                self._buffer = bytearray()
                return
            self._buffer += data
            return
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES:
                    self._buffer.clear()
                    self._skipping_line = True
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._skipping_line:
                self._skipping_line = False
                continue
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        if b"usage" not in line and (self._model_seen or b"model" not in line):
            return
        try:
            event = json.loads(line[5:])
        except ValueError:
            return
        if isinstance(event, dict):
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        if self.provider == "openai":
            response = event.get("response")
            if isinstance(response, dict):  # Responses API stream events
                event = response
            self._model(event.get("model"))
            counts = openai_counts(event.get("usage"))
            if counts is not None:
                self.counts = counts
        elif self.provider == "anthropic":
            message = event.get("message") if event.get("type") == "message_start" else event
            if isinstance(message, dict):
                self._model(message.get("model"))
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self._anthropic_usage.update({k: v for k, v in usage.items() if v is not None})
                    self.counts = anthropic_counts(self._anthropic_usage)
        else:
            self._model(event.get("modelVersion"))
            counts = gemini_counts(event.get("usageMetadata"))
            if counts is not None:
                self.counts = counts

    def _model(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.model = value[:MAX_MODEL_LENGTH]
            self._model_seen = True

    def result(self) -> tuple[str, dict[str, int | None] | None]:
        """The model and counts; the body's end for a JSON answer."""
        if not self._sse and not self.failed and self._buffer:
            try:
                document = json.loads(bytes(self._buffer))
            except ValueError:
                document = None
            self._buffer = bytearray()
            # streamGenerateContent without alt=sse: a JSON array of chunks, running totals.
            for item in document if isinstance(document, list) else [document]:
                if isinstance(item, dict):
                    self._event(item)
        elif self._sse and self._buffer and not self.failed:
            self._line(bytes(self._buffer).rstrip(b"\r"))
            self._buffer = bytearray()
        return self.model, None if self.failed else self.counts
