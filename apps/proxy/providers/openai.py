"""OpenAI: Chat Completions, Responses, Embeddings and legacy Completions; audio is in
``openai_audio``.

Usage rules (PROVIDERS.md): ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``
and ``completion_tokens`` includes ``completion_tokens_details.reasoning_tokens``; the Responses
API says ``input_tokens``/``output_tokens`` with ``*_details`` alike. A chat stream carries usage
only in a final chunk with ``"choices": []``, and only when the request set
``stream_options.include_usage`` -- hence the one body change, and the filter that hides the
extra chunk from clients that never asked for it.

Background responses (DESIGN.md, "Background and retrieved responses"): a Responses API call
with ``background: true`` answers at once (``queued``, no usage); the usage appears later in a
retrieve (``GET /v1/responses/{id}``, maybe ``?stream=true``), in the creating call's own stream,
or in a cancel's answer. Its one priced event is the first record that carries the usage, under
a request id derived from the organization and the response id (``resp:<org>:<digest>``), so
that every later retrieve of the same completed response is the same event, stored once by the
writer (``ON CONFLICT (request_id) DO NOTHING``). The creating call's event, when it carries no
usage, gets ``resp-created:<org>:<digest>`` and ``billable: False``; a poll without usage is
``billable: False`` too. Every later record names the creating one in ``attribution_from``, so
the writer gives it the creating request's customer and properties when it names none. The
digest (32 hex digits of the id's SHA-256) keeps the request id within its 64 characters
whatever the provider's id length. A retrieve of a response that was not made in the
background is never billable: its usage was metered when it was made.
"""

import dataclasses
import hashlib
import json
import re
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
    is_event_stream,
    loads_or_none,
    request_info_from_body,
    with_headers_set,
)
from apps.proxy.providers.openai_audio import (
    AUDIO_ENDPOINTS,
    audio_body_reader,
    audio_stream_reader,
    inspect_audio_request,
)
from apps.proxy.providers.recovery import JSON_HEAD_BYTES, recover_fields
from apps.proxy.sse import Event, SSESplitter
from apps.usage.metering.provider_usage import (
    Usage,
    text_or_none,
    usage_from_openai_body,
    usage_from_openai_usage,
)
from costr.net.decoding import ContentDecoder, content_decoder

_ENDPOINTS = {
    "v1/chat/completions": "chat",
    "v1/responses": "responses",
    "v1/embeddings": "embeddings",
    "v1/completions": "completions",
    **AUDIO_ENDPOINTS,
}
_RESPONSE_STRING_KEYS = ("model", "service_tier")
_RESPONSE_OBJECT_STRING_KEYS = ("model", "service_tier", "id")
# A retrieve (GET) or cancel (POST) of one response: the answer is the response object.
_RESPONSE_PATH = re.compile(r"v1/responses/([^/]+)(/cancel)?")
_RESPONSE_ID_MAX = 256


_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


class ChatStreamUsageReader(SSEUsageReader):
    """Chat Completions (and legacy Completions) stream: usage rides the final chunk.

    Only the first chunk (for the model and tier) and a chunk holding a ``usage`` object are
    parsed; the content chunks in between are skipped with a regex test.
    """

    def __init__(self, decoder: ContentDecoder):
        super().__init__(decoder)
        self._model: str | None = None
        self._service_tier: Any = None
        self._usage: dict[str, Any] | None = None

    def _on_event(self, event: Event) -> None:
        if event.truncated:
            return
        if self._model is not None and not _USAGE_OBJECT.search(event.data):
            return
        chunk = loads_or_none(event.data)
        if not isinstance(chunk, dict):
            return
        self._model = text_or_none(chunk.get("model")) or self._model
        self._service_tier = chunk.get("service_tier", self._service_tier)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
            self._complete = True

    def _result(self) -> Usage | None:
        return usage_from_openai_usage(
            self._usage, model=self._model, service_tier=self._service_tier
        )


_RESPONSE_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSE_OBJECT_EVENTS = _RESPONSE_FINAL_EVENTS | {
    "response.created",
    "response.in_progress",
    "response.queued",
}


