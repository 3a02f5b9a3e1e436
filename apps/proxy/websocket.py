"""The WebSocket relay: ``/p/<org_slug>/<provider>/<path>`` for OpenAI Realtime, the Responses API
over WebSocket and Gemini Live (DESIGN.md, "Every endpoint and transport the SDKs use").

A session is admitted as an HTTP request is (``admission.authorize``: the same token check,
throttle and key cache), its attribution headers read and removed, and the provider key put
where the client put its token: the SDK's header, Gemini's ``?key=``, or the subprotocol
``openai-insecure-api-key.<token>`` that browsers send (the only place a browser can put it).
Then Costr opens the upstream session (the ``websockets`` asyncio client, to
``COSTR_UPSTREAM_<PROVIDER>`` with ws/wss for http/https, the path and query as received) and
only once the provider has accepted does it accept the client, answering the subprotocol the
provider chose. Frames go both ways as they come, text as text and binary as binary, each
direction on its own task; close codes and reasons pass through both ways.

Refusals before the upgrade are HTTP answers in the provider's error shape with
``X-Costr-Error`` (the ASGI ``websocket.http.response`` extension; a server without it gets a
close before accept, 1008 for a refusal, 1011 for an upstream that cannot be reached). A provider
that refuses the handshake has its own answer relayed. After the upgrade: a message over
``COSTR_PROXY_MAX_WS_FRAME_BYTES`` closes both sides with 1009; an upstream lost without a close
frame closes the client with 1011; Costr's own failure closes both with 1011.

Usage: ``providers.realtime`` reads a copy of the frames after they have gone on; each model
response makes one usage event (endpoint ``realtime``, status 101, its own request id
``<session id>.<n>``); a session with no response makes one event, ``billable: False``. When the
client leaves during a response, the upstream is read on (bounded by
``COSTR_PROXY_DRAIN_SECONDS``) until that response's usage has arrived, as for HTTP streams.

Idle and slow peers: both sides are pinged every 20 s and dropped when a pong takes over 20 s
(uvicorn's defaults on the client side, the same here upstream), so a vanished peer frees its
session within a minute. A slow reader holds back the other side instead of growing a buffer:
uvicorn's send waits while the client's socket buffer is full, the upstream client stops reading
once 8 messages wait (``max_queue``), and a send upstream waits past 32 KiB unsent. A live but
silent session is the provider's to end (each limits a session's length).
"""

import asyncio
import contextlib
import functools
import json
import logging
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import websockets
from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.budgets import guard
from apps.keys import keycache
from apps.proxy.admission import (
    authorize,
    check_path,
    count_refusal,
    provider_key_or_refuse,
    reserve_budget,
)
from apps.proxy.app import PREFIX, ProxiedRequest, Receive, Send, error_headers
from apps.proxy.limits import (
    HOP_BY_HOP,
    MAX_HEAD_BYTES,
    RESPONSE_HEADERS_DROPPED,
    Refusal,
    clean_request_info,
    clean_usage,
    connection_tokens,
    head_size,
)
from apps.proxy.providers import RequestInfo, get_adapter
from apps.proxy.providers.base import query_param
from apps.proxy.providers.realtime import FinishedResponse, SessionMeter, meter_for
from apps.usage.metering import sink
from costr.net.http1 import default_ssl_context

logger = logging.getLogger("costr.proxy")
# The websockets client logs every handshake header at DEBUG, the provider key among them: its
# logger is held at INFO whatever level the root logger runs at.
_upstream_logger = logging.getLogger("costr.proxy.websocket.upstream")
_upstream_logger.setLevel(logging.INFO)

KEY_SUBPROTOCOL = "openai-insecure-api-key."
STATUS = 101  # the status a WebSocket session's usage events record
# Request headers that belong to one handshake and are the upstream client's own to send.
_HANDSHAKE_HEADERS = HOP_BY_HOP | {
    b"host",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"content-length",
}
# Response headers of the upstream's handshake that are the server's own to send the client.
_ACCEPT_HEADERS_DROPPED = RESPONSE_HEADERS_DROPPED | {
    b"sec-websocket-accept",
    b"sec-websocket-protocol",
    b"sec-websocket-extensions",
    b"date",
    b"server",
    b"content-length",
}
# Close codes that a close frame cannot carry (RFC 6455, 7.4.1), and what is sent instead.
_UNSENDABLE_CLOSE = {1005: 1000, 1006: 1001, 1015: 1001}
UPSTREAM_MAX_QUEUE = 8
PING_INTERVAL = PING_TIMEOUT = 20.0


