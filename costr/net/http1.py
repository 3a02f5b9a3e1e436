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
"""

import asyncio
import collections
import contextlib
import select
import socket
import ssl
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
from django.views.decorators.debug import sensitive_variables

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Real providers' response heads are a few KiB; this is the limit Costr also sets on its own
# clients' request heads (DESIGN.md, "Limits").
MAX_RESPONSE_HEAD_BYTES = 64 * 1024

Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """Any failure to get an answer from the upstream."""


class ConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, DNS, TLS)."""


class UpstreamTimeout(UpstreamError):
    """A connect, read or write wait ran out of time."""


class ConnectTimeout(UpstreamTimeout, ConnectError):
    """The connection (TCP and TLS) was not set up in time."""


class ReadTimeout(UpstreamTimeout):
    """The upstream sent nothing for ``read_timeout`` seconds (or stopped reading our body)."""


class RemoteProtocolError(UpstreamError):
    """The connection closed before the answer was complete, or the answer was malformed."""


class _StrayResponse(Exception):
    """Raised from the parser's callbacks when a second message starts after a complete answer."""


class _HeadTooLarge(Exception):
    """Raised from the parser's callbacks when the response head outgrows its limit."""


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


def _head_too_large() -> "RemoteProtocolError":
    return RemoteProtocolError(
        f"the upstream's response head is over {MAX_RESPONSE_HEAD_BYTES} bytes"
    )