@dataclasses.dataclass(slots=True, frozen=True)
class ResponsesRequestInfo(RequestInfo):
    """A Responses API request that concerns a background response, or may: a create that
    asked for ``background: true``, or a retrieve or cancel of one response (``later``)."""

    background: bool = False
    later: bool = False

    @property
    def starts_work(self) -> bool:
        """A retrieve or cancel of a background response starts nothing: its creating call was
        admitted (and keeps its hold until the usage is stored: ``budgets.guard.settle``)."""
        return not self.later


# What a background response's record is (``BackgroundUsage.kind``).
CREATED = "created"  # the creating call, no usage yet
CREATED_METERED = "created_metered"  # the creating call's own stream brought the usage
METERED = "metered"  # a later call brought the usage
PENDING = "pending"  # a later call without usage: a poll
FOREGROUND = "foreground"  # a later call on a response not made in the background


@dataclasses.dataclass(slots=True)
class BackgroundUsage(Usage):
    """Usage of a call that concerns a background response, and what its record takes beyond
    the token counts (the module docstring says why)."""

    response_id: str = ""
    kind: str = PENDING

    def record_fields(self, organization_id: int) -> dict[str, Any]:
        """The record's derived request id, ``billable`` flag and ``attribution_from``."""
        if self.kind == FOREGROUND or not self.response_id:
            return {} if self.kind == METERED else {"billable": False}
        digest = hashlib.sha256(self.response_id.encode()).hexdigest()[:32]
        created = f"resp-created:{organization_id}:{digest}"
        metered = f"resp:{organization_id}:{digest}"
        if self.kind == CREATED:
            return {"request_id": created, "billable": False}
        if self.kind == CREATED_METERED:
            return {"request_id": metered}
        if self.kind == METERED:
            return {"request_id": metered, "attribution_from": created}
        return {"billable": False, "attribution_from": created}


def background_usage(
    usage: Usage | None, response_id: Any, background: bool, info: RequestInfo
) -> Usage | None:
    """``usage`` as the record of a call on a background response takes it; a create that was
    not made in the background keeps its usage as it is."""
    later = isinstance(info, ResponsesRequestInfo) and info.later
    if not background and not later:
        return usage
    model = usage.model if usage is not None else None
    if not background:
        return BackgroundUsage(model=model, kind=FOREGROUND)
    if not isinstance(response_id, str) or len(response_id) > _RESPONSE_ID_MAX:
        response_id = ""
    if usage is None or (usage.input_tokens is None and usage.output_tokens is None):
        kind = PENDING if later else CREATED
        return BackgroundUsage(model=model, response_id=response_id, kind=kind)
    counts = {field.name: getattr(usage, field.name) for field in dataclasses.fields(Usage)}
    return BackgroundUsage(
        **counts, response_id=response_id, kind=METERED if later else CREATED_METERED
    )


_TOP_LEVEL_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_BACKGROUND_TRUE = re.compile(rb'"background"\s*:\s*true\b')


def background_in_head(head: bytes) -> bool:
    """Whether a JSON object's (possibly cut) text says ``"background": true`` at its top
    level: a nested ``background`` member does not count."""
    for match in _BACKGROUND_TRUE.finditer(head):
        depth = 0
        for token in _TOP_LEVEL_TOKEN.finditer(head, 0, match.start()):
            value = token.group()
            if value in (b"{", b"["):
                depth += 1
            elif value in (b"}", b"]"):
                depth -= 1
        if depth == 1:
            return True
    return False


class ResponseObjectUsageReader(JsonBodyUsageReader):
    """A whole response object (a background create's answer, a retrieve's, a cancel's): its
    usage, and the ``id`` and ``background`` flag that make its record."""

    def __init__(self, decoder: ContentDecoder, info: RequestInfo):
        super().__init__(decoder, self._take, "usage", _RESPONSE_OBJECT_STRING_KEYS)
        self._info = info
        self._document: dict[str, Any] = {}

    def _take(self, document: Any) -> Usage | None:
        self._document = document if isinstance(document, dict) else {}
        return usage_from_openai_body(document)

    def _result(self) -> Usage | None:
        usage = super()._result()
        background = self._document.get("background")
        if not isinstance(background, bool):
            # A body read from its tail or cut: the flag is near the start of the object.
            head = self._head if self._body is None else bytes(self._body[:JSON_HEAD_BYTES])
            background = background_in_head(head)
        return background_usage(usage, self._document.get("id"), background, self._info)


