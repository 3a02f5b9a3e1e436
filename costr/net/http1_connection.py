"""One upstream HTTP/1.1 connection and the answer it reads, for the client in ``http1``.

A ``Connection`` is the asyncio protocol of one TCP (or TLS) socket with its llhttp parser; the
parser's callbacks fill the ``Response`` the caller reads the body from. Everything that decides
what an answer is lives here: the one-answer-per-request rule (stray bytes end the connection),
the response head's size limit, flow control both ways (``HIGH_WATER`` on reading, ``drain``
for a streamed request body), the read timeout, and the errors a request can end in. The pool,
the request head and the sending of a request are ``http1``'s; that module's docstring says why
this client exists and what it guarantees as a whole.
"""

import asyncio
import collections
import contextlib
import select
import socket
from typing import Protocol

import httptools

HIGH_WATER = 256 * 1024
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


class ConnectionPool(Protocol):
    """What a connection needs of the pool it belongs to (``http1``'s per-origin pool)."""

    def release(self, connection: "Connection") -> None: ...

    def forget(self, connection: "Connection") -> None: ...


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

    def __init__(self, connection: "Connection", read_timeout: float):
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

    async def head_received(self) -> None:
        """Wait until the status and headers are in; raises UpstreamError if they never come."""
        while not self.headers_complete:
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
        self.stop_timer()

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

    def stop_timer(self) -> None:
        """The read timeout no longer applies (the answer is given up)."""
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


class Connection(asyncio.Protocol):
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

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: ConnectionPool):
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
