"""A fake OpenAI, Anthropic and Gemini server for end-to-end tests, `make bench` and the demo.

The proxy is only trustworthy if it is tested against what the providers really send, so this
server speaks their wire formats closely enough that the official SDKs (openai, anthropic,
google-genai) accept it as the provider itself. All three providers share one server and are told
apart by path; any path prefix is allowed (`/openai/v1/chat/completions` works like
`/v1/chat/completions`), so one server can be the upstream of every provider.

Routes:
    openai     POST /v1/chat/completions, /v1/responses, /v1/embeddings, /v1/completions;
               GET /v1/models; audio (``openai_audio`` below): POST /v1/audio/transcriptions,
               /v1/audio/translations (multipart/form-data), /v1/audio/speech; background
               responses: POST /v1/responses with "background": true, GET
               /v1/responses/{id} (also ?stream=true), POST /v1/responses/{id}/cancel
    anthropic  POST /v1/messages, /v1/messages/count_tokens; GET /v1/models (with an
               `anthropic-version` or `x-api-key` header)
    google     POST /{v1,v1beta,v1alpha}/models/{model}:generateContent, :streamGenerateContent
               (`?alt=sse` gives SSE, without it a JSON array), :embedContent,
               :batchEmbedContents, :countTokens
Anything else answers 404 in the error shape of the provider the request looks like.

Authentication mirrors each provider: openai `Authorization: Bearer`; anthropic `x-api-key` or
`Authorization: Bearer`; google `x-goog-api-key` or `?key=`. Every credential present must equal
the configured key (a key of None accepts anything), so a proxy that leaks its own token next to
the real key is caught. Failures answer as the provider does: openai and anthropic 401; google 400
INVALID_ARGUMENT "API key not valid" for a wrong key and 403 PERMISSION_DENIED for a missing one.

Test-control headers (they pass through the proxy, which forwards all but `x-costr-*`):
    x-fake-usage: <json>           raw usage object to report, in the provider's own field names
    x-fake-model: <name>           model to report instead of the requested one
    x-fake-status: <code>          answer with this status (>= 400) in the provider's error
                                   shape, after routing and auth (429 carries `retry-after: 1`)
    x-fake-chunks: <n>             number of text chunks (default 5)
    x-fake-delay-ms: <ms>          sleep between body chunks
    x-fake-first-byte-delay-ms     sleep before the response headers
    x-fake-stall-ms: <ms>          sleep after the headers, before the body
    x-fake-encoding: gzip|deflate|br|zstd   compress the body (incrementally for streams) when
                                   the request's accept-encoding allows it; a list
                                   (`gzip, zstd`) applies each coding in turn, as
                                   Content-Encoding then says, when all are allowed
    x-fake-cut-after: <n>          send n body chunks, then drop the connection without a clean end
    x-fake-split: 1                send each chunk in two network writes, cut in the middle
    x-fake-echo: 1                 answer 200 JSON with the request as received (method, path,
                                   query, headers, base64 body); skips routing and auth
    x-fake-background-polls: <n>   on a background create: how many retrieves answer before
                                   the response is completed (default 2: queued, in_progress)

A "chunk" is one SSE event (or one JSON array element for Gemini without alt=sse). For
x-fake-cut-after a non-streamed body counts as two chunks, its halves, so 1 cuts it in the middle.

Responses are deterministic: ids and timestamps are fixed, text is `fake_text(chunks)`, and the
bytes for a given (route, model, usage, options) are built once and cached, which keeps the
handler cheap for the benchmark.

Run as a process (for the benchmark): `python -m tests.fakes.provider --port 9999 [--workers N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from email import policy as email_policy
from email.parser import BytesParser
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import brotli
import uvicorn
import zstandard

from tests.asgi_server import ThreadedServer

DEFAULT_OPENAI_KEY = "sk-test-openai"
DEFAULT_ANTHROPIC_KEY = "sk-ant-test"
DEFAULT_GOOGLE_KEY = "AIzaTestFakeGoogleKey000000000000000000"
DEFAULT_CHUNKS = 5

WORDS = ("Hello", " from", " the", " fake", " provider", ".")

# Default usage: every kind of token the proxy must meter is non-zero, so a proxy that drops
# cached or reasoning tokens shows up in the numbers.
OPENAI_CHAT_USAGE: dict[str, Any] = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 120,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
OPENAI_RESPONSES_USAGE: dict[str, Any] = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 0},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 120},
    "total_tokens": 1500,
}
OPENAI_EMBEDDINGS_USAGE: dict[str, Any] = {"prompt_tokens": 8, "total_tokens": 8}
ANTHROPIC_USAGE: dict[str, Any] = {
    "input_tokens": 50,
    "cache_creation_input_tokens": 200,
    "cache_read_input_tokens": 1000,
    "cache_creation": {"ephemeral_5m_input_tokens": 150, "ephemeral_1h_input_tokens": 50},
    "output_tokens": 300,
    "service_tier": "standard",
}
ANTHROPIC_COUNT_TOKENS: dict[str, Any] = {"input_tokens": 1250}
GEMINI_USAGE: dict[str, Any] = {
    "promptTokenCount": 1200,
    "candidatesTokenCount": 180,
    "totalTokenCount": 1500,
    "cachedContentTokenCount": 1000,
    "thoughtsTokenCount": 120,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 1000}],
}
GEMINI_COUNT_TOKENS: dict[str, Any] = {
    "totalTokens": 1200,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}],
}

EMBEDDING_DIMS = 8
CREATED = 1767225600  # 2026-01-01T00:00:00Z, fixed so that bodies are byte-for-byte repeatable.
CHAT_ID = "chatcmpl-FakeProvider000000000001"
COMPLETION_ID = "cmpl-FakeProvider000000000001"
RESPONSE_ID = "resp_fakeprovider000000000000000001"
RESPONSE_MSG_ID = "msg_fakeprovider000000000000000001"
ANTHROPIC_MSG_ID = "msg_01FakeProvider0000000001"
GEMINI_RESPONSE_ID = "FakeProviderResponse01"
FINGERPRINT = "fp_fake0001"

OPENAI_MODELS = ("gpt-4o-mini", "gpt-4.1", "gpt-5", "o4-mini", "text-embedding-3-small")
ANTHROPIC_MODELS = ("claude-opus-4-6", "claude-haiku-4-5-20251001")

SSE_JSON = b"text/event-stream; charset=utf-8"
SSE_GEMINI = b"text/event-stream"
JSON = b"application/json"
JSON_GOOGLE = b"application/json; charset=UTF-8"

_GEMINI_PATH = re.compile(r"/(v1|v1beta|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
# (path suffix, method) -> (provider, kind). Suffix matching allows any prefix before /v1/.
_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("/v1/chat/completions", "POST", "openai", "chat"),
    ("/v1/responses", "POST", "openai", "responses"),
    ("/v1/embeddings", "POST", "openai", "embeddings"),
    ("/v1/completions", "POST", "openai", "completions"),
    ("/v1/messages", "POST", "anthropic", "messages"),
    ("/v1/messages/count_tokens", "POST", "anthropic", "count_tokens"),
    ("/v1/models", "GET", "openai", "models"),
)
_GEMINI_KINDS = {
    "generateContent": "generate",
    "streamGenerateContent": "stream_generate",
    "embedContent": "embed",
    "batchEmbedContents": "batch_embed",
    "countTokens": "count_tokens",
}
_SSE_KINDS = frozenset({"chat", "completions", "responses", "messages"})
# GET /v1/responses/{id} and POST /v1/responses/{id}/cancel.
_RESPONSE_ITEM_PATH = re.compile(r"/v1/responses/([^/]+)(/cancel)?$")
_AUDIO_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("/v1/audio/transcriptions", "POST", "openai", "transcriptions"),
    ("/v1/audio/translations", "POST", "openai", "translations"),
    ("/v1/audio/speech", "POST", "openai", "speech"),
)

_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGES = {
    400: "Invalid request.",
    401: "Invalid API key.",
    403: "Permission denied.",
    404: "Not found.",
    429: "Rate limit reached. Please try again in 1s.",
    500: "The server had an error while processing your request.",
    503: "The service is temporarily unavailable.",
    529: "Overloaded",
}


def text_pieces(chunks: int = DEFAULT_CHUNKS) -> list[str]:
    """The text of each streamed chunk, so tests can predict what a client reassembles."""
    return [WORDS[i % len(WORDS)] for i in range(chunks)]


def fake_text(chunks: int = DEFAULT_CHUNKS) -> str:
    """The whole reply text for `chunks` chunks; the same streamed or not."""
    return "".join(text_pieces(chunks))


def embedding_vector(index: int = 0, dims: int = EMBEDDING_DIMS) -> list[float]:
    """The vector for input `index`; eighths are exact in float32, so base64 round-trips."""
    return [((j + index) % 8 - 4) / 8 for j in range(dims)]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(event: str | None, obj: Any) -> bytes:
    data = b"data: " + _dumps(obj) + b"\n\n"
    return data if event is None else b"event: " + event.encode() + b"\n" + data


# ---------------------------------------------------------------------------------------------
# Recording


@dataclass
class RecordedRequest:
    """One request as the fake received it, for assertions on what the proxy forwarded.

    Header names are lowercase (ASGI normalises them); values and the body are the raw bytes.
    """

    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    timestamp: float
    received_at: float  # time.monotonic(), comparable with chunk_times and the test's clock
    chunk_times: list[float] = field(default_factory=list)  # monotonic time each chunk was sent

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), decoded as latin-1."""
        key = name.lower().encode("latin-1")
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return None

    def header_values(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.headers if k == key]

    def json(self) -> Any:
        return json.loads(self.body)