class ResponsesStreamUsageReader(SSEUsageReader):
    """Responses API stream: usage in the response object of the final lifecycle event.

    ``response.completed`` repeats the whole output, so with large outputs (generated images)
    it can outgrow the event limit; its usage is then recovered from the event's tail. The
    response's ``id`` and ``background`` flag come from the lifecycle events before it.
    """

    def __init__(self, decoder: ContentDecoder, info: RequestInfo | None = None):
        super().__init__(decoder)
        self._info = info or RequestInfo("responses")
        self._model: str | None = None
        self._service_tier: Any = None
        self._usage: dict[str, Any] | None = None
        self._response_id: Any = None
        self._background = False

    def _on_event(self, event: Event) -> None:
        if event.event is not None and event.event not in _RESPONSE_OBJECT_EVENTS:
            return
        if event.truncated:
            if event.event in _RESPONSE_FINAL_EVENTS:
                fields = recover_fields(b"", event.data, "usage", ("service_tier",))
                self._take_response(fields, final=True)
            return
        document = loads_or_none(event.data)
        if not isinstance(document, dict) or not isinstance(document.get("response"), dict):
            return
        kind = document.get("type", event.event)
        self._take_response(document["response"], final=kind in _RESPONSE_FINAL_EVENTS)

    def _take_response(self, response: dict[str, Any], *, final: bool) -> None:
        self._model = text_or_none(response.get("model")) or self._model
        self._service_tier = response.get("service_tier", self._service_tier)
        if self._response_id is None:
            self._response_id = response.get("id")
            self._background = response.get("background") is True
        if final:
            usage = response.get("usage")
            self._usage = usage if isinstance(usage, dict) else None
            self._complete = True

    def _result(self) -> Usage | None:
        usage = usage_from_openai_usage(
            self._usage, model=self._model, service_tier=self._service_tier
        )
        return background_usage(usage, self._response_id, self._background, self._info)


def is_usage_chunk(event: Event) -> bool:
    """Whether an event is the chat stream's final usage chunk (``choices: []`` with usage)."""
    if event.truncated or not _EMPTY_CHOICES.search(event.data):
        return False
    chunk = loads_or_none(event.data)
    return (
        isinstance(chunk, dict)
        and chunk.get("choices") == []
        and isinstance(chunk.get("usage"), dict)
    )


# The usage chunk is small; an event larger than this is forwarded without being held whole.
FILTER_EVENT_BYTES = 64 * 1024
_CR = 0x0D
_LF = 0x0A


