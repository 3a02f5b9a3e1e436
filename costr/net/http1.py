"""A minimal pooled HTTP/1.1 client for the proxy's upstream requests.

Why not a library: the upstream client is on the path of every proxied byte, and on this
project's 2-core benchmark machine (bench/notes.md, measured with the same fake provider, client
CPU per non-streamed request at concurrency 1 / 32) httpx 0.28 cost 1.77 / 3.33 ms, httpcore
1.20 / 3.18, httpx2 1.59 / 1.73, aiohttp 3.14 0.41 / 0.29 -- and this client 0.12 / 0.10. The
proxy's whole budget is 1 ms of CPU per request, so only this one leaves room for the rest of
the proxy. It is small because the proxy needs little: one request per connection at a time
(no pipelining, no HTTP/2), bodies passed through as bytes, no redirects, no cookies, no
content decoding, no default headers.

What it does, and why each part matters to a transparent proxy:

- One keep-alive pool per origin (scheme, host, port), most recently used connection first,
  bounded (``max_idle_per_origin``), idle connections closed after ``idle_expiry`` seconds.
  A connection is never reused after ``Connection: close``, an HTTP/1.0 answer without
  keep-alive, a body that ended early, a HEAD request, or any error.
- One answer per request, never more: any byte after a complete answer (a second response, or
  garbage, in the same read or later), and any byte or end of stream on an idle connection, is
  a connection whose framing cannot be trusted. It is closed and never reused, since the next
  request on it -- maybe another tenant's -- would read those bytes as its own answer. Before
  an idle connection is reused its socket is polled, so bytes that reached the kernel but not
  yet the event loop are caught too. (llhttp itself skips bare CR and LF between messages;
  they carry no framing, so they alone do not count.)
- A request that fails on a reused idle connection before any response byte arrived (the
  upstream closed the idle connection just as it was picked) is sent once more on a new
  connection; never after a response byte came back, and never a streamed body.
- TCP_NODELAY on every socket (no Nagle/delayed-ACK stalls); TLS through the event loop
  (``loop.create_connection(ssl=…, server_hostname=…)``), certifi's CA bundle when installed.
- Request headers go out exactly as given, in order, with ``Host`` set from the origin and
  nothing else added but the body's framing: ``Content-Length`` for a bytes body that lacks
  one, ``Transfer-Encoding: chunked`` for a streamed body without a length.
- Response headers come back exactly as sent (order, case, repeated names such as several
  ``set-cookie``); the body arrives as the upstream framed it (chunked, content-length or read
  until close), de-chunked by llhttp (httptools) and handed on as it arrives. Past
  ``HIGH_WATER`` buffered bytes the socket stops being read until the consumer catches up, so a
  slow client never makes Costr hold a whole body.
- Timeouts: ``connect_timeout`` for TCP + TLS set-up; ``read_timeout`` for the whole response
  head (one wait: bytes of an unfinished head wake nobody, so a head trickled a byte at a time
  cannot hold the connection longer), for each body read, and for each wait for a streamed
  request body to drain. A body that keeps trickling faster than ``read_timeout`` is read for
  as long as it lasts: bounding a whole body's time is the caller's business (the proxy's
  client does, by leaving; after that ``COSTR_PROXY_DRAIN_SECONDS`` bounds the rest).
- A response head (status line and headers, interim answers included) over
  ``MAX_RESPONSE_HEAD_BYTES`` is a malformed answer: an endless header block or header line is
  cut there, never buffered without bound.

Failures raise ``UpstreamError`` subclasses: ``ConnectError`` / ``ConnectTimeout`` before the
request left, ``ReadTimeout`` when the upstream went quiet, ``RemoteProtocolError`` for a
connection closed early or a malformed answer. Exceptions raised by a streamed request body's
own iterator pass through unchanged (the connection is then closed, never reused).

This module holds the client, its per-origin pools and the sending of a request; one connection
and the answer it reads (the llhttp parser, ``Response``, the limits and the errors above) are
``http1_connection``'s.
"""

import asyncio
import ssl
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.views.decorators.debug import sensitive_variables

from costr.net.http1_connection import (
    ConnectError,
    Connection,
    ConnectTimeout,
    RemoteProtocolError,
    Response,
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: ``scheme://host:port``, plus the path prefix the URL carried."""

    scheme: str
    host: str
    port: int
    host_header: bytes
    path_prefix: bytes

    @classmethod
    def parse(cls, url: str) -> "Origin":
        """``https://api.openai.com``, ``http://127.0.0.1:8000/prefix/`` and the like."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {url!r}")
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        host = parts.hostname.encode("idna").decode("ascii")
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default_port else f"{shown}:{port}"
        return cls(
            scheme=parts.scheme,
            host=host,
            port=port,
            host_header=host_header.encode("ascii"),
            path_prefix=parts.path.rstrip("/").encode(),
        )


def default_ssl_context() -> ssl.SSLContext:
    """Certificate checks on, HTTP/1.1 by ALPN; certifi's CA bundle when installed."""
    try:
        import certifi
    except ImportError:  # pragma: no cover - the system store is fine too
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Pool:
    """Idle keep-alive connections to one origin, most recently used last."""

    __slots__ = ("_sweeper", "client", "idle", "origin")

    def __init__(self, client: "Client", origin: Origin):
        self.client = client
        self.origin = origin
        self.idle: list[Connection] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, now: float) -> Connection | None:
        idle = self.idle
        expiry = self.client.idle_expiry
        while idle:
            connection = idle.pop()
            if connection.closed or connection.transport.is_closing():
                connection.abort()
                continue
            if now - connection.idle_since >= expiry or connection.has_pending_input():
                connection.abort()
                continue
            return connection
        return None

    def release(self, connection: Connection) -> None:
        idle = self.idle
        connection.idle_since = connection.loop.time()
        idle.append(connection)
        if len(idle) > self.client.max_idle_per_origin:
            idle.pop(0).abort()
        if self._sweeper is None:
            self._sweeper = connection.loop.call_later(self.client.idle_expiry, self._sweep)

    def forget(self, connection: Connection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)

    def _sweep(self) -> None:
        """Close the connections idle for too long, even when no request comes to notice."""
        self._sweeper = None
        if not self.idle:
            return
        loop = self.idle[0].loop
        deadline = loop.time() - self.client.idle_expiry
        for connection in [c for c in self.idle if c.idle_since <= deadline]:
            connection.abort()
        if self.idle:
            self._sweeper = loop.call_later(self.client.idle_expiry, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.idle):
            connection.abort()