class UpstreamUnavailable(Exception):
    """The upstream session could not be opened: answered 502 (or 504 on a timeout)."""

    def __init__(self, status: int, code: str, error: BaseException):
        super().__init__(repr(error))
        self.status, self.code, self.error = status, code, error


@dataclass(slots=True)
class Closing:
    """How one side ended the session, and what the other side is sent."""

    code: int
    reason: str
    outcome: str  # for a response under way: the usage event's outcome


@sensitive_variables("scope")
async def websocket_app(scope, receive: Receive, send: Send) -> None:
    """ASGI entry for every WebSocket session under ``/p/``. ``scope`` holds the client's token."""
    started = time.perf_counter()
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    parts = raw_path[len(PREFIX) :].split(b"/", 2)
    provider = parts[1].decode("latin-1") if len(parts) > 1 else ""
    adapter = get_adapter(provider)
    if adapter is None or not parts[0]:
        body = json.dumps(
            {"error": {"code": "unknown_provider", "message": "Use /p/<org>/<provider>/…"}}
        ).encode()
        await refuse(scope, send, 404, body, "unknown_provider")
        return
    org_slug, raw_rest = parts[0].decode("latin-1"), parts[2] if len(parts) > 2 else b""
    request = ProxiedRequest(scope, adapter, provider, org_slug, raw_rest, started)
    request.status = STATUS
    session = Session(request)
    try:
        await _session(session, request, receive, send)
    finally:
        if request.reservation is not None:
            guard.release(request.reservation)


@sensitive_variables("scope")
async def _session(session: "Session", request: ProxiedRequest, receive: Receive, send: Send):
    """Open the session (or answer why not) and relay it; its budget reservation, if any, is
    the caller's to release."""
    scope, adapter, provider = request.scope, request.adapter, request.provider
    try:
        upstream = await session.open()
    except Refusal as refusal:
        count_refusal(request, refusal)
        body = adapter.error_body(refusal.status, refusal.code, refusal.message)
        await refuse(scope, send, refusal.status, body, refusal.code, refusal.headers, request)
        return
    except InvalidStatus as refused:
        await session.relay_refusal(refused, send)
        return
    except UpstreamUnavailable as failure:
        logger.warning("upstream %s websocket failed: %r", provider, failure.error)
        message_text = (
            f"{provider} did not answer in time."
            if failure.status == 504
            else f"Costr could not open a session with {provider}."
        )
        body = adapter.error_body(failure.status, failure.code, message_text)
        await refuse(scope, send, failure.status, body, failure.code, (), request)
        session.emit_failed(failure.status)
        return
    except Exception:
        logger.exception("websocket relay failed to open %s", request.request_id)
        body = adapter.error_body(500, "costr_error", "Costr failed on this session.")
        await refuse(scope, send, 500, body, "costr_error", (), request)
        return
    await session.run(upstream, receive, send)