class _Recorder:
    """Thread-safe store: the server thread appends while the test thread reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []

    def add(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


# ---------------------------------------------------------------------------------------------
# Response builders. Each returns a _Body; results are cached by their (hashable) arguments.


class _Body(NamedTuple):
    content_type: bytes
    frames: tuple[bytes, ...]
    stream: bool


class _BadRequest(Exception):
    """A request the provider would refuse with 400; the message goes into its error shape."""


def _usage(raw: bytes | None, default: dict[str, Any]) -> dict[str, Any]:
    if raw is None:
        return default
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"x-fake-usage is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _BadRequest("x-fake-usage must be a JSON object")
    return value


def _openai_chat(
    model: str, stream: bool, include_usage: bool, chunks: int, usage_raw: bytes | None
) -> _Body:
    usage = _usage(usage_raw, OPENAI_CHAT_USAGE)
    pieces = text_pieces(chunks)
    if not stream:
        message = {
            "role": "assistant",
            "content": "".join(pieces),
            "refusal": None,
            "annotations": [],
        }
        body = {
            "id": CHAT_ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        return _Body(JSON, (_dumps(body),), False)

    base = {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = {**base, "choices": [choice]}
        if include_usage:
            obj["usage"] = None
        return _sse(None, obj)

    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [chunk({"content": piece}) for piece in pieces]
    frames.append(chunk({}, "stop"))
    if include_usage:
        frames.append(_sse(None, {**base, "choices": [], "usage": usage}))
    frames.append(b"data: [DONE]\n\n")
    return _Body(SSE_JSON, tuple(frames), True)


def _openai_completions(
    model: str, stream: bool, include_usage: bool, chunks: int, usage_raw: bytes | None
) -> _Body:
    usage = _usage(usage_raw, OPENAI_CHAT_USAGE)
    pieces = text_pieces(chunks)
    base = {
        "id": COMPLETION_ID,
        "object": "text_completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": FINGERPRINT,
    }
    if not stream:
        choice = {"text": "".join(pieces), "index": 0, "logprobs": None, "finish_reason": "stop"}
        return _Body(JSON, (_dumps({**base, "choices": [choice], "usage": usage}),), False)

    def chunk(text: str, finish_reason: str | None = None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        obj = {**base, "choices": [choice]}
        if include_usage:
            obj["usage"] = None
        return _sse(None, obj)

    frames = [chunk(piece) for piece in pieces]
    frames.append(chunk("", "stop"))
    if include_usage:
        frames.append(_sse(None, {**base, "choices": [], "usage": usage}))
    frames.append(b"data: [DONE]\n\n")
    return _Body(SSE_JSON, tuple(frames), True)


def _response_object(model: str, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "completed_at": CREATED + 1 if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _openai_responses(model: str, stream: bool, chunks: int, usage_raw: bytes | None) -> _Body:
    usage = _usage(usage_raw, OPENAI_RESPONSES_USAGE)
    pieces = text_pieces(chunks)
    text = "".join(pieces)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    item = {
        "id": RESPONSE_MSG_ID,
        "type": "message",
        "status": "completed",
        "content": [part],
        "role": "assistant",
    }
    final = _response_object(model, "completed", [item], usage)
    if not stream:
        return _Body(JSON, (_dumps(final),), False)

    started = _response_object(model, "in_progress", [], None)
    empty_part = {**part, "text": ""}
    where = {"item_id": RESPONSE_MSG_ID, "output_index": 0, "content_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        ),
        ("response.content_part.added", {**where, "part": empty_part}),
    ]
    events += [
        ("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
        for piece in pieces
    ]
    events += [
        ("response.output_text.done", {**where, "text": text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": final}),
    ]
    frames = tuple(
        _sse(name, {"type": name, "sequence_number": seq, **payload})
        for seq, (name, payload) in enumerate(events)
    )
    return _Body(SSE_JSON, frames, True)


def _openai_embeddings(
    model: str, count: int, dims: int, encoding: str, usage_raw: bytes | None
) -> _Body:
    usage = _usage(usage_raw, OPENAI_EMBEDDINGS_USAGE)
    data = []
    for index in range(count):
        vector: Any = embedding_vector(index, dims)
        if encoding == "base64":
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    body = {"object": "list", "data": data, "model": model, "usage": usage}
    return _Body(JSON, (_dumps(body),), False)


def _anthropic_messages(model: str, stream: bool, chunks: int, usage_raw: bytes | None) -> _Body:
    usage = _usage(usage_raw, ANTHROPIC_USAGE)
    pieces = text_pieces(chunks)
    message = {
        "id": ANTHROPIC_MSG_ID,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(pieces)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not stream:
        return _Body(JSON, (_dumps(message),), False)

    # message_start carries the input side and a token or so of output; the last message_delta
    # carries the cumulative totals (without the 5m/1h split, as the real API does).
    start_usage = dict(usage)
    if isinstance(usage.get("output_tokens"), int):
        start_usage["output_tokens"] = min(usage["output_tokens"], 1)
    delta_usage = {
        k: v
        for k, v in usage.items()
        if k not in ("cache_creation", "service_tier", "inference_geo")
    }
    start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": start}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {}),
    ]
    events += [
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
        for piece in pieces
    ]
    events += [
        ("content_block_stop", {"index": 0}),
        (
            "message_delta",
            {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": delta_usage},
        ),
        ("message_stop", {}),
    ]
    frames = tuple(_sse(name, {"type": name, **payload}) for name, payload in events)
    return _Body(SSE_JSON, frames, True)


def _gemini_running_usage(usage: dict[str, Any], done: int, total: int) -> dict[str, Any]:
    """Usage as Gemini reports it after `done` of `total` chunks: running totals that never fall.

    The first chunk lacks candidatesTokenCount, as real early chunks often do.
    """
    candidates = usage.get("candidatesTokenCount")
    if not isinstance(candidates, int) or total <= 0:
        return usage
    partial = candidates * done // total
    running = dict(usage)
    if partial:
        running["candidatesTokenCount"] = partial
    else:
        del running["candidatesTokenCount"]
    if isinstance(running.get("totalTokenCount"), int):
        running["totalTokenCount"] -= candidates - partial
    return running


def _gemini_generate(
    model: str, stream: bool, sse: bool, chunks: int, usage_raw: bytes | None
) -> _Body:
    usage = _usage(usage_raw, GEMINI_USAGE)
    pieces = text_pieces(chunks)

    def response(text: str, finish: bool, usage_now: dict[str, Any]) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
        if finish:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": usage_now,
            "modelVersion": model,
            "responseId": GEMINI_RESPONSE_ID,
        }

    if not stream:
        return _Body(JSON_GOOGLE, (_dumps(response("".join(pieces), True, usage)),), False)

    objects = [
        response(piece, False, _gemini_running_usage(usage, i, len(pieces)))
        for i, piece in enumerate(pieces)
    ]
    objects.append(response("", True, usage))  # the last chunk: final usage, no text
    if sse:
        frames = tuple(b"data: " + _dumps(obj) + b"\r\n\r\n" for obj in objects)
        return _Body(SSE_GEMINI, frames, True)
    items = [_dumps(obj) for obj in objects]
    array_frames = [b"[" + items[0]] + [b",\r\n" + item for item in items[1:]]
    array_frames[-1] += b"]"
    return _Body(JSON_GOOGLE, tuple(array_frames), True)


def _gemini_embed(count: int, batch: bool, dims: int, usage_raw: bytes | None) -> _Body:
    vectors = [{"values": embedding_vector(i, dims)} for i in range(count)]
    body: dict[str, Any] = {"embeddings": vectors} if batch else {"embedding": vectors[0]}
    if usage_raw is not None:
        body["usageMetadata"] = _usage(usage_raw, {})
    return _Body(JSON_GOOGLE, (_dumps(body),), False)


# ---------------------------------------------------------------------------------------------
# Audio: transcriptions and translations (multipart/form-data uploads) and speech.

# The usage each kind of transcription model reports (the openai SDK's types/audio).
TRANSCRIPTION_TOKEN_USAGE: dict[str, Any] = {
    "type": "tokens",
    "input_tokens": 250,
    "input_token_details": {"text_tokens": 10, "audio_tokens": 240},
    "output_tokens": 60,
    "total_tokens": 310,
}
TRANSCRIPTION_DURATION_USAGE: dict[str, Any] = {"type": "duration", "seconds": 60}
SPEECH_USAGE: dict[str, Any] = {"input_tokens": 14, "output_tokens": 101, "total_tokens": 115}
DURATION_PRICED_AUDIO_MODELS = ("whisper-1",)
TEXT_PLAIN = b"text/plain; charset=utf-8"
SPEECH_CONTENT_TYPES = {
    "mp3": b"audio/mpeg",
    "opus": b"audio/ogg",
    "aac": b"audio/aac",
    "flac": b"audio/flac",
    "wav": b"audio/wav",
    "pcm": b"audio/pcm",
}


def form_fields(content_type: bytes, body: bytes) -> dict[str, Any]:
    """A multipart/form-data body's fields, parsed by the standard library's e-mail parser (a
    parser of its own, so a test of the proxy's never grades itself): text for plain fields,
    (filename, bytes) for files; repeated fields (``include[]``) as lists."""
    message = BytesParser(policy=email_policy.HTTP).parsebytes(
        b"Content-Type: " + content_type + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise _BadRequest("The request must be multipart/form-data.")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        filename = part.get_filename()
        value: Any = (filename, payload) if filename is not None else payload.decode("utf-8")
        if name in fields:
            previous = fields[name]
            fields[name] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            fields[name] = value
    return fields


def audio_upload_answer(kind: str, headers: dict[bytes, bytes], body: bytes) -> _Body:
    """A transcription or translation, as OpenAI answers it for each ``response_format``."""
    fields = form_fields(headers.get(b"content-type", b""), body)
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter")
    if not isinstance(fields.get("file"), tuple) or not fields["file"][1]:
        raise _BadRequest("you must provide a file")
    override = headers.get(b"x-fake-model")
    model = override.decode("latin-1") if override else model
    duration_priced = model in DURATION_PRICED_AUDIO_MODELS
    usage = _usage(
        headers.get(b"x-fake-usage"),
        TRANSCRIPTION_DURATION_USAGE if duration_priced else TRANSCRIPTION_TOKEN_USAGE,
    )
    chunks = _int_knob(headers, b"x-fake-chunks")
    pieces = text_pieces(DEFAULT_CHUNKS if chunks is None or chunks < 0 else chunks)
    text = "".join(pieces)
    response_format = fields.get("response_format", "json")
    if fields.get("stream") == "true" and kind == "transcriptions" and not duration_priced:
        frames = [
            _sse(None, {"type": "transcript.text.delta", "delta": piece, "logprobs": []})
            for piece in pieces
        ]
        done = {"type": "transcript.text.done", "text": text, "logprobs": [], "usage": usage}
        frames.append(_sse(None, done))
        return _Body(SSE_JSON, tuple(frames), True)
    seconds = usage.get("seconds", 60) if usage.get("type") == "duration" else 60
    if response_format == "text":
        return _Body(TEXT_PLAIN, (text.encode() + b"\n",), False)
    if response_format in ("srt", "vtt"):
        cue = f"1\n00:00:00,000 --> 00:00:0{len(pieces) % 10},000\n{text}\n\n"
        if response_format == "vtt":
            cue = "WEBVTT\n\n" + cue.replace(",", ".")
        return _Body(TEXT_PLAIN, (cue.encode(),), False)
    if response_format == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": float(seconds),
            "text": text,
            "tokens": list(range(len(pieces))),
            "temperature": 0.0,
            "avg_logprob": -0.2,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.01,
        }
        document: dict[str, Any] = {
            "task": "transcribe" if kind == "transcriptions" else "translate",
            "language": "english",
            "duration": float(seconds),
            "text": text,
            "segments": [segment],
        }
        if kind == "transcriptions":
            document["usage"] = usage
        return _Body(JSON, (_dumps(document),), False)
    if response_format != "json":
        raise _BadRequest(f"Invalid response_format: {response_format!r}")
    if kind == "translations":
        return _Body(JSON, (_dumps({"text": text}),), False)
    return _Body(JSON, (_dumps({"text": text, "usage": usage}),), False)


def speech_audio(length: int) -> bytes:
    """Deterministic bytes standing for generated audio (an MP3 frame header, then a ramp)."""
    return b"\xff\xfb\x90\x64" + bytes(i % 251 for i in range(length - 4))


def speech_answer(request: dict[str, Any], model: str, headers: dict[bytes, bytes]) -> _Body:
    """Speech: the audio itself in chunks, or with ``stream_format: "sse"`` (token-priced
    models only) base64 deltas and a ``speech.audio.done`` event with the usage."""
    text = request.get("input")
    if not isinstance(text, str) or not text:
        raise _BadRequest("you must provide an input")
    chunks = _int_knob(headers, b"x-fake-chunks")
    chunks = DEFAULT_CHUNKS if chunks is None or chunks < 1 else chunks
    audio = [speech_audio(1024 + index) for index in range(chunks)]
    if request.get("stream_format") == "sse":
        if model.startswith("tts-1"):
            raise _BadRequest(f"stream_format 'sse' is not supported for {model}.")
        usage = _usage(headers.get(b"x-fake-usage"), SPEECH_USAGE)
        frames = [
            _sse(None, {"type": "speech.audio.delta", "audio": base64.b64encode(a).decode()})
            for a in audio
        ]
        frames.append(_sse(None, {"type": "speech.audio.done", "usage": usage}))
        return _Body(SSE_JSON, tuple(frames), True)
    response_format = request.get("response_format", "mp3")
    content_type = SPEECH_CONTENT_TYPES.get(response_format)
    if content_type is None:
        raise _BadRequest(f"Invalid response_format: {response_format!r}")
    return _Body(content_type, tuple(audio), True)


@lru_cache(maxsize=4096)
def _build(kind: str, model: str, options: tuple[Any, ...], usage_raw: bytes | None) -> _Body:
    """Builds (once per distinct request shape) the bytes of a successful response."""
    if kind == "chat":
        return _openai_chat(model, *options, usage_raw)
    if kind == "completions":
        return _openai_completions(model, *options, usage_raw)
    if kind == "responses":
        return _openai_responses(model, *options, usage_raw)
    if kind == "embeddings":
        return _openai_embeddings(model, *options, usage_raw)
    if kind == "messages":
        return _anthropic_messages(model, *options, usage_raw)
    if kind == "anthropic_count_tokens":
        return _Body(JSON, (_dumps(_usage(usage_raw, ANTHROPIC_COUNT_TOKENS)),), False)
    if kind in ("generate", "stream_generate"):
        return _gemini_generate(model, *options, usage_raw)
    if kind in ("embed", "batch_embed"):
        return _gemini_embed(*options, usage_raw)
    if kind == "google_count_tokens":
        return _Body(JSON_GOOGLE, (_dumps(_usage(usage_raw, GEMINI_COUNT_TOKENS)),), False)
    raise AssertionError(kind)


def _models_body(provider: str) -> bytes:
    if provider == "anthropic":
        data = [
            {
                "type": "model",
                "id": model,
                "display_name": model,
                "created_at": "2026-01-01T00:00:00Z",
            }
            for model in ANTHROPIC_MODELS
        ]
        return _dumps(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"],
                "last_id": data[-1]["id"],
            }
        )
    data = [
        {"id": model, "object": "model", "created": CREATED, "owned_by": "system"}
        for model in OPENAI_MODELS
    ]
    return _dumps({"object": "list", "data": data})


_MODELS_BODIES = {"openai": _models_body("openai"), "anthropic": _models_body("anthropic")}


@lru_cache(maxsize=256)
def error_body(
    provider: str, status: int, message: str | None = None, code: str | None = None
) -> bytes:
    """The error JSON each provider sends for `status` (bytes, as on the wire)."""
    message = message or _DEFAULT_MESSAGES.get(status) or f"Error {status}."
    if provider == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "error")
        return _dumps({"type": "error", "error": {"type": kind, "message": message}})
    if provider == "google":
        google_status = _GOOGLE_STATUSES.get(status, "UNKNOWN")
        error: dict[str, Any] = {"code": status, "message": message, "status": google_status}
        if code:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": code,
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
        return _dumps({"error": error})
    kind, default_code = _OPENAI_ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return _dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code or default_code}}
    )


# ---------------------------------------------------------------------------------------------
# Compression


CODINGS = (b"gzip", b"deflate", b"br", b"zstd")


class _Encoder:
    """Compresses a body; for streams each chunk is flushed so it is decodable on arrival."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self._brotli = brotli.Compressor() if name == b"br" else None
        # zstd at its default level, the frame's content size unknown (a streamed frame).
        self._zstd = zstandard.ZstdCompressor(level=3).compressobj() if name == b"zstd" else None
        self._zlib = (
            zlib.compressobj(wbits=31 if name == b"gzip" else 15)
            if name in (b"gzip", b"deflate")
            else None
        )

    def chunk(self, data: bytes) -> bytes:
        if self._brotli is not None:
            return self._brotli.process(data) + self._brotli.flush()
        if self._zstd is not None:
            return self._zstd.compress(data) + self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes = b"") -> bytes:
        if self._brotli is not None:
            return self._brotli.process(data) + self._brotli.finish()
        if self._zstd is not None:
            return self._zstd.compress(data) + self._zstd.flush()
        return self._zlib.compress(data) + self._zlib.flush()


