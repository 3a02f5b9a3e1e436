"""The proxy: a plain ASGI application for ``/p/<org_slug>/<provider>/<path>``.

It runs in front of Django (see ``costr/asgi.py``) so no middleware touches proxied traffic and
the hot path costs what it must and no more. In steady state a request makes no database query:
the token resolves through ``keys.keycache``, the provider key is decrypted in memory, bodies
stream through chunk by chunk while the provider adapter reads usage from a copy, and one usage
record goes to ``usage.sink`` after the last byte has reached the client.
"""

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from apps.budgets import guard
from apps.keys import keycache
from apps.proxy.admission import (
    authorize,
    check_path,
    count_refusal,
    provider_key_or_refuse,
    reserve_budget,
)
from apps.proxy.batches import BatchCall, batch_call
from apps.proxy.limits import (
    HOP_BY_HOP,
    MAX_HEAD_BYTES,
    PROXY_PATH_PREFIX,
    SERVER_HEADERS_SCOPE_KEY,
    Attribution,
    ReadDeadlines,
    ReadTimedOut,
    Refusal,
    check_method,
    clean_request_info,
    clean_usage,
    connection_tokens,
    head_size,
    response_headers_to_relay,
)
from apps.proxy.providers import Adapter, RequestInfo, Usage, get_adapter
from apps.proxy.providers.base import header_value, is_event_stream, with_headers_set
from apps.proxy.upstream import get_client
from apps.usage.metering import sink
from apps.usage.metering.contract import UsageRecord
from apps.usage.metering.provider_usage import token_counts
from costr.net.decoding import decodable_accept_encoding
from costr.net.http1 import Origin
from costr.net.http1_connection import Response, UpstreamError, UpstreamTimeout

logger = logging.getLogger("costr.proxy")

PREFIX = PROXY_PATH_PREFIX

# The ASGI callables, as the proxy uses them.
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class UpstreamBroken(Exception):
    """Raised after a partial response so the server breaks the client's connection too."""


class ClientGone(Exception):
    """The client left before its request was complete: nothing is forwarded or recorded."""


class UpstreamFailed(Exception):
    """The upstream could not be reached, or gave no body byte in time: answered 502/504."""

    def __init__(self, status: int, code: str, error: Exception):
        super().__init__(repr(error))
        self.status, self.code, self.error = status, code, error


def upstream_failure(error: UpstreamError, *, answered: bool) -> UpstreamFailed:
    """How an upstream failure before the first body byte is answered: 504 when the upstream
    went quiet, 502 when it could not be reached (or, ``answered``, broke off after its
    headers)."""
    if isinstance(error, UpstreamTimeout):
        return UpstreamFailed(504, "upstream_timeout", error)
    return UpstreamFailed(
        502, "upstream_disconnected" if answered else "upstream_unreachable", error
    )


def _upstream_origin(provider: str) -> Origin:
    return _parsed_origin(getattr(settings, f"COSTR_UPSTREAM_{provider.upper()}"))


@functools.lru_cache(maxsize=16)
def _parsed_origin(url: str) -> Origin:
    """Scheme, host, port and the path prefix the setting's URL may carry."""
    return Origin.parse(url)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# Of a body too large to read whole, this much of its start is kept for the adapter to inspect.
PREFIX_BYTES = 64 * 1024


@dataclasses.dataclass(slots=True)
class RequestBody:
    """The client's request body, as ``_read_body`` takes it in.

    ``content`` is what goes to the upstream: the whole body, or, when it is larger than can be
    inspected, an iterator that yields it as the client sends it. ``head`` is the whole body
    when it was small enough to inspect, else None; then ``prefix`` holds its first bytes (up to
    ``PREFIX_BYTES``), enough for a form's fields before its file. ``complete`` turns True once
    the last chunk
    has been read from the client: at once for a body read whole, and for a streamed one when
    the iterator has yielded its last chunk (after that, ``receive()`` can only report the
    client leaving).
    """

    content: bytes | AsyncIterator[bytes]
    head: bytes | None
    complete: bool
    prefix: bytes = b""