def _fail_waiter(waiter: asyncio.Future, error: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class Response:
    """One upstream answer: status and raw headers at once, then the body by ``read()``.

    ``read()`` gives the body bytes in the order they arrived (all that is buffered, joined) and
    ``b""`` at its end. ``close()`` (or ``aclose()``) gives the connection back when the body was
    read to the end, and closes it otherwise.
    """

    __slots__ = (
        "_chunks",
        "_connection",
        "_error",
        "_loop",
        "_message_complete",
        "_read_timeout",
        "_timer",
        "_wait_started",
        "_waiter",
        "buffered",
        "headers",
        "headers_complete",
        "http_version",
        "keep_alive",
        "received_any",
        "status",
    )

    def __init__(self, connection: "_Connection", read_timeout: float):
        self._connection = connection
        self._loop = connection.loop
        self._read_timeout = read_timeout
        self._chunks: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wait_started = 0.0
        self._error: BaseException | None = None
        self._message_complete = False
        self.status = 0
        self.http_version = "1.1"
        self.headers: Headers = []
        self.headers_complete = False
        self.keep_alive = False
        self.received_any = False
        self.buffered = 0  # body bytes received and not yet read: bounded by flow control

    @property
    def complete(self) -> bool:
        """The whole body has arrived and been read: ``read()`` would answer ``b""`` at once."""
        return self._message_complete and not self._chunks

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header; ``name`` in lowercase."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def read(self) -> bytes:
        """The next body bytes, ``b""`` at the end; raises UpstreamError if the body broke off."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                if not self._message_complete:
                    # Once complete the connection is no longer this answer's to resume.
                    self._connection.consumed()
                return data
            if self._message_complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Done with this answer: an unfinished body costs the connection, never a wrong reuse."""
        if not self._message_complete:
            self._connection.abort()
        self._chunks.clear()
        self._stop_timer()

    async def _wait(self) -> None:
        """Wait for the connection to report data, the end, or an error, or for the read timeout.

        One timer serves many waits: it is armed by the first wait and, when it fires during a
        later one, re-armed for that wait's own deadline. A stream of chunks then costs no timer
        per chunk (bench/notes.md: CPU per forwarded chunk).
        """
        loop = self._loop
        waiter = loop.create_future()
        self._waiter = waiter
        self._wait_started = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._wait_started + self._read_timeout, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms the timer again
        deadline = self._wait_started + self._read_timeout
        if self._loop.time() >= deadline:
            waiter.set_exception(
                ReadTimeout(f"no data from the upstream for {self._read_timeout} s")
            )
        else:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to an origin, and the llhttp parser reading it.

    The parser's callbacks land here and go to the current ``Response``. A connection is idle
    (in its pool) or serving exactly one request.
    """

    __slots__ = (
        "_drain_waiter",
        "_head_bytes",
        "_head_received",
        "_interim",
        "_is_head",
        "_paused",
        "_poller",
        "_write_paused",
        "closed",
        "idle_since",
        "loop",
        "parser",
        "pool",
        "response",
        "reusable",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: "_Pool"):
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._interim = False
        self._is_head = False
        self._paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._poller: select.poll | None = None
        # The current response head's size: as parsed (header lines), and as received in reads
        # that ended inside it (which also sees a line llhttp is still holding unfinished).
        self._head_bytes = 0
        self._head_received = 0

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Registered once: a reuse then costs one poll(2), not a poller built per request.
            self._poller = select.poll()
            self._poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
            with contextlib.suppress(OSError):  # not a TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response._message_complete:
            # Bytes nobody asked for (on an idle connection, or after a complete answer): the
            # connection's framing cannot be trusted any more.
            self.abort()
            return
        response.received_any = True
        in_head = not response.headers_complete
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(RemoteProtocolError("the upstream switched protocols"))
            return
        except httptools.HttpParserError as error:
            if response._message_complete:
                # A second message, or garbage, after a complete answer in the same read: the
                # answer stands as it was parsed, the connection is done.
                self.abort()
            elif isinstance(error.__context__, _HeadTooLarge):
                self._broken(_head_too_large())
            else:
                self._broken(RemoteProtocolError(f"malformed response from the upstream: {error}"))
            return
        if in_head and not response.headers_complete:
            # llhttp holds an unfinished header line whole: count what it was given, so an
            # endless line is cut too, not only many lines.
            self._head_received += len(data)
            if self._head_received > MAX_RESPONSE_HEAD_BYTES:
                self._broken(_head_too_large())
                return
        if response._message_complete:
            self._finished(response)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self.pool.forget(self)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(RemoteProtocolError("the upstream closed the connection"))
        response = self.response
        if response is None or response._message_complete:
            return
        if response.headers_complete and self._reads_until_close(response):
            response._message_complete = True
            response._wake()
            return
        detail = f": {exc!r}" if exc is not None else ""
        if response.received_any:
            error = RemoteProtocolError(f"the upstream closed the connection mid-response{detail}")
        else:
            error = RemoteProtocolError(f"the upstream closed the connection{detail}")
        response._fail(error)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # llhttp callbacks (httptools calls the ones that exist)

    def on_message_begin(self) -> None:
        response = self.response
        if response._message_complete:
            # The upstream answered more than once: nothing after the answer may be parsed into
            # it (its headers would be overwritten) or left for the next request to read.
            raise _StrayResponse
        response.headers = []
        self._interim = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise _HeadTooLarge
        self.response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._interim = True
            return
        response.status = status
        response.http_version = self.parser.get_http_version()
        response.headers_complete = True
        if self._is_head:
            # llhttp does not know the request was HEAD: the answer ends with its headers, and
            # the parser's idea of the connection's framing is now wrong, so it is not reused.
            response._message_complete = True
            self.reusable = False
        response._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response._message_complete:
            return
        response._chunks.append(body)
        response.buffered += len(body)
        if response.buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        response._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        response = self.response
        if response._message_complete:
            return
        response.keep_alive = self.parser.should_keep_alive()
        response._message_complete = True
        response._wake()

    # Used by Response and the pool

    def consumed(self) -> None:
        """The response's buffer was read: read the socket again if it was paused."""
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def start(self, response: Response, is_head: bool) -> None:
        self.response = response
        self._is_head = is_head
        self._head_bytes = self._head_received = 0

    def has_pending_input(self) -> bool:
        """Whether the socket holds bytes or an end of stream the event loop has not delivered.

        An idle connection that has either is not reusable; the loop may simply not have run
        its read callback yet (a busy worker), so asking the kernel is the only sure way. One
        ``poll`` system call, with no limit on the descriptor's number (``select`` has one).
        """
        if self._poller is None:
            return False
        try:
            return bool(self._poller.poll(0))
        except OSError:
            return True

    async def drain(self, timeout: float) -> None:
        """Wait until the transport's write buffer has room (flow control for streamed bodies)."""
        if self.closed:
            raise RemoteProtocolError("the upstream closed the connection")
        if not self._write_paused:
            return
        waiter = self.loop.create_future()
        self._drain_waiter = waiter
        timer = self.loop.call_later(
            timeout, _fail_waiter, waiter, ReadTimeout("the upstream stopped reading the body")
        )
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None

    def abort(self) -> None:
        self.reusable = False
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()

    def _broken(self, error: UpstreamError) -> None:
        response = self.response
        self.abort()
        if response is not None:
            response._fail(error)

    def _finished(self, response: Response) -> None:
        """The answer is complete: the connection goes back to its pool, or is closed."""
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self.response = None
        if self.reusable and response.keep_alive and not self.closed:
            self.pool.release(self)
        else:
            self.abort()

    @staticmethod
    def _reads_until_close(response: Response) -> bool:
        """Whether the body is framed by the end of the connection (no length, not chunked)."""
        if response.status in (204, 304):
            return False
        for name, value in response.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                return False
            if lowered == b"transfer-encoding" and b"chunked" in value.lower():
                return False
        return True


class _Pool:
    """Idle keep-alive connections to one origin, most recently used last."""

    __slots__ = ("_sweeper", "client", "idle", "origin")

    def __init__(self, client: "Client", origin: Origin):
        self.client = client
        self.origin = origin
        self.idle: list[_Connection] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, now: float) -> _Connection | None:
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

    def release(self, connection: _Connection) -> None:
        idle = self.idle
        connection.idle_since = connection.loop.time()
        idle.append(connection)
        if len(idle) > self.client.max_idle_per_origin:
            idle.pop(0).abort()
        if self._sweeper is None:
            self._sweeper = connection.loop.call_later(self.client.idle_expiry, self._sweep)

    def forget(self, connection: _Connection) -> None:
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
                while not response.headers_complete:
                    if response._error is not None:
                        raise response._error
                    await response._wait()
            except RemoteProtocolError:
                response._stop_timer()
                connection.abort()
                if reused and attempt == 1 and not response.received_any:
                    continue  # a stale idle connection: once more, on a new one
                raise
            except BaseException:
                response._stop_timer()
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

    async def _connect(self, loop, pool: _Pool, timeout: float) -> _Connection:
        origin = pool.origin
        tls = None
        if origin.scheme == "https":
            if self.ssl_context is None:
                self.ssl_context = default_ssl_context()
            tls = self.ssl_context
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, pool),
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