class _Encoders:
    """Codings applied in turn (``Content-Encoding: gzip, zstd``: gzip first, then zstd)."""

    def __init__(self, names: list[bytes]) -> None:
        self.name = b", ".join(names)
        self._encoders = [_Encoder(name) for name in names]

    def chunk(self, data: bytes) -> bytes:
        for encoder in self._encoders:
            data = encoder.chunk(data)
        return data

    def finish(self, data: bytes = b"") -> bytes:
        for encoder in self._encoders:
            data = encoder.finish(data)
        return data


def _encoders_for(coding: bytes, accept_encoding: bytes) -> _Encoders | None:
    """The encoders an ``x-fake-encoding`` value asks for, when the client accepts each one."""
    names = [name.strip() for name in coding.lower().split(b",") if name.strip()]
    if not names or any(
        name not in CODINGS or not _accepts(accept_encoding, name) for name in names
    ):
        return None
    return _Encoders(names)


def _accepts(accept_encoding: bytes, coding: bytes) -> bool:
    """Whether an Accept-Encoding value allows `coding` (explicitly or by `*`, with q > 0)."""
    for item in accept_encoding.lower().split(b","):
        name, _, params = item.partition(b";")
        if name.strip() not in (coding, b"*"):
            continue
        params = params.strip()
        if params.startswith(b"q="):
            try:
                return float(params[2:]) > 0
            except ValueError:
                return False
        return True
    return False