class ProxiedRequest:
    """Everything one proxied request learns on its way through, for its usage record."""

    def __init__(
        self,
        scope,
        adapter: Adapter,
        provider: str,
        org_slug: str,
        raw_rest: bytes,
        started: float,
    ):
        self.scope = scope
        self.adapter = adapter
        self.provider = provider
        self.org_slug = org_slug
        self.raw_rest = raw_rest  # the path after /p/<org>/<provider>/, exactly as received
        self.rest = raw_rest.decode("latin-1")
        self.request_id = f"req_{uuid.uuid4().hex}"
        self.started = started
        self.timestamp = datetime.now(UTC)
        self.info = RequestInfo(endpoint="other")
        self.attribution = Attribution()
        self.resolved: keycache.ResolvedToken | None = None
        self.status: int | None = None
        self.outcome = "ok"
        self.overhead = 0.0
        self.first_byte: float | None = None
        self.forwarded = False  # the upstream request has left: an event is owed
        self.recorded = False
        self.response_started = False
        self.batch: BatchCall | None = None  # a call on a batch API (apps/proxy/batches.py)
        # What the request holds on its organization's budgets until its record is made.
        self.reservation: guard.Reservation | None = None

    def final_outcome(self) -> str:
        """The outcome recorded, by precedence: ``costr_error`` (Costr failed, whatever the
        provider said); ``upstream_error`` for a provider answer with status >= 400 (the ingest
        API maps such statuses the same way), even when its body was then cut or the client
        left, since the request failed at the provider either way; then what happened to the
        transfer (``upstream_disconnected``, ``client_disconnected``); else ``ok``."""
        outcome = self.outcome
        if outcome != "costr_error" and self.status is not None and self.status >= 400:
            return "upstream_error"
        return outcome

    def emit(self, usage: Usage | None) -> None:
        """Hand this request's one usage record to the sink (a second call does nothing).

        The provider's strings enter the record here, so they are cleaned here."""
        if self.recorded:
            return
        self.recorded = True
        record = self.record(clean_usage(usage))
        if self.reservation is not None:
            guard.settle(self.reservation, record)
        sink.emit(record)

    def record(self, usage: Usage | None) -> UsageRecord:
        resolved = self.resolved
        finished = time.perf_counter()
        record: UsageRecord = {
            "request_id": self.request_id,
            "organization_id": resolved.organization_id,
            "token_id": resolved.token_id,
            "timestamp": self.timestamp.isoformat(),
            "provider": self.provider,
            "endpoint": self.info.endpoint,
            "model": (usage.model if usage and usage.model else None)
            or self.info.requested_model
            or "",
            "requested_model": self.info.requested_model or "",
            "customer": self.attribution.customer,
            "properties": self.attribution.properties,
            "status": self.status,
            "stream": self.info.stream,
            "outcome": self.final_outcome(),
            **token_counts(usage),
            "service_tier": (usage.service_tier if usage else None) or "",
            "raw_usage": usage.raw if usage else None,
            # Rounded up, so that latency is never below overhead or ttfb in whole milliseconds.
            "latency_ms": math.ceil((finished - self.started) * 1000),
            "ttfb_ms": round((self.first_byte - self.started) * 1000)
            if self.first_byte is not None
            else None,
            "overhead_ms": _ms(self.overhead),
        }
        if self.batch is not None and (created := self.batch.hand_over()) is not None:
            record["batch"] = created
        # What an adapter's usage adds beyond the token counts: usage_details (audio), and for
        # a background response its derived request id, billable flag and attribution_from.
        record_fields = getattr(usage, "record_fields", None)
        if record_fields is not None:
            record.update(record_fields(resolved.organization_id))
        return record