class Client:
    """Keep-alive pools per origin, for one event loop.

    ``ssl_context`` verifies upstream certificates (``default_ssl_context()`` unless given; tests
    pass one that trusts their own certificate).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_origin: int = 128,
        idle_expiry: float = 30.0,
    ):
        self.ssl_context = ssl_context
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_expiry = idle_expiry
        self.is_closed = False
        self._pools: dict[tuple[str, str, int], _Pool] = {}

    # The headers carry the provider key: no error report may show them.
    @sensitive_variables("headers", "head")
    async def request(
        self,
        method: str,
        origin: Origin,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] = b"",
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Response:
        """Send one request and return its response once the status and headers are in.

        ``target`` is the request target exactly as it goes on the request line (path and
        query). A bytes ``body`` is sent with the request in one write; any other body is an
        async iterable of bytes, sent as it yields, on a new connection (it cannot be sent
        again, so it never rides a connection that may turn out stale).
        """
        if self.is_closed:
            raise RuntimeError("the upstream client is closed")
        streamed = not isinstance(body, bytes | bytearray)
        head, chunked = _request_head(method, origin, target, headers, body, streamed)
        pool = self._pool(origin)
        loop = asyncio.get_running_loop()
        is_head = method == "HEAD"
        for attempt in (1, 2):
            connection = None if streamed else pool.take(loop.time())
            reused = connection is not None
            if connection is None:
                connection = await self._connect(loop, pool, connect_timeout)
            response = Response(connection, read_timeout)
            connection.start(response, is_head)
            try:
                if streamed:
                    await _send_streamed(connection, head, body, chunked, read_timeout)
                else:
                    connection.transport.write(head + body if body else head)
                await response.head_received()
            except RemoteProtocolError:
                response.stop_timer()
                connection.abort()
                if reused and attempt == 1 and not response.received_any:
                    continue  # a stale idle connection: once more, on a new one
                raise
            except BaseException:
                response.stop_timer()
                connection.abort()
                raise
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def idle_connections(self, origin: Origin) -> int:
        """How many idle connections the pool holds for ``origin``."""
        pool = self._pools.get((origin.scheme, origin.host, origin.port))
        return len(pool.idle) if pool is not None else 0

    async def aclose(self) -> None:
        self.is_closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, origin: Origin) -> _Pool:
        key = (origin.scheme, origin.host, origin.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self, origin)
        return pool

    async def _connect(self, loop, pool: _Pool, timeout: float) -> Connection:
        origin = pool.origin
        tls = None
        if origin.scheme == "https":
            if self.ssl_context is None:
                self.ssl_context = default_ssl_context()
            tls = self.ssl_context
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop, pool),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls is not None else None,
                )
        except TimeoutError as error:
            raise ConnectTimeout(f"no connection to {origin.host}:{origin.port} in time") from error
        except (OSError, ssl.SSLError) as error:
            raise ConnectError(f"cannot connect to {origin.host}:{origin.port}: {error}") from error
        return connection


@sensitive_variables("headers", "value", "parts", "head")
def _request_head(method, origin, target, headers, body, streamed) -> tuple[bytes, bool]:
    """The request line and headers as bytes, and whether the body goes chunked."""
    parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", origin.host_header]
    length: bytes | None = None
    count = 0
    for name, value in headers:
        size = len(name)
        if size == 4 and name.lower() == b"host":
            continue
        if size == 14 and name.lower() == b"content-length":
            if length is not None:
                continue  # one length only
            length = value
            if not streamed and int(value) != len(body):
                value = b"%d" % len(body)
        parts += (b"\r\n", name, b": ", value)
        count += 1
    chunked = False
    if length is None:
        if streamed:
            parts.append(b"\r\nTransfer-Encoding: chunked")
            chunked = True
            count += 1
        elif body or method in ("POST", "PUT", "PATCH"):
            parts.append(b"\r\nContent-Length: %d" % len(body))
            count += 1
    parts.append(b"\r\n\r\n")
    head = b"".join(parts)
    # Every CR and LF in the head must be a line end we wrote: none may come from a header
    # value or the target, where it would smuggle a header or a second request.
    lines = count + 3
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise ValueError("CR or LF in a request header or target")
    return head, chunked


@sensitive_variables("head")
async def _send_streamed(connection, head, body, chunked: bool, timeout: float) -> None:
    transport = connection.transport
    transport.write(head)
    async for part in body:
        if connection.closed:
            raise RemoteProtocolError("the upstream closed the connection while receiving")
        if not part:
            continue
        if chunked:
            transport.write(b"%x\r\n" % len(part) + part + b"\r\n")
        else:
            transport.write(part)
        await connection.drain(timeout)
    if chunked:
        transport.write(b"0\r\n\r\n")