# ---------------------------------------------------------------------------------------------
# The ASGI app


class FakeCut(Exception):
    """Raised mid-body so the server drops the connection without a terminating chunk."""


class _DropCutLogs(logging.Filter):
    """Hides uvicorn's traceback for deliberate cuts; real errors still get logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, FakeCut)


def _quiet_cut_logs() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropCutLogs) for f in logger.filters):
        logger.addFilter(_DropCutLogs())


def _int_knob(headers: dict[bytes, bytes], name: bytes) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _guess_provider(path: str, headers: dict[bytes, bytes], query: bytes) -> str:
    """Which provider's error shape an unroutable request should get."""
    if b"x-goog-api-key" in headers or b"key=" in query or "/v1beta/" in path or ":" in path:
        return "google"
    if b"anthropic-version" in headers or b"x-api-key" in headers:
        return "anthropic"
    return "openai"


def _mask(key: str) -> str:
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else "*" * len(key)


class FakeProviderApp:
    """The ASGI application; `FakeProvider` serves it, `app_from_env` builds it for uvicorn."""

    def __init__(
        self,
        *,
        openai_key: str | None = DEFAULT_OPENAI_KEY,
        anthropic_key: str | None = DEFAULT_ANTHROPIC_KEY,
        google_key: str | None = DEFAULT_GOOGLE_KEY,
        record: bool = True,
    ) -> None:
        self.keys = {"openai": openai_key, "anthropic": anthropic_key, "google": google_key}
        self.record = record
        self.recorder = _Recorder()
        # Background responses by id (only the server's event loop touches them).
        self.background: dict[str, BackgroundResponse] = {}
        from tests.fakes.batches import FakeBatches  # files and batches (they build on this module)

        self.batches = FakeBatches(self)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            from tests.fakes import realtime  # the WebSocket endpoints (they build on this module)

            await realtime.serve(self, scope, receive, send)
            return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = dict(scope["headers"])
        recorded = None
        if self.record:
            recorded = RecordedRequest(
                method=scope["method"],
                path=scope["path"],
                raw_path=scope.get("raw_path") or scope["path"].encode(),
                query_string=scope["query_string"],
                headers=list(scope["headers"]),
                body=body,
                timestamp=time.time(),
                received_at=time.monotonic(),
            )
            self.recorder.add(recorded)
        echo = headers.get(b"x-fake-echo", b"0") not in (b"0", b"")
        if not echo and self.batches.route(scope["path"]) is not None:
            await self.batches.serve(scope, headers, body, send, recorded)
            return
        status, response_headers, content = self._respond(scope, headers, body)
        await _send(send, status, response_headers, content, headers, recorded)

    def _respond(
        self, scope: dict[str, Any], headers: dict[bytes, bytes], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], _Body]:
        """Decides the whole response (status, headers, body frames) without any waiting."""
        if headers.get(b"x-fake-echo", b"0") not in (b"0", b""):
            return 200, [(b"content-type", JSON)], _Body(JSON, (_echo(scope, body),), False)

        method, path, query = scope["method"], scope["path"], scope["query_string"]
        provider, kind, model = self._route(method, path, headers)
        if provider is None:
            provider = _guess_provider(path, headers, query)
            message = f"Invalid URL ({method} {path})"
            return self._error(provider, 404, message)
        denied = self._check_auth(provider, headers, query)
        if denied is not None:
            return denied
        fake_status = _int_knob(headers, b"x-fake-status")
        if fake_status is not None and fake_status >= 400:
            return self._error(provider, fake_status)
        try:
            content = self._content(provider, kind, model, headers, body, query)
        except _BadRequest as exc:
            return self._error(provider, 400, str(exc))
        except _NotFound as exc:
            return self._error(provider, 404, str(exc))
        return 200, self._headers(provider, content.content_type), content

    def _route(
        self, method: str, path: str, headers: dict[bytes, bytes]
    ) -> tuple[str | None, str, str]:
        match = _GEMINI_PATH.search(path)
        if match:
            kind = _GEMINI_KINDS.get(match.group(3))
            if method != "POST" or kind is None:
                return None, "", ""
            return "google", kind, match.group(2)
        item = _RESPONSE_ITEM_PATH.search(path)
        if item is not None:
            kind = "response_cancel" if item.group(2) else "response_get"
            if method != ("POST" if item.group(2) else "GET"):
                return None, "", ""
            return "openai", kind, item.group(1)
        for suffix, route_method, provider, kind in _ROUTES + _AUDIO_ROUTES:
            if method == route_method and path.endswith(suffix):
                if kind == "models" and (
                    b"anthropic-version" in headers or b"x-api-key" in headers
                ):
                    provider = "anthropic"
                return provider, kind, ""
        return None, "", ""

    def _check_auth(
        self, provider: str, headers: dict[bytes, bytes], query: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], _Body] | None:
        """None when every credential present is the configured key, else the provider's error."""
        expected = self.keys[provider]
        if expected is None:
            return None
        credentials = []
        authorization = headers.get(b"authorization")
        if authorization is not None:
            scheme, _, token = authorization.decode("latin-1").partition(" ")
            credentials.append(token.strip() if scheme.lower() == "bearer" else authorization)
        if provider == "anthropic" and b"x-api-key" in headers:
            credentials.append(headers[b"x-api-key"].decode("latin-1"))
        if provider == "google":
            credentials = []  # Google ignores Authorization for API-key auth.
            if b"x-goog-api-key" in headers:
                credentials.append(headers[b"x-goog-api-key"].decode("latin-1"))
            if b"key=" in query:
                credentials += parse_qs(query.decode("latin-1")).get("key", [])
        if credentials and all(c == expected for c in credentials):
            return None
        wrong = next((c for c in credentials if c != expected), None)
        if provider == "openai":
            if wrong is None:
                message = (
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                )
                return self._error(provider, 401, message)
            message = (
                f"Incorrect API key provided: {_mask(str(wrong))}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            return self._error(provider, 401, message, code="invalid_api_key")
        if provider == "anthropic":
            message = "x-api-key header is required" if wrong is None else "invalid x-api-key"
            return self._error(provider, 401, message)
        if wrong is None:
            message = (
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API."
            )
            return self._error(provider, 403, message)
        return self._error(
            provider, 400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"
        )

    def _error(
        self, provider: str, status: int, message: str | None = None, code: str | None = None
    ) -> tuple[int, list[tuple[bytes, bytes]], _Body]:
        body = error_body(provider, status, message, code)
        content_type = JSON_GOOGLE if provider == "google" else JSON
        headers = self._headers(provider, content_type)
        if status == 429:
            headers.append((b"retry-after", b"1"))
        return status, headers, _Body(content_type, (body,), False)

    @staticmethod
    def _headers(provider: str, content_type: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type)]
        request_id = os.urandom(12).hex().encode()
        if provider == "openai":
            headers += [
                (b"x-request-id", b"req_" + request_id),
                (b"openai-processing-ms", b"1"),
                (b"openai-version", b"2020-10-01"),
            ]
        elif provider == "anthropic":
            headers.append((b"request-id", b"req_" + request_id))
        return headers

    def _content(
        self,
        provider: str,
        kind: str,
        model: str,
        headers: dict[bytes, bytes],
        body: bytes,
        query: bytes,
    ) -> _Body:
        if kind == "models":
            return _Body(JSON, (_MODELS_BODIES[provider],), False)
        if kind in ("transcriptions", "translations"):
            return audio_upload_answer(kind, headers, body)
        if kind in ("response_get", "response_cancel"):
            return self._background_later(kind, model, headers, query)
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            raise _BadRequest("The request body is not valid JSON.") from None
        if not isinstance(request, dict):
            raise _BadRequest("The request body must be a JSON object.")
        chunks = _int_knob(headers, b"x-fake-chunks")
        chunks = DEFAULT_CHUNKS if chunks is None or chunks < 0 else chunks
        usage_raw = headers.get(b"x-fake-usage")
        override = headers.get(b"x-fake-model")
        if provider != "google":
            model = request.get("model")
            if not isinstance(model, str) or not model:
                raise _BadRequest("you must provide a model parameter")
        if override:
            model = override.decode("latin-1")
        stream = request.get("stream") is True
        if kind == "speech":
            return speech_answer(request, model, headers)
        if kind == "responses" and request.get("background") is True:
            return self._background_create(model, stream, chunks, usage_raw, headers)
        if kind in ("chat", "completions"):
            stream_options = request.get("stream_options")
            include_usage = (
                isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            )
            options: tuple[Any, ...] = (stream, stream and include_usage, chunks)
        elif kind in ("responses", "messages"):
            options = (stream, chunks)
        elif kind == "embeddings":
            dims = request.get("dimensions")
            encoding = request.get("encoding_format")
            options = (
                _input_count(request.get("input")),
                dims if isinstance(dims, int) and dims > 0 else EMBEDDING_DIMS,
                encoding if isinstance(encoding, str) else "float",
            )
        elif kind in ("generate", "stream_generate"):
            sse = kind == "generate" or b"alt=sse" in query
            options = (kind == "stream_generate", sse, chunks)
        elif kind in ("embed", "batch_embed"):
            if kind == "batch_embed":
                requests = request.get("requests")
                count = len(requests) if isinstance(requests, list) and requests else 1
                config = requests[0] if isinstance(requests, list) and requests else {}
            else:
                count, config = 1, request
            dims = config.get("outputDimensionality") if isinstance(config, dict) else None
            dims = dims if isinstance(dims, int) and dims > 0 else EMBEDDING_DIMS
            options = (count, kind == "batch_embed", dims)
        else:  # count_tokens
            kind = f"{provider}_count_tokens"
            options = ()
        return _build(kind, model, options, usage_raw)

    # Background responses: created queued, completed after a number of retrieves.

    def _background_create(
        self,
        model: str,
        stream: bool,
        chunks: int,
        usage_raw: bytes | None,
        headers: dict[bytes, bytes],
    ) -> _Body:
        polls = _int_knob(headers, b"x-fake-background-polls")
        response = BackgroundResponse(
            id="resp_" + os.urandom(24).hex(),
            model=model,
            chunks=chunks,
            usage_raw=usage_raw,
            polls_left=2 if polls is None or polls < 0 else polls,
        )
        _usage(usage_raw, OPENAI_RESPONSES_USAGE)  # a bad x-fake-usage answers 400 now
        self.background[response.id] = response
        if stream:
            response.status = "completed"
            return response.stream_body()
        return _Body(JSON, (_dumps(response.object("queued")),), False)

    def _background_later(
        self, kind: str, response_id: str, headers: dict[bytes, bytes], query: bytes
    ) -> _Body:
        response = self.background.get(response_id)
        if response is None:
            if response_id == RESPONSE_ID and kind == "response_get":
                # The fixed id of every response made in the foreground: stored, completed.
                usage = _usage(headers.get(b"x-fake-usage"), OPENAI_RESPONSES_USAGE)
                final = _openai_responses(_requested_or("gpt-4o-mini", headers), False, 5, None)
                document = json.loads(final.frames[0])
                document["usage"] = usage
                return _Body(JSON, (_dumps(document),), False)
            raise _NotFound(f"Response with id '{response_id}' not found.")
        if kind == "response_cancel":
            if response.status != "completed":
                response.status = "cancelled"
            return _Body(JSON, (_dumps(response.object(response.status)),), False)
        if b"stream=true" in query:
            if response.status == "cancelled":
                raise _BadRequest("This response was cancelled.")
            response.status = "completed"
            return response.stream_body()
        if response.status not in ("completed", "cancelled"):
            if response.polls_left > 0:
                response.polls_left -= 1
                response.status = "queued" if response.status == "created" else "in_progress"
                return _Body(JSON, (_dumps(response.object(response.status)),), False)
            response.status = "completed"
        return _Body(JSON, (_dumps(response.object(response.status)),), False)