@sensitive_variables("scope")
async def proxy_app(scope, receive: Receive, send: Send) -> None:
    """ASGI entry for every path under ``/p/``.

    ``scope`` holds the client's Costr token (and, for Gemini, maybe in the query string), so no
    error report may show it; neither may one show ``_proxy``'s headers.
    """
    started = time.perf_counter()
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    parts = raw_path[len(PREFIX) :].split(b"/", 2)
    provider = parts[1].decode("latin-1") if len(parts) > 1 else ""
    adapter = get_adapter(provider)
    if adapter is None or not parts[0]:
        await _send_plain_error(
            scope, send, started, 404, "unknown_provider", "Use /p/<org>/<provider>/…"
        )
        return
    org_slug = parts[0].decode("latin-1")
    raw_rest = parts[2] if len(parts) > 2 else b""
    request = ProxiedRequest(scope, adapter, provider, org_slug, raw_rest, started)
    try:
        await _proxy(request, receive, send)
    except ClientGone:
        return
    except Refusal as refusal:
        count_refusal(request, refusal)
        await _send_error(
            send, request, refusal.status, refusal.code, refusal.message, refusal.headers
        )
    except UpstreamFailed as failure:
        await _upstream_failed(request, send, failure)
    except UpstreamBroken:
        raise
    except Exception:
        # Costr's own failure. Before the response has started it is answered and marked, so
        # the client can fall back to the provider; after, only a broken connection is honest.
        logger.exception("proxy failed on %s", request.request_id)
        if request.forwarded:
            request.outcome = "costr_error"
            request.emit(None)
        if request.response_started:
            raise
        await _send_error(
            send, request, 500, "costr_error", "Costr failed on this request; call the provider."
        )
    finally:
        if request.reservation is not None and not request.recorded:
            guard.release(request.reservation)


@sensitive_variables(
    "scope", "headers", "provider_key", "forward_headers", "query", "target", "upstream_request"
)
async def _proxy(request: ProxiedRequest, receive: Receive, send: Send) -> None:
    scope, adapter = request.scope, request.adapter
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    query: bytes = scope.get("query_string", b"")
    if head_size(scope) > MAX_HEAD_BYTES:
        raise Refusal(
            431, "head_too_large", f"Request heads are limited to {MAX_HEAD_BYTES} bytes."
        )

    request.resolved = await authorize(request, headers, query)
    # Checked once the token is known, so that these refusals count for the organization.
    check_method(scope["method"])
    check_path(request.raw_rest)
    forward_headers = _request_headers(request, headers)
    provider_key = provider_key_or_refuse(request.resolved, request.provider)
    forward_headers, query = adapter.swap_credential(forward_headers, query, provider_key)
    del provider_key
    keycache.record_use(request.resolved, request.provider)

    body = await _read_body(request, headers, receive)
    content = body.content
    request.info = clean_request_info(
        adapter.inspect_request(scope["method"], request.rest, body.head)
        if body.head is not None
        else adapter.inspect_streamed_request(scope["method"], request.rest, body.prefix)
    )
    if request.info.endpoint == "other":
        request.batch = _batch_call(request, headers)
        if request.batch is not None and request.batch.rewrite_base is not None:
            # The results_url rewrite reads these small JSON answers: asked for uncompressed.
            forward_headers = with_headers_set(forward_headers, {b"accept-encoding": b"identity"})
    if body.head is not None:
        inject = request.resolved.inject_openai_stream_usage
        new_body, injected = adapter.prepare_request_body(request.info, body.head, inject)
        if injected:
            # The upstream client sends the new body's content-length in place of the client's.
            content = new_body
            # The usage chunk Costr asked for must be cut out of the answer, which means
            # decoding it: the upstream may answer only in a coding Costr can decode.
            forward_headers = with_headers_set(
                forward_headers,
                {
                    b"accept-encoding": decodable_accept_encoding(
                        header_value(forward_headers, b"accept-encoding")
                    )
                },
            )
    else:
        # A body too large to read whole was not inspected and is never rewritten.
        injected = False

    if request.resolved.budgets is not None and request.info.starts_work:
        size = (
            len(body.head)
            if body.head is not None
            else _content_length(headers) or settings.COSTR_PROXY_MAX_BODY_BYTES
        )
        request.reservation = await reserve_budget(request, body.head, size)

    # The path and query go out exactly as received, never normalised or re-quoted.
    origin = _upstream_origin(request.provider)
    target = origin.path_prefix + b"/" + request.raw_rest + (b"?" + query if query else b"")
    sent_at = time.perf_counter()
    request.overhead = sent_at - request.started
    request.forwarded = True
    try:
        response = await get_client().request(
            scope["method"],
            origin,
            target,
            forward_headers,
            content,
            connect_timeout=settings.COSTR_UPSTREAM_CONNECT_TIMEOUT,
            read_timeout=settings.COSTR_UPSTREAM_READ_TIMEOUT,
        )
    except UpstreamError as error:
        raise upstream_failure(error, answered=False) from error
    headers_at = time.perf_counter()
    try:
        await _relay(
            request,
            response,
            headers_at=headers_at,
            injected=injected,
            body=body,
            receive=receive,
            send=send,
        )
    finally:
        response.close()


