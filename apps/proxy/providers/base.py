"""The adapter interface every provider implements, and what the adapters share: request
metadata, header and query helpers, the usage readers that watch response bodies (decoding them
with ``costr.net.decoding``, reading large JSON bodies' usage with ``recovery``) and the client
stream filter's protocol. The normalised usage itself (``Usage``) is
``apps.usage.metering.provider_usage``'s.

Everything here runs on the proxy's hot path, so it works on the bytes already passing, in
O(chunk) time and bounded memory, and it never raises into the proxy: a body Costr cannot read
costs the event its token counts, never the client its response.
"""

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from django.views.decorators.debug import sensitive_variables

from apps.proxy.providers.recovery import (
    JSON_HEAD_BYTES,
    recover_fields,
    usage_document_from_tail,
)
from apps.proxy.sse import TAIL_BYTES, Event, SSESplitter
from apps.usage.metering import contract

# The normalised usage is defined once for the proxy and the batch poller (``provider_usage``).
from apps.usage.metering.provider_usage import Usage, text_or_none
from costr.net.decoding import ContentDecoder, content_decoder

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

# The values RequestInfo.endpoint takes, as the usage event records them.
ENDPOINTS = frozenset(contract.ENDPOINTS)

# A non-stream body up to this size is kept and parsed whole; past it only a head
# (``recovery.JSON_HEAD_BYTES``) and a tail (``sse.TAIL_BYTES``) are.
JSON_BODY_CAP = 256 * 1024
# From this size a kept body is first read from its end (``usage_document_from_tail``): parsing
# a whole embeddings body costs ~15 ms of CPU per MB, its tail a small fraction of that.
JSON_TAIL_FIRST_BYTES = 16 * 1024


@dataclass(slots=True, frozen=True)
class RequestInfo:
    """What the proxy learns from a request before forwarding it."""

    endpoint: str
    requested_model: str | None = None
    stream: bool = False
    # The JSON body as the adapter parsed it, when it did (for a budget's estimate, which reads
    # its output cap: the body is not parsed twice). Never stored.
    document: dict | None = field(default=None, compare=False, repr=False)

    @property
    def starts_work(self) -> bool:
        """Whether the request can start billable work at the provider, so that budgets hold
        it back (a read or a cancel of work already admitted does not)."""
        return True


# ---------------------------------------------------------------------------------------------
# Small helpers over JSON values, headers and query strings