def _requested_or(default: str, headers: dict[bytes, bytes]) -> str:
    override = headers.get(b"x-fake-model")
    return override.decode("latin-1") if override else default


class _NotFound(Exception):
    """A request for something the provider does not have: 404 in its error shape."""


@dataclass
class BackgroundResponse:
    """A Responses API response made with ``background: true``: queued when created, then
    in progress for ``polls_left`` retrieves, then completed with its usage."""

    id: str
    model: str
    chunks: int
    usage_raw: bytes | None
    polls_left: int
    status: str = "created"

    def object(self, status: str) -> dict[str, Any]:
        """The response object as a retrieve (or the create) answers it in ``status``."""
        if status == "completed":
            document = json.loads(
                _openai_responses(self.model, False, self.chunks, self.usage_raw).frames[0]
            )
        else:
            document = _response_object(self.model, status, [], None)
        return {**document, "id": self.id, "background": True}

    def stream_body(self) -> _Body:
        """The response's events from the start, as a streamed create or a stream retrieve
        gives them: ``response.created`` (queued) through ``response.completed``."""
        frames = []
        for frame in _openai_responses(self.model, True, self.chunks, self.usage_raw).frames:
            name, _, data = frame.partition(b"\ndata: ")
            payload = json.loads(data)
            if isinstance(payload.get("response"), dict):
                payload["response"].update(id=self.id, background=True)
                if payload["type"] == "response.created":
                    payload["response"]["status"] = "queued"
            frames.append(name + b"\ndata: " + _dumps(payload) + b"\n\n")
        return _Body(SSE_JSON, tuple(frames), True)