def _batch_call(request: ProxiedRequest, headers) -> BatchCall | None:
    key = request.resolved.provider_keys.get(request.provider)
    return batch_call(
        request.provider,
        request.scope["method"],
        request.rest,
        headers,
        request.scope,
        request.org_slug,
        key.secret_id if key is not None else None,
    )


def _request_headers(request: ProxiedRequest, headers) -> list[tuple[bytes, bytes]]:
    """Headers to forward: all but hop-by-hop ones (the fixed list and those the client's
    ``Connection:`` names), Host and Costr's own, which are read here. One pass; a second one
    only when a ``Connection:`` header names others."""
    forwarded = []
    named: set[bytes] | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered.startswith(b"x-costr-"):
            request.attribution.read(lowered, value)
        elif lowered in HOP_BY_HOP:
            if lowered == b"connection":
                named = (
                    connection_tokens(value) if named is None else named | connection_tokens(value)
                )
        elif lowered != b"host":
            forwarded.append((name, value))
    if named:
        forwarded = [(name, value) for name, value in forwarded if name.lower() not in named]
    return forwarded


async def _read_body(request: ProxiedRequest, headers, receive: Receive) -> RequestBody:
    """The request body, to forward and, when small enough, to inspect (``RequestBody``).

    A body up to ``COSTR_PROXY_INSPECT_BYTES`` is read whole; a larger one streams to the
    upstream as it arrives. Past ``COSTR_PROXY_MAX_BODY_BYTES`` the request is refused.
    """
    limit = settings.COSTR_PROXY_MAX_BODY_BYTES
    declared = _content_length(headers)
    if declared is not None and declared > limit:
        raise Refusal(413, "body_too_large", f"Request bodies are limited to {limit} bytes.")
    inspect_limit = settings.COSTR_PROXY_INSPECT_BYTES
    deadlines, timeout = _body_deadlines(), settings.COSTR_PROXY_BODY_READ_TIMEOUT
    parts: list[bytes] = []
    size = 0
    more = True
    while more and size <= inspect_limit:
        message = await _receive_body(receive, deadlines, timeout)
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            raise Refusal(413, "body_too_large", f"Request bodies are limited to {limit} bytes.")
    if not more:
        whole = b"".join(parts)
        return RequestBody(content=whole, head=whole, complete=True)

    async def rest_of_body(body: RequestBody) -> AsyncIterator[bytes]:
        # Raised here, these reach the proxy through the upstream client unchanged: the
        # half-sent upstream request is abandoned (its connection closed), never completed.
        total = size
        for part in parts:
            yield part
        while True:
            message = await _receive_body(receive, deadlines, timeout)
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise Refusal(
                    413, "body_too_large", f"Request bodies are limited to {limit} bytes."
                )
            yield chunk
            if not message.get("more_body", False):
                body.complete = True
                return

    body = RequestBody(content=b"", head=None, complete=False, prefix=_prefix(parts))
    body.content = rest_of_body(body)
    return body