class UsageChunkFilter:
    """Removes the usage chunk Costr asked for from the chat stream going to the client.

    Every other byte passes unchanged and in order. Complete events go out as soon as their
    blank line arrives; only the incomplete trailing event is held, and not even that once it
    outgrows ``FILTER_EVENT_BYTES`` (it cannot be the usage chunk). A content-encoded body is
    decoded, since cutting an event out of a compressed stream would need re-compression:
    ``response_headers`` then drops ``content-encoding``, and always ``content-length``, which
    the removal falsifies. ``feed`` raises ContentDecodingError on a corrupt compressed body;
    the proxy then breaks the client connection as for a broken upstream.

    ``share`` lets the stream's usage reader see the events split here, so that each chunk is
    decoded and split once rather than twice (bench/notes.md: CPU per forwarded chunk).
    """

    def __init__(self, decoder: ContentDecoder):
        self._decoder = decoder
        self._identity = decoder.encoding == "identity"
        self._splitter = SSESplitter(max_event_bytes=FILTER_EVENT_BYTES, tail_bytes=0)
        self._reader: SSEUsageReader | None = None
        self._pending = bytearray()
        self._passing = False
        # After a blank line that ended in CR, the LF of its CRLF may still come: it goes
        # wherever the event it ends went ("drop" or "forward").
        self._lf_fate: str | None = None
        self.headers_to_remove = frozenset(
            {b"content-length"}
            if decoder.encoding == "identity"
            else {b"content-length", b"content-encoding"}
        )

    @property
    def decodes(self) -> bool:
        """Whether the output is decoded (the upstream body was content-encoded)."""
        return b"content-encoding" in self.headers_to_remove

    def share(self, reader: UsageReader) -> bool:
        """Split with ``reader``'s splitter and hand it every event; True when it was taken.

        The reader must then not be fed: its events come from here (at ``finish`` too, and
        ``reader.finish()`` still gives an unterminated last event to it if the stream broke
        off before this filter's ``finish``). Its splitter keeps large events' tails, which
        changes nothing here: a truncated event is never the usage chunk.
        """
        if not isinstance(reader, SSEUsageReader) or reader.encoding != self._decoder.encoding:
            return False
        self._reader = reader
        self._splitter = reader.splitter
        return True

    def response_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Headers:
        """The upstream response headers fit for the filtered body."""
        return [(key, value) for key, value in headers if key.lower() not in self.headers_to_remove]

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send to the client now for this upstream chunk (maybe empty)."""
        if self._identity:
            boundaries = self._splitter.feed_with_offsets(chunk)
            if (
                len(boundaries) == 1
                and boundaries[0][1] == len(chunk)
                and not self._pending
                and self._lf_fate is None
                and len(chunk) <= FILTER_EVENT_BYTES
            ):
                # The common case: the chunk is one whole event and nothing is held before it,
                # so it goes out as it came, or not at all.
                drop = self._drops(boundaries[0][0])
                self._passing = False
                if chunk[-1] == _CR:
                    self._lf_fate = "drop" if drop else "forward"
                return b"" if drop else chunk
            output = bytearray()
            self._filter(chunk, boundaries, output)
            return bytes(output)
        output = bytearray()
        for piece in self._decoder.decode(chunk):
            self._filter(piece, self._splitter.feed_with_offsets(piece), output)
        return bytes(output)

    def finish(self) -> bytes:
        """The bytes still held when the upstream body has ended."""
        output = bytearray()
        for piece in self._decoder.flush():
            self._filter(piece, self._splitter.feed_with_offsets(piece), output)
        leftover = self._splitter.finish()
        if self._reader is not None:
            for event in leftover:
                self._reader.take_event(event)
        if self._passing or not any(is_usage_chunk(event) for event in leftover):
            output += self._pending
        self._pending.clear()
        return bytes(output)

    def _drops(self, event: Event | None) -> bool:
        """Hand the event on to the reader; whether it is the usage chunk to remove."""
        if event is None:
            return False
        if self._reader is not None:
            self._reader.take_event(event)
        return not self._passing and is_usage_chunk(event)

    def _filter(
        self, piece: bytes, boundaries: list[tuple[Event | None, int]], output: bytearray
    ) -> None:
        start = 0
        for event, end in boundaries:
            self._take(piece[start:end], output)
            drop = self._drops(event)
            if not drop:
                output += self._pending
            self._pending.clear()
            self._passing = False
            if piece[end - 1] == _CR:
                self._lf_fate = "drop" if drop else "forward"
            start = end
        self._take(piece[start:], output)

    def _take(self, data: bytes, output: bytearray) -> None:
        if self._lf_fate is not None and data:
            fate, self._lf_fate = self._lf_fate, None
            if data[0] == _LF:
                if fate == "forward":
                    output.append(_LF)
                data = data[1:]
        if self._passing:
            output += data
            return
        self._pending += data
        if len(self._pending) > FILTER_EVENT_BYTES:
            output += self._pending
            self._pending.clear()
            self._passing = True


class OpenAIAdapter(Adapter):
    name = "openai"
    default_upstream = "https://api.openai.com"
    metered_endpoints = frozenset(
        {"chat", "responses", "embeddings", "completions", *AUDIO_ENDPOINTS.values()}
    )

    @sensitive_variables()
    def credential_from(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes
    ) -> str | None:
        return bearer_token(header_value(headers, b"authorization"))

    @sensitive_variables()
    def swap_credential(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes, provider_key: str
    ) -> tuple[Headers, bytes]:
        authorization = b"Bearer " + provider_key.encode("latin-1")
        return with_headers_set(headers, {b"authorization": authorization}), query_string

    def inspect_request(self, method: str, path: str, body_head: bytes | None) -> RequestInfo:
        path = path.strip("/")
        endpoint = _ENDPOINTS.get(path)
        method = method.upper()
        if endpoint is None:
            later = _RESPONSE_PATH.fullmatch(path)
            if later is not None and method == ("POST" if later.group(2) else "GET"):
                return ResponsesRequestInfo("responses", later=True)
            return RequestInfo("other")
        if method != "POST":
            return RequestInfo("other")
        if endpoint in _AUDIO_ENDPOINT_NAMES:
            return inspect_audio_request(endpoint, body_head)
        if endpoint == "responses":
            return _inspect_responses_create(body_head)
        return request_info_from_body(endpoint, body_head)

    def inspect_streamed_request(self, method: str, path: str, prefix: bytes) -> RequestInfo:
        """An audio upload's form fields come before its file (the SDKs send them first), so a
        large upload's model is in its first bytes."""
        endpoint = _ENDPOINTS.get(path.strip("/"))
        if method.upper() == "POST" and endpoint in _MULTIPART_AUDIO_ENDPOINTS:
            return inspect_audio_request(endpoint, prefix)
        return self.inspect_request(method, path, None)

    def error_body(self, status: int, code: str, message: str) -> bytes:
        error = {
            "message": message,
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "param": None,
            "code": code,
        }
        return json.dumps({"error": error}).encode()

    def prepare_request_body(
        self, info: RequestInfo, body: bytes, inject: bool
    ) -> tuple[bytes, bool]:
        """Set ``stream_options.include_usage`` on a streaming chat request that lacks it.

        Any other body, or one that does not parse as a JSON object, is returned as the same
        bytes. When the body changed, the caller must send the new ``content-length``.
        """
        if not inject or info.endpoint != "chat" or not info.stream:
            return body, False
        document = loads_or_none(body)
        if not isinstance(document, dict) or document.get("stream") is not True:
            return body, False
        options = document.get("stream_options")
        if options is None:
            options = {}
        if not isinstance(options, dict) or options.get("include_usage") is True:
            return body, False
        document["stream_options"] = {**options, "include_usage": True}
        try:
            text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
            return text.encode(), True
        except UnicodeEncodeError:  # a lone surrogate escape in the body: keep it escaped
            return json.dumps(document, separators=(",", ":")).encode(), True

    def client_stream_filter(
        self, info: RequestInfo, status: int, content_type: str | None, content_encoding: str | None
    ) -> UsageChunkFilter | None:
        """The filter hiding the injected usage chunk; call only when the body was changed.

        None (forward as is) for anything but a successful chat event stream. The proxy
        forwards an injected request with an ``Accept-Encoding`` that admits only codings Costr
        decodes (``costr.net.decoding.decodable_accept_encoding``), so an upstream that keeps to
        HTTP never answers one it cannot. One that answers another coding anyway gets None
        here too: its bytes go on unchanged (the usage chunk with them, valid OpenAI output)
        rather than as a broken stream.
        """
        if info.endpoint != "chat" or not 200 <= status < 300 or not is_event_stream(content_type):
            return None
        decoder = content_decoder(content_encoding)
        return UsageChunkFilter(decoder) if decoder is not None else None

    def _stream_reader(self, info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
        if info.endpoint == "responses":
            return ResponsesStreamUsageReader(decoder, info)
        if info.endpoint in _AUDIO_ENDPOINT_NAMES:
            return audio_stream_reader(info, decoder)
        return ChatStreamUsageReader(decoder)

    def _body_reader(self, info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
        if isinstance(info, ResponsesRequestInfo):
            return ResponseObjectUsageReader(decoder, info)
        if info.endpoint in _AUDIO_ENDPOINT_NAMES:
            return audio_body_reader(info, decoder)
        return JsonBodyUsageReader(decoder, usage_from_openai_body, "usage", _RESPONSE_STRING_KEYS)


_AUDIO_ENDPOINT_NAMES = frozenset(AUDIO_ENDPOINTS.values())
# The audio uploads: multipart forms whose fields come before the file.
_MULTIPART_AUDIO_ENDPOINTS = frozenset({"transcriptions", "translations"})


def _inspect_responses_create(body_head: bytes | None) -> RequestInfo:
    """Model, stream flag and ``background`` of a Responses API create (one parse)."""
    document = loads_or_none(body_head) if body_head else None
    if not isinstance(document, dict):
        return RequestInfo("responses")
    model, stream = text_or_none(document.get("model")), document.get("stream") is True
    if document.get("background") is True:
        return ResponsesRequestInfo("responses", model, stream, document, background=True)
    return RequestInfo("responses", model, stream, document)


adapter = OpenAIAdapter()