def _input_count(value: Any) -> int:
    """How many embeddings an OpenAI `input` asks for (a list of token ids is one input)."""
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1


def _echo(scope: dict[str, Any], body: bytes) -> bytes:
    raw_path = scope.get("raw_path") or scope["path"].encode()
    return _dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": raw_path.decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body_base64": base64.b64encode(body).decode(),
        }
    )


async def _send(
    send: Any,
    status: int,
    headers: list[tuple[bytes, bytes]],
    content: _Body,
    request_headers: dict[bytes, bytes],
    recorded: RecordedRequest | None,
) -> None:
    """Sends the response, applying the timing, compression, split and cut knobs."""
    first_byte_ms = _int_knob(request_headers, b"x-fake-first-byte-delay-ms")
    if first_byte_ms:
        await asyncio.sleep(first_byte_ms / 1000)

    encoder = _encoders_for(
        request_headers.get(b"x-fake-encoding", b""), request_headers.get(b"accept-encoding", b"")
    )
    if encoder is not None:
        headers = [*headers, (b"content-encoding", encoder.name)]

    cut_after = _int_knob(request_headers, b"x-fake-cut-after")
    split = request_headers.get(b"x-fake-split", b"0") not in (b"0", b"")
    frames = content.frames
    if not content.stream:
        whole = b"".join(frames)
        if encoder is not None:
            whole = encoder.finish(whole)
            encoder = None
        headers = [*headers, (b"content-length", str(len(whole)).encode())]
        half = len(whole) // 2
        frames = (whole[:half], whole[half:]) if cut_after is not None else (whole,)

    await send({"type": "http.response.start", "status": status, "headers": headers})
    stall_ms = _int_knob(request_headers, b"x-fake-stall-ms")
    if stall_ms:
        await asyncio.sleep(stall_ms / 1000)

    delay_ms = _int_knob(request_headers, b"x-fake-delay-ms")
    for index, frame in enumerate(frames):
        if cut_after is not None and index >= cut_after:
            raise FakeCut(f"x-fake-cut-after: {cut_after}")
        if index and delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if split and len(frame) > 1:
            half = len(frame) // 2
            await _send_part(send, frame[:half], encoder)
            await asyncio.sleep(0.002)  # lets the first half leave as its own segment
            await _send_part(send, frame[half:], encoder)
        else:
            await _send_part(send, frame, encoder)
        if recorded is not None:
            recorded.chunk_times.append(time.monotonic())
    if cut_after is not None:
        raise FakeCut(f"x-fake-cut-after: {cut_after}")
    tail = encoder.finish() if encoder is not None else b""
    await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _send_part(send: Any, data: bytes, encoder: _Encoders | None) -> None:
    if encoder is not None:
        data = encoder.chunk(data)
    if data:
        await send({"type": "http.response.body", "body": data, "more_body": True})