def _prefix(parts: list[bytes]) -> bytes:
    """The first ``PREFIX_BYTES`` of a body read in ``parts``, copying no more than that."""
    taken, size = [], 0
    for part in parts:
        taken.append(part[: PREFIX_BYTES - size])
        size += len(taken[-1])
        if size >= PREFIX_BYTES:
            break
    return b"".join(taken)


async def _receive_body(receive, deadlines: ReadDeadlines, timeout: float):
    """The next message of the request body, or 408 when the client takes longer than
    ``COSTR_PROXY_BODY_READ_TIMEOUT`` (``timeout``) to send it: a slow client cannot hold a
    worker's connection (and a half-sent upstream request) open for ever."""
    try:
        return await deadlines.wait(receive(), timeout)
    except ReadTimedOut:
        raise Refusal(
            408, "body_read_timeout", f"The request body did not arrive within {timeout:g} s."
        ) from None


def _body_deadlines() -> ReadDeadlines:
    """The body reads' deadlines of the running loop (made once per loop)."""
    global _read_deadlines
    deadlines = _read_deadlines
    loop = asyncio.get_running_loop()
    if deadlines is None or deadlines.loop is not loop:
        deadlines = _read_deadlines = ReadDeadlines(loop)
    return deadlines


# The body reads' deadlines, for the loop this process serves on (a worker has one).
_read_deadlines: ReadDeadlines | None = None


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _relay(
    request: ProxiedRequest,
    response: Response,
    *,
    headers_at: float,
    injected: bool,
    body: RequestBody,
    receive: Receive,
    send: Send,
) -> None:
    """Send the upstream's response on to the client while its usage reader reads a copy, then
    hand the request's usage record to the sink.

    ``headers_at`` is when the response head arrived: the time spent from there on the client's
    headers counts as Costr's overhead. ``injected`` says whether the request body was changed
    (OpenAI's usage chunk), which calls for the adapter's client stream filter. ``body`` tells
    when the client may be watched for leaving: once its request body is complete.
    """
    adapter = request.adapter
    status = response.status
    request.status = status
    content_type = _latin1(response.header(b"content-type"))
    content_encoding = _latin1(response.header(b"content-encoding"))
    if not request.info.stream and is_event_stream(content_type):
        # A request too large to read said nothing of streaming, nor does a retrieve's query
        # (``?stream=true``) or a transcription's form: the response says it. (The usage reader
        # already goes by the response's content type, and its model by the response's.)
        request.info = dataclasses.replace(request.info, stream=True)
    reader = adapter.usage_reader(request.info, status, content_type, content_encoding)
    stream_filter = (
        adapter.client_stream_filter(request.info, status, content_type, content_encoding)
        if injected
        else None
    )
    if request.batch is not None:
        reader = request.batch.usage_reader(status, content_encoding) or reader
        stream_filter = request.batch.client_filter(status, content_encoding)
    # With a filter, the reader is fed through it when it can be: one split per chunk.
    feed_reader = not (stream_filter is not None and stream_filter.share(reader))
    out_headers = response_headers_to_relay(response.headers)
    if stream_filter is not None:
        out_headers = stream_filter.response_headers(out_headers)
    request.overhead += time.perf_counter() - headers_at
    out_headers.append((b"x-costr-request-id", request.request_id.encode()))
    out_headers.append((b"x-costr-overhead-ms", f"{_ms(request.overhead):.3f}".encode()))

    # The headers wait for the first body byte (which then goes with them, at once): an upstream
    # that stalls or breaks before sending any body is still answered 504/502 in the provider's
    # shape, rather than with a 200 whose body never comes.
    try:
        first = await response.read()
    except UpstreamError as error:
        raise upstream_failure(error, answered=True) from error
    request.first_byte = time.perf_counter()
    request.response_started = True
    await send({"type": "http.response.start", "status": status, "headers": out_headers})

    # Once the request body is in, the only thing receive() can still report is the client
    # leaving. It is watched only while the upstream still has more to send: a response that
    # arrived whole (most non-streamed ones) needs no watcher.
    body_complete = body.complete
    disconnected = None
    client_gone = False
    try:
        chunk = first
        while chunk:
            if feed_reader:
                reader.feed(chunk)
            out = stream_filter.feed(chunk) if stream_filter is not None else chunk
            if out:
                try:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                except OSError:
                    client_gone = True
            if disconnected is None:
                if body_complete and not response.complete:
                    disconnected = asyncio.ensure_future(receive())
            elif disconnected.done():
                client_gone = True
            if client_gone:
                request.outcome = "client_disconnected"
                if not reader.complete:
                    await _drain_for_usage(
                        response, reader, reader.feed if feed_reader else stream_filter.feed
                    )
                break
            chunk = await response.read()
        if not client_gone:
            tail = stream_filter.finish() if stream_filter is not None else b""
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": tail, "more_body": False})
    except Exception as error:
        # The body is cut short: the client's connection must break too (never a clean end
        # that hides the truncation), and the event records what usage was seen.
        broken_upstream = isinstance(error, UpstreamError)
        request.outcome = "upstream_disconnected" if broken_upstream else "costr_error"
        if not broken_upstream:
            logger.exception("proxy failed mid-response on %s", request.request_id)
        request.emit(reader.finish())
        raise UpstreamBroken(f"response cut short: {error!r}") from error
    finally:
        if disconnected is not None and not disconnected.done():
            disconnected.cancel()
    request.emit(reader.finish())