async def refuse(
    scope,
    send: Send,
    status: int,
    body: bytes,
    code: str,
    headers=(),
    request: ProxiedRequest | None = None,
) -> None:
    """Answer a WebSocket handshake with an HTTP response, before any upgrade.

    Without the server's ``websocket.http.response`` extension only a close before accept is
    possible (the server answers 403): 1011 for Costr's or the upstream's trouble, 1008 for a
    refusal."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1011 if status >= 500 else 1008})
        return
    request_id = request.request_id if request is not None else f"req_{uuid.uuid4().hex}"
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": error_headers(headers, body, code, request_id),
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


class Session:
    """One relayed WebSocket session: its admission, its two pumps and its usage events."""

    def __init__(self, request: ProxiedRequest):
        self.request = request
        self.session_id = request.request_id
        self.meter: SessionMeter | None = None
        self.client_gone = False
        self.client_subprotocol: str | None = None  # the client's own key subprotocol
        self._events = 0

    @sensitive_variables("headers", "provider_key", "forward", "query", "subprotocols")
    async def open(self) -> ClientConnection:
        """Admit the session and open it upstream; raises ``Refusal``, ``InvalidStatus`` (the
        provider refused the handshake) or ``UpstreamUnavailable``."""
        request = self.request
        scope, adapter = request.scope, request.adapter
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        query: bytes = scope.get("query_string", b"")
        if head_size({**scope, "method": "GET"}) > MAX_HEAD_BYTES:
            raise Refusal(
                431, "head_too_large", f"Request heads are limited to {MAX_HEAD_BYTES} bytes."
            )
        subprotocols: list[str] = list(scope.get("subprotocols") or ())
        token_in_subprotocol = None
        if request.provider == "openai" and adapter.credential_from(headers, query) is None:
            token_in_subprotocol = next(
                (item for item in subprotocols if item.startswith(KEY_SUBPROTOCOL)), None
            )
        checked = headers
        if token_in_subprotocol is not None:
            credential = token_in_subprotocol[len(KEY_SUBPROTOCOL) :].encode("latin-1")
            checked = [*headers, (b"authorization", b"Bearer " + credential)]
        request.resolved = await authorize(request, checked, query)
        check_path(request.raw_rest)
        forward = self._forward_headers(headers)
        provider_key = provider_key_or_refuse(request.resolved, request.provider)
        if token_in_subprotocol is not None:
            self.client_subprotocol = token_in_subprotocol
            subprotocols = [
                KEY_SUBPROTOCOL + provider_key if item == token_in_subprotocol else item
                for item in subprotocols
            ]
        else:
            forward, query = adapter.swap_credential(forward, query, provider_key)
        del provider_key
        keycache.record_use(request.resolved, request.provider)

        requested = query_param(query, b"model") if request.provider == "openai" else None
        request.info = clean_request_info(RequestInfo("realtime", requested, stream=True))
        if request.resolved.budgets is not None:
            request.reservation = await reserve_budget(request, None, 0, session=True)
        self.meter = meter_for(request.provider, request.rest, requested, self.report)
        url = _upstream_url(request.provider) + "/" + request.rest
        if query:
            url += "?" + query.decode("latin-1")
        request.overhead = time.perf_counter() - request.started
        request.forwarded = True
        limit = settings.COSTR_PROXY_MAX_WS_FRAME_BYTES
        try:
            return await websockets.connect(
                url,
                additional_headers=[
                    (name.decode("latin-1"), value.decode("latin-1")) for name, value in forward
                ],
                subprotocols=subprotocols or None,
                user_agent_header=None,
                compression=None,
                proxy=None,
                ssl=_ssl_context() if url.startswith("wss:") else None,
                open_timeout=settings.COSTR_UPSTREAM_CONNECT_TIMEOUT,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_TIMEOUT,
                max_size=limit,
                max_queue=UPSTREAM_MAX_QUEUE,
                logger=_upstream_logger,
            )
        except InvalidStatus:
            raise
        except TimeoutError as error:
            raise UpstreamUnavailable(504, "upstream_timeout", error) from None
        except (OSError, websockets.exceptions.InvalidHandshake) as error:
            raise UpstreamUnavailable(502, "upstream_unreachable", error) from None

    def _forward_headers(self, headers) -> list[tuple[bytes, bytes]]:
        """The client's handshake headers fit for the upstream's: no hop-by-hop or handshake
        header, none its ``Connection:`` names, and no ``X-Costr-*`` (read here)."""
        attribution = self.request.attribution
        forwarded = []
        named: set[bytes] = set()
        for name, value in headers:
            lowered = name.lower()
            if lowered.startswith(b"x-costr-"):
                attribution.read(lowered, value)
            elif lowered == b"connection":
                named |= connection_tokens(value)
            elif lowered not in _HANDSHAKE_HEADERS:
                forwarded.append((name, value))
        named -= {b"upgrade"}
        if named:
            forwarded = [(name, value) for name, value in forwarded if name.lower() not in named]
        return forwarded

    async def relay_refusal(self, refused: InvalidStatus, send: Send) -> None:
        """The provider refused the handshake: its answer goes to the client as it came."""
        response = refused.response
        request = self.request
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.raw_items()
            if name.lower().encode("latin-1") not in _ACCEPT_HEADERS_DROPPED
        ]
        headers.append((b"x-costr-request-id", self.session_id.encode()))
        if "websocket.http.response" in (request.scope.get("extensions") or {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": response.status_code,
                    "headers": headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": response.body or b""})
        else:
            await send({"type": "websocket.close", "code": 1008})
        self.emit_failed(response.status_code)

    async def run(self, upstream: ClientConnection, receive: Receive, send: Send) -> None:
        """Accept the client, relay until either side ends, close the other, record usage."""
        request = self.request
        accepted_at = time.perf_counter()
        subprotocol = upstream.subprotocol
        if subprotocol is not None and subprotocol.startswith(KEY_SUBPROTOCOL):
            subprotocol = self.client_subprotocol  # never the provider key
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in upstream.response.headers.raw_items()
            if name.lower().encode("latin-1") not in _ACCEPT_HEADERS_DROPPED
        ]
        request.overhead += time.perf_counter() - accepted_at
        headers.append((b"x-costr-request-id", self.session_id.encode()))
        headers.append((b"x-costr-overhead-ms", f"{request.overhead * 1000:.3f}".encode()))
        try:
            await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": headers})
        except OSError:
            await upstream.close(1001)
            self.finish(Closing(1001, "", "client_disconnected"))
            return
        to_upstream = asyncio.ensure_future(self._client_to_upstream(upstream, receive))
        to_client = asyncio.ensure_future(self._upstream_to_client(upstream, send))
        closing: Closing | None = None
        try:
            done, _ = await asyncio.wait(
                (to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED
            )
            if to_upstream in done:
                closing = to_upstream.result()
                self.client_gone = True
                if closing.code == 1009:
                    await _close_client(send, closing.code, closing.reason)
                await self._drain(to_client)
                await _close_upstream(upstream, closing.code, closing.reason)
            else:
                closing = to_client.result()
                to_upstream.cancel()
                await _close_client(send, closing.code, closing.reason)
        except Exception:
            logger.exception("websocket relay failed on %s", self.session_id)
            closing = Closing(1011, "Costr failed on this session.", "costr_error")
            await _close_client(send, closing.code, closing.reason)
            await _close_upstream(upstream, closing.code, closing.reason)
        finally:
            for task in (to_upstream, to_client):
                if not task.done():
                    task.cancel()
            if closing is None:  # cancelled: the server is going away
                await _close_upstream(upstream, 1001, "")
                closing = Closing(1001, "", "client_disconnected")
            self.finish(closing)

    async def _client_to_upstream(self, upstream: ClientConnection, receive: Receive) -> Closing:
        limit = settings.COSTR_PROXY_MAX_WS_FRAME_BYTES
        meter = self.meter
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                data = text if text is not None else message.get("bytes") or b""
                if _too_large(data, limit):
                    return Closing(1009, f"Messages are limited to {limit} bytes.", "costr_error")
                try:
                    await upstream.send(data)
                except ConnectionClosed:
                    # The upstream ended; its pump says how. Wait to be cancelled.
                    await asyncio.Event().wait()
                _observe(meter, meter.client_frame, data)
            elif kind == "websocket.disconnect":
                code = message.get("code", 1005)
                return Closing(code, message.get("reason") or "", "client_disconnected")

    async def _upstream_to_client(self, upstream: ClientConnection, send: Send) -> Closing:
        meter = self.meter
        try:
            async for data in upstream:
                if not self.client_gone:
                    try:
                        if isinstance(data, str):
                            await send({"type": "websocket.send", "text": data})
                        else:
                            await send({"type": "websocket.send", "bytes": data})
                    except OSError:
                        self.client_gone = True
                _observe(meter, meter.server_frame, data)
                if self.client_gone and not meter.in_progress:
                    break
        except ConnectionClosed:
            pass
        received, sent = upstream.protocol.close_rcvd, upstream.protocol.close_sent
        if received is not None:
            return Closing(received.code, received.reason, "upstream_disconnected")
        if sent is not None and sent.code == 1009:
            return Closing(1009, sent.reason, "upstream_disconnected")
        if self.client_gone:
            return Closing(1000, "", "client_disconnected")
        return Closing(1011, "Upstream connection lost.", "upstream_disconnected")

    async def _drain(self, to_client: asyncio.Future) -> None:
        """The client has left: read on until the response under way reports its usage."""
        if to_client.done() or not self.meter.in_progress:
            to_client.cancel()
            return
        try:
            async with asyncio.timeout(settings.COSTR_PROXY_DRAIN_SECONDS):
                await asyncio.shield(to_client)
        except TimeoutError:
            to_client.cancel()

    # Usage events

    def report(self, finished: FinishedResponse) -> None:
        """A model response has finished: its usage event."""
        self._emit(finished, "ok" if not self.client_gone else "client_disconnected")

    def finish(self, closing: Closing) -> None:
        """The session has ended: the response under way (with what was seen of it), or the
        one event of a session that made no response."""
        meter = self.meter
        if meter is None:
            return
        pending = None
        with contextlib.suppress(Exception):
            pending = meter.finish()
        if pending is not None:
            self._emit(pending, closing.outcome)
        elif self._events == 0:
            request = self.request
            self._requested_model_seen()
            request.outcome = "ok" if closing.outcome == "client_disconnected" else closing.outcome
            request.timestamp = datetime.now(UTC)
            record = request.record(None)
            record["billable"] = False
            sink.emit(record)
            self._events += 1

    def _requested_model_seen(self) -> None:
        """The model the client asked for in a message (Responses, Gemini's setup), if any."""
        requested = self.meter.requested_model if self.meter is not None else None
        if requested != self.request.info.requested_model:
            self.request.info = clean_request_info(RequestInfo("realtime", requested, stream=True))

    def emit_failed(self, status: int) -> None:
        """The upstream session never opened: one event with the status answered."""
        request = self.request
        request.status = status
        request.outcome = "upstream_error"
        sink.emit(request.record(None))
        self._events += 1

    def _emit(self, finished: FinishedResponse, outcome: str) -> None:
        request = self.request
        self._requested_model_seen()
        self._events += 1
        request.request_id = f"{self.session_id}.{self._events}"
        request.started = finished.started
        request.timestamp = datetime.now(UTC)
        request.outcome = outcome
        if self._events > 1:
            request.overhead = 0.0  # the handshake's overhead goes with the first event
        record = request.record(clean_usage(finished.usage))
        record["usage_details"] = finished.details or None
        if request.reservation is not None:
            guard.charge(request.reservation, record)
        sink.emit(record)


def _observe(meter: SessionMeter, method, data: str | bytes) -> None:
    """Show a frame to the meter; a meter that fails costs the session its usage, no more."""
    try:
        method(data)
    except Exception as error:
        logger.warning("websocket usage meter gave up: %s", type(error).__name__)
        meter.client_frame = meter.server_frame = _ignore


def _ignore(data: str | bytes) -> None:
    return None


def _too_large(data: str | bytes, limit: int) -> bool:
    size = len(data)
    if isinstance(data, str) and size * 4 > limit:
        size = len(data.encode("utf-8", "surrogatepass"))
    return size > limit


async def _close_client(send: Send, code: int, reason: str) -> None:
    code = _UNSENDABLE_CLOSE.get(code, code)
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.close", "code": code, "reason": reason})


async def _close_upstream(upstream: ClientConnection, code: int, reason: str) -> None:
    code = _UNSENDABLE_CLOSE.get(code, code)
    try:
        await upstream.close(code, reason)
    except websockets.exceptions.ProtocolError:
        await upstream.close(1000)


@functools.lru_cache(maxsize=16)
def _parsed_upstream(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _upstream_url(provider: str) -> str:
    """``COSTR_UPSTREAM_<PROVIDER>`` as a ws/wss origin with its path prefix, no slash after."""
    return _parsed_upstream(getattr(settings, f"COSTR_UPSTREAM_{provider.upper()}"))


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process (making one loads the CA bundle)."""
    return default_ssl_context()