def loads_or_none(data: bytes | bytearray | str) -> Any:
    """``json.loads`` that answers None for anything that is not JSON, however broken."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def request_info_from_body(endpoint: str, body_head: bytes | None) -> RequestInfo:
    """``endpoint``'s request with ``model`` and ``stream`` from its JSON body (and the body as
    parsed); none of them when the body is unreadable."""
    document = loads_or_none(body_head) if body_head else None
    if not isinstance(document, dict):
        return RequestInfo(endpoint)
    model, stream = text_or_none(document.get("model")), document.get("stream") is True
    return RequestInfo(endpoint, model, stream, document)


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a header, its name matched case-insensitively."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


@sensitive_variables()
def bearer_token(value: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None for any other scheme."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token.decode("latin-1")


@sensitive_variables()
def with_headers_set(headers: Iterable[tuple[bytes, bytes]], values: dict[bytes, bytes]) -> Headers:
    """``headers`` with each named header (lowercase name) set to its new value.

    The new value takes the place of the header's first occurrence, so header order is kept;
    repeated occurrences are dropped, and a header that was absent is appended.
    """
    result: Headers = []
    placed: set[bytes] = set()
    for key, value in headers:
        lowered = key.lower()
        if lowered not in values:
            result.append((key, value))
        elif lowered not in placed:
            result.append((key, values[lowered]))
            placed.add(lowered)
    result.extend((key, value) for key, value in values.items() if key not in placed)
    return result


@sensitive_variables()
def query_param(query_string: bytes, name: bytes) -> str | None:
    """The percent-decoded value of the first ``name=`` parameter of a query string."""
    for part in query_string.split(b"&"):
        key, separator, value = part.partition(b"=")
        if key == name and separator:
            return unquote(value.decode("latin-1"))
    return None


@sensitive_variables()
def query_with_param_replaced(query_string: bytes, name: bytes, value: str) -> bytes:
    """The query string with every ``name=`` value replaced in place, all else byte for byte."""
    replacement = name + b"=" + quote(value, safe="").encode("ascii")
    return b"&".join(
        replacement if part.partition(b"=")[0] == name else part
        for part in query_string.split(b"&")
    )


def is_event_stream(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "text/event-stream"


# ---------------------------------------------------------------------------------------------
# Usage readers


class UsageReader:
    """Watches a copy of one response body for usage.

    ``feed`` takes the body bytes exactly as they came from the upstream (still content-encoded)
    and never raises: any internal error turns the reader into "usage unknown" and stops its
    work. ``finish`` gives the result once the body has ended (or was cut short): None when
    nothing was learned, a Usage with its token fields None when only the model is known.
    ``complete`` turns True as soon as reading further bytes cannot change the result, which
    lets the proxy stop reading the upstream early after the client went away.

    A compressed body is decoded within the decoder's bounds (``costr.net.decoding``): past
    them the reader gives up like for any unreadable body, and the proxy forwards the rest as
    it came.
    """

    def __init__(self, decoder: ContentDecoder | None = None):
        self._decoder = decoder or ContentDecoder("identity")
        self._identity = self._decoder.encoding == "identity"
        self._complete = False
        self._failed = False

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def decoded_bytes(self) -> int:
        """Bytes this reader's decoder has produced (0 for an uncompressed body)."""
        return self._decoder.decoded_bytes

    def feed(self, chunk: bytes) -> None:
        if self._complete or self._failed:
            return
        try:
            if self._identity:
                if chunk:
                    self._consume(chunk)
                return
            for piece in self._decoder.decode(chunk):
                self._consume(piece)
                if self._complete:
                    return
        except Exception as error:
            self._fail(error)

    def finish(self) -> Usage | None:
        if self._failed:
            return None
        try:
            if not self._complete:
                for piece in self._decoder.flush():
                    self._consume(piece)
                self._end()
            return self._result()
        except Exception as error:
            self._fail(error)
            return None

    def _fail(self, error: Exception) -> None:
        # The type only: a message could quote body content, which is never logged.
        logger.warning("usage reader gave up: %s", type(error).__name__)
        self._failed = True
        self._complete = True

    def _consume(self, piece: bytes) -> None:
        """Take one piece of the decoded body."""

    def _end(self) -> None:
        """The body has ended."""

    def _result(self) -> Usage | None:
        return None


class NoUsageReader(UsageReader):
    """For responses that carry no billable usage: error statuses, unmetered endpoints, bodies
    in a coding Costr cannot decode. It is complete from the start, as nothing is awaited."""

    def __init__(self) -> None:
        super().__init__()
        self._complete = True


class JsonBodyUsageReader(UsageReader):
    """Usage from a whole (non-streamed) JSON body.

    A body up to ``JSON_BODY_CAP`` is kept and parsed whole. A larger one (embeddings can run to
    megabytes) keeps only its head and a bounded tail, and the fields usage needs are recovered
    from those with ``recovery.recover_fields``.
    """

    def __init__(
        self,
        decoder: ContentDecoder,
        extract: Callable[[Any], Usage | None],
        object_key: str,
        string_keys: tuple[str, ...],
    ):
        super().__init__(decoder)
        self._extract = extract
        self._object_key = object_key
        self._string_keys = string_keys
        self._body: bytearray | None = bytearray()
        self._head = b""
        self._tail = bytearray()

    def _consume(self, piece: bytes) -> None:
        if self._body is not None:
            self._body += piece
            if len(self._body) > JSON_BODY_CAP:
                self._head = bytes(self._body[:JSON_HEAD_BYTES])
                self._tail = self._body[-TAIL_BYTES:]
                self._body = None
            return
        self._tail += piece
        if len(self._tail) > 2 * TAIL_BYTES:
            del self._tail[: len(self._tail) - TAIL_BYTES]

    def _result(self) -> Usage | None:
        if self._body is not None:
            document = None
            if len(self._body) >= JSON_TAIL_FIRST_BYTES:
                document = usage_document_from_tail(
                    bytes(self._body), self._object_key, self._string_keys
                )
            if document is None:
                document = loads_or_none(self._body) if self._body else None
        else:
            tail = bytes(self._tail[-TAIL_BYTES:])
            document = recover_fields(self._head, tail, self._object_key, self._string_keys)
        return self._extract(document)