def _latin1(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


async def _drain_for_usage(response, reader, feed) -> None:
    """Keep reading a response nobody is listening to, until its usage arrives (bounded).

    ``feed`` is how the reader sees the bytes: ``reader.feed``, or the filter that shares its
    splitter (whose output is dropped)."""
    try:
        async with asyncio.timeout(settings.COSTR_PROXY_DRAIN_SECONDS):
            while chunk := await response.read():
                feed(chunk)
                if reader.complete:
                    return
    except (TimeoutError, UpstreamError):
        return
    except Exception:
        # A corrupt compressed body breaks the filter: the usage seen so far is what there is.
        logger.warning("draining %s for usage failed", type(reader).__name__)


async def _upstream_failed(request: ProxiedRequest, send: Send, failure: UpstreamFailed) -> None:
    logger.warning("upstream %s failed: %r", request.provider, failure.error)
    request.status = failure.status
    request.outcome = "upstream_error"
    message = (
        f"{request.provider} did not answer in time."
        if failure.status == 504
        else f"Costr could not get an answer from {request.provider}."
    )
    await _send_error(send, request, failure.status, failure.code, message)
    request.emit(None)


async def _send_error(
    send: Send, request: ProxiedRequest, status: int, code: str, message: str, headers=()
) -> None:
    body = request.adapter.error_body(status, code, message)
    headers = (*headers, *request.scope.get(SERVER_HEADERS_SCOPE_KEY, ()))
    await _send_json_error(send, status, code, body, request.request_id, request.started, headers)


async def _send_plain_error(
    scope, send: Send, started: float, status: int, code: str, message: str
) -> None:
    """An error for a request no provider adapter can answer (its shape is Costr's own)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await _send_json_error(
        send,
        status,
        code,
        body,
        f"req_{uuid.uuid4().hex}",
        started,
        scope.get(SERVER_HEADERS_SCOPE_KEY, ()),
    )


async def _send_json_error(
    send: Send, status: int, code: str, body: bytes, request_id: str, started: float, headers=()
) -> None:
    """Costr's own answer. ``headers`` include the server's ``date`` and ``server`` when the
    server left them to the proxy (``limits.SERVER_HEADERS_SCOPE_KEY``)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *error_headers(headers, body, code, request_id),
                (
                    b"x-costr-overhead-ms",
                    f"{_ms(time.perf_counter() - started):.3f}".encode(),
                ),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_headers(headers, body: bytes, code: str, request_id: str) -> list[tuple[bytes, bytes]]:
    """The headers of Costr's own JSON answer, after ``headers``: for an HTTP request's and
    for a WebSocket handshake's (``websocket.refuse``)."""
    return [
        *headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-costr-error", code.encode()),
        (b"x-costr-request-id", request_id.encode()),
    ]