# ---------------------------------------------------------------------------------------------
# Serving


class FakeProvider:
    """The fake served by uvicorn on a background thread, on an ephemeral port by default.

    Use as a context manager, or call start() and stop(). `url` is the origin to give an SDK
    (openai: f"{url}/v1"; anthropic and google-genai: url) or the proxy's COSTR_UPSTREAM_*.
    """

    def __init__(
        self,
        *,
        openai_key: str | None = DEFAULT_OPENAI_KEY,
        anthropic_key: str | None = DEFAULT_ANTHROPIC_KEY,
        google_key: str | None = DEFAULT_GOOGLE_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
    ) -> None:
        self.app = FakeProviderApp(
            openai_key=openai_key, anthropic_key=anthropic_key, google_key=google_key, record=record
        )
        self.host = host
        self.port = port
        self._server: ThreadedServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def keys(self) -> dict[str, str | None]:
        return self.app.keys

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        return self.app.recorder.snapshot()

    @property
    def last_request(self) -> RecordedRequest | None:
        requests = self.app.recorder.snapshot()
        return requests[-1] if requests else None

    @property
    def sent_chunk_times(self) -> list[list[float]]:
        """For each recorded request (same index), the monotonic time each body chunk was sent."""
        return [request.chunk_times for request in self.app.recorder.snapshot()]

    def clear(self) -> None:
        self.app.recorder.clear()

    def start(self) -> FakeProvider:
        if self._server is not None:
            raise RuntimeError("FakeProvider already started")
        _quiet_cut_logs()
        # Real providers take larger WebSocket messages than uvicorn's 16 MiB default: the bound
        # under test is Costr's own.
        self._server = ThreadedServer(
            self.app, host=self.host, port=self.port, ws_max_size=64 * 1024 * 1024
        ).start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_ENV_KEYS = {
    "openai_key": "FAKE_PROVIDER_OPENAI_KEY",
    "anthropic_key": "FAKE_PROVIDER_ANTHROPIC_KEY",
    "google_key": "FAKE_PROVIDER_GOOGLE_KEY",
}