class SSEUsageReader(UsageReader):
    """Usage from an event stream: subclasses look at each event in ``_on_event``.

    A filter that already splits the same stream (``UsageChunkFilter``) can share its work:
    it splits with ``splitter`` and hands each event to ``take_event``, and the reader is then
    not fed at all, so each chunk is decoded and split once.
    """

    def __init__(self, decoder: ContentDecoder):
        super().__init__(decoder)
        self._splitter = SSESplitter()

    @property
    def splitter(self) -> SSESplitter:
        return self._splitter

    @property
    def encoding(self) -> str:
        return self._decoder.encoding

    def take_event(self, event: Event) -> None:
        """One event split by whoever shares this reader's splitter; never raises."""
        if self._complete or self._failed:
            return
        try:
            self._on_event(event)
        except Exception as error:
            self._fail(error)

    def _consume(self, piece: bytes) -> None:
        for event in self._splitter.feed(piece):
            self._on_event(event)
            if self._complete:
                return

    def _end(self) -> None:
        for event in self._splitter.finish():
            self._on_event(event)

    def _on_event(self, event: Event) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# The adapter interface


@runtime_checkable
class StreamFilter(Protocol):
    """Rewrites the response bytes going to the client (see ``Adapter.client_stream_filter``).

    The proxy calls ``share`` once, before any bytes, with the response's usage reader;
    ``response_headers`` then gives the headers fit for the filtered body, ``feed`` the bytes to
    send now for each upstream chunk (as received), and ``finish`` those still held at the end.
    """

    def share(self, reader: UsageReader) -> bool:
        """Whether this filter feeds ``reader`` itself, from its own splitting of the stream.

        True: the caller must not feed the reader any chunk (it would see each event twice);
        whatever reaches this filter's ``feed`` and ``finish`` reaches the reader, so a caller
        that still wants the usage after the client left keeps calling ``feed`` and drops its
        output. False: the filter leaves the reader alone, and the caller feeds it every
        upstream chunk as usual.
        """
        ...

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def response_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Headers: ...


class Adapter:
    """One provider's wire facts, as the proxy view needs them. One instance per provider.

    The view calls, in order: ``credential_from`` (the client's Costr token),
    ``swap_credential`` (the provider key in its place), ``inspect_request``,
    ``prepare_request_body`` (the one body change, OpenAI only), then per response
    ``usage_reader`` (fed every upstream chunk as received) and, only when the body was
    changed, ``client_stream_filter``; ``error_body`` shapes Costr's own errors.
    """

    name: str = ""
    default_upstream: str = ""
    # Endpoints whose successful responses carry billable usage.
    metered_endpoints: frozenset[str] = frozenset()

    def credential_from(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes
    ) -> str | None:
        """The credential the client sent where its SDK puts the API key, or None."""
        raise NotImplementedError

    def swap_credential(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes, provider_key: str
    ) -> tuple[Headers, bytes]:
        """Headers and query string with the provider key wherever the client's credential was."""
        raise NotImplementedError

    def inspect_request(self, method: str, path: str, body_head: bytes | None) -> RequestInfo:
        """Endpoint, requested model and stream flag.

        ``path`` is what follows ``/p/<org>/<provider>/``; ``body_head`` is the request body
        when it is JSON and small enough to parse, else None. Never raises.
        """
        raise NotImplementedError

    def inspect_streamed_request(self, method: str, path: str, prefix: bytes) -> RequestInfo:
        """``inspect_request`` for a body too large to read whole: ``prefix`` is its first bytes
        (never valid JSON then). By default the path alone decides. Never raises."""
        return self.inspect_request(method, path, None)

    def error_body(self, status: int, code: str, message: str) -> bytes:
        """A Costr error in the provider's own error shape, so the SDK raises its usual error."""
        raise NotImplementedError

    def prepare_request_body(
        self, info: RequestInfo, body: bytes, inject: bool
    ) -> tuple[bytes, bool]:
        """The request body to forward and whether Costr changed it (only OpenAI ever does)."""
        return body, False

    def client_stream_filter(
        self, info: RequestInfo, status: int, content_type: str | None, content_encoding: str | None
    ) -> StreamFilter | None:
        """A filter for the response bytes going to the client, or None to forward them as is."""
        return None

    def usage_reader(
        self, info: RequestInfo, status: int, content_type: str | None, content_encoding: str | None
    ) -> UsageReader:
        """A reader to feed every upstream response chunk to (the bytes as received)."""
        if not 200 <= status < 300 or info.endpoint not in self.metered_endpoints:
            return NoUsageReader()
        decoder = content_decoder(content_encoding)
        if decoder is None:
            return NoUsageReader()
        if is_event_stream(content_type):
            return self._stream_reader(info, decoder)
        return self._body_reader(info, decoder)

    def _stream_reader(self, info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
        raise NotImplementedError

    def _body_reader(self, info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
        raise NotImplementedError