def app_from_env() -> FakeProviderApp:
    """uvicorn factory for the process mode: each worker builds its app from the environment."""
    _quiet_cut_logs()
    defaults = {
        "openai_key": DEFAULT_OPENAI_KEY,
        "anthropic_key": DEFAULT_ANTHROPIC_KEY,
        "google_key": DEFAULT_GOOGLE_KEY,
    }
    keys = {name: os.environ.get(env, defaults[name]) for name, env in _ENV_KEYS.items()}
    return FakeProviderApp(**keys, record=os.environ.get("FAKE_PROVIDER_RECORD") == "1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic/Gemini provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--openai-key", default=DEFAULT_OPENAI_KEY)
    parser.add_argument("--anthropic-key", default=DEFAULT_ANTHROPIC_KEY)
    parser.add_argument("--google-key", default=DEFAULT_GOOGLE_KEY)
    parser.add_argument(
        "--record", action="store_true", help="keep every request in memory (off: benchmarks)"
    )
    args = parser.parse_args(argv)
    # Workers are separate processes, so the settings travel through the environment.
    os.environ[_ENV_KEYS["openai_key"]] = args.openai_key
    os.environ[_ENV_KEYS["anthropic_key"]] = args.anthropic_key
    os.environ[_ENV_KEYS["google_key"]] = args.google_key
    os.environ["FAKE_PROVIDER_RECORD"] = "1" if args.record else "0"
    uvicorn.run(
        "tests.fakes.provider:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        http="httptools",
        loop="uvloop",
        access_log=False,
        lifespan="off",
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
