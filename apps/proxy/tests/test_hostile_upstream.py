"""An upstream that misbehaves on purpose cannot hurt Costr or another tenant (DESIGN.md,
Promise 10 and "Limits").

- Desync: bytes after a complete answer, or on an idle pooled connection, never become the
  next request's answer; that connection is closed, never reused.
- Slow and endless heads: a response head over 64 KiB, or one trickled for longer than the read
  timeout, is cut; the proxy answers 502/504 in the provider's shape.
- Slow bodies: each wait for body bytes is bounded by the read timeout, trickle or stall.

The upstreams here are raw sockets: on the test's own event loop (``Server``) where the bytes
matter, or on a thread (``ThreadedUpstream``) where the client's loop must be blocked while the
upstream goes on, or where the real proxy (its own server thread) is the client.
"""

import asyncio
import socket
import threading
import time

import pytest
import uvloop

from apps.proxy import http1
from apps.proxy.http1 import Client, Origin
from apps.proxy.tests.test_upstream import OK, Server, fetch

FIRST = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Answer: first\r\n\r\nfirst"
STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Answer: stray\r\n\r\nstray"
SECOND = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Answer: second\r\n\r\nsecond"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Runs a coroutine to completion on a fresh loop of either kind (the workers run uvloop)."""

    def runner(coroutine):
        if request.param == "uvloop":
            return uvloop.run(coroutine)
        return asyncio.run(coroutine)

    return runner


class ThreadedUpstream:
    """A raw TCP upstream on its own thread: ``handler(upstream, conn, sock)`` per connection.

    Its own thread keeps it sending while the client's event loop is blocked, and lets the
    proxy's server thread reach it. ``conn`` counts connections from 0. Handlers wait with
    ``pause``, which the end of the test cuts short.
    """

    def __init__(self, handler):
        self.handler = handler
        self.connections = 0
        self.heads: list[tuple[int, bytes]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.origin = Origin.parse(self.url)
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._stopping = threading.Event()

    def __enter__(self):
        accepting = threading.Thread(target=self._accept, daemon=True)
        accepting.start()
        self._threads.append(accepting)
        return self

    def __exit__(self, *exc_info):
        self._stopping.set()
        self._listener.close()
        for sock in self._sockets:
            with _quiet():
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def read_head(self, conn: int, sock: socket.socket) -> bytes | None:
        """One request head (requests here have no body), or None when the client left."""
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                part = sock.recv(65536)
            except OSError:
                return None
            if not part:
                return None
            data += part
        self.heads.append((conn, data))
        return data

    def _accept(self):
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            conn = self.connections
            self.connections += 1
            self._sockets.append(sock)
            thread = threading.Thread(target=self._serve, args=(conn, sock), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn, sock):
        with _quiet():
            self.handler(self, conn, sock)


class _quiet:
    """Ignores the client going away mid-conversation: that is what several tests provoke."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        return kind is not None and issubclass(kind, OSError)


# ---------------------------------------------------------------------------------------------
# Desync: one answer per request, never more


def test_a_second_response_in_the_same_read_is_nobodys_answer(run):
    """The upstream answers the first request twice, in one write: the answer keeps its own
    headers, and the next request goes on a new connection and gets its own answer."""

    async def handler(server, conn, reader, writer):
        answered = 0
        while await server.read_request(conn, reader) is not None:
            writer.write(FIRST + STRAY if answered == 0 and conn == 0 else SECOND)
            answered += 1
            await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            first = await fetch(client, server.origin)
            second = await fetch(client, server.origin)
            await client.aclose()
            return server, first, second

    server, (first, first_body), (second, second_body) = run(scenario())
    assert (first.header(b"x-answer"), first_body) == (b"first", b"first")
    assert (second.header(b"x-answer"), second_body) == (b"second", b"second")
    assert [conn for conn, _, _ in server.requests] == [0, 1]


def test_a_started_second_response_cannot_swallow_the_next_answer(run):
    """A stray head promising a body: the next request's answer must not become that body."""
    stray_head = b"HTTP/1.1 200 OK\r\nContent-Length: 80\r\nX-Answer: stray\r\n\r\nsmuggled"

    async def handler(server, conn, reader, writer):
        answered = 0
        while await server.read_request(conn, reader) is not None:
            writer.write(FIRST + stray_head if answered == 0 and conn == 0 else SECOND)
            answered += 1
            await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            first = await fetch(client, server.origin)
            second = await fetch(client, server.origin)
            await client.aclose()
            return server, first, second

    server, (first, first_body), (second, second_body) = run(scenario())
    assert (first.header(b"x-answer"), first_body) == (b"first", b"first")
    assert (second.header(b"x-answer"), second_body) == (b"second", b"second")
    assert [conn for conn, _, _ in server.requests] == [0, 1]


def test_garbage_after_a_complete_answer_costs_the_connection_not_the_answer(run):
    async def handler(server, conn, reader, writer):
        while await server.read_request(conn, reader) is not None:
            writer.write(FIRST + b"\x00garbage" if conn == 0 else SECOND)
            await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            first = await fetch(client, server.origin)
            second = await fetch(client, server.origin)
            await client.aclose()
            return server, first, second

    server, (_, first_body), (_, second_body) = run(scenario())
    assert (first_body, second_body) == (b"first", b"second")
    assert server.connections == 2


def _answers_then_strays(trailing: bytes | None):
    """First request on a connection: FIRST; a moment later, unasked, ``trailing`` (None: the
    upstream closes its end instead). Every other request: SECOND."""

    def handler(upstream, conn, sock):
        answered = 0
        while upstream.read_head(conn, sock) is not None:
            if conn == 0 and answered == 0:
                sock.sendall(FIRST)
                upstream.pause(0.05)
                if trailing is None:
                    sock.shutdown(socket.SHUT_WR)
                    return
                sock.sendall(trailing)
            else:
                sock.sendall(SECOND)
            answered += 1

    return handler


@pytest.mark.parametrize("trailing", [STRAY, None], ids=["stray-response", "end-of-stream"])
def test_what_reaches_an_idle_connection_before_the_loop_reads_it_is_never_an_answer(run, trailing):
    """A busy worker: the stray bytes (or the upstream's close) are in the kernel, not yet seen
    by the event loop, when the next request picks the connection from the pool."""

    async def scenario(upstream):
        client = Client()
        first = await fetch(client, upstream.origin, method="GET")
        time.sleep(0.3)  # the event loop is blocked while the upstream sends: a busy worker
        second = await fetch(client, upstream.origin, method="GET")
        await client.aclose()
        return first, second

    with ThreadedUpstream(_answers_then_strays(trailing)) as upstream:
        (_, first_body), (second, second_body) = run(scenario(upstream))
        heads = list(upstream.heads)
    assert first_body == b"first"
    assert (second.header(b"x-answer"), second_body) == (b"second", b"second")
    # The second request was never written to the connection that had bytes waiting.
    assert [conn for conn, _ in heads] == [0, 1]


@pytest.mark.parametrize("trailing", [STRAY, None], ids=["stray-response", "end-of-stream"])
def test_an_idle_connection_that_receives_anything_leaves_the_pool(run, trailing):
    async def scenario(upstream):
        client = Client()
        await fetch(client, upstream.origin, method="GET")
        idle_after_answer = client.idle_connections(upstream.origin)
        await asyncio.sleep(0.3)  # the loop runs: the stray bytes or the close arrive
        idle_after_stray = client.idle_connections(upstream.origin)
        await client.aclose()
        return idle_after_answer, idle_after_stray

    with ThreadedUpstream(_answers_then_strays(trailing)) as upstream:
        assert run(scenario(upstream)) == (1, 0)


# ---------------------------------------------------------------------------------------------
# Response heads: bounded in size and in time


def _endless_head(line: bytes, *, one_line: bool):
    """Sends a status line, then header bytes without end (up to 4 MiB, then it goes quiet)."""

    def handler(upstream, conn, sock):
        upstream.read_head(conn, sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n" + (b"X-Endless: " if one_line else b""))
        for _ in range(4 * 1024 * 1024 // len(line)):
            sock.sendall(line)
        upstream.pause(5)

    return handler


@pytest.mark.parametrize("one_line", [False, True], ids=["many-lines", "one-line"])
def test_an_endless_response_head_is_cut_at_its_limit(run, one_line):
    line = b"a" * 1024 if one_line else b"X-Filler: " + b"a" * 1000 + b"\r\n"

    async def scenario(upstream):
        client = Client()
        with pytest.raises(http1.RemoteProtocolError) as caught:
            await client.request(
                "GET", upstream.origin, b"/", [], b"", connect_timeout=5, read_timeout=2
            )
        await client.aclose()
        return caught.value

    with ThreadedUpstream(_endless_head(line, one_line=one_line)) as upstream:
        error = run(scenario(upstream))
    assert "head is over" in str(error)


def test_a_head_just_under_the_limit_is_read(run):
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    lines = (http1.MAX_RESPONSE_HEAD_BYTES - 100) // len(filler)
    response = b"HTTP/1.1 200 OK\r\n" + filler * lines + b"Content-Length: 2\r\n\r\nok"

    async def handler(server, conn, reader, writer):
        while await server.read_request(conn, reader) is not None:
            writer.write(response)
            await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            result = await fetch(client, server.origin)
            await client.aclose()
            return result

    answer, body = run(scenario())
    assert (len(answer.headers), body) == (lines + 1, b"ok")


def test_a_trickled_head_is_bounded_by_the_read_timeout_as_a_whole(run):
    """Each header byte comes well within the read timeout, but the head as a whole does not."""

    def handler(upstream, conn, sock):
        upstream.read_head(conn, sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n")
        for byte in b"X-Slow: " + b"a" * 40:
            sock.sendall(bytes([byte]))
            upstream.pause(0.05)
        sock.sendall(b"\r\nContent-Length: 2\r\n\r\nok")

    async def scenario(upstream):
        client = Client()
        with pytest.raises(http1.ReadTimeout):
            await client.request(
                "GET", upstream.origin, b"/", [], b"", connect_timeout=5, read_timeout=0.5
            )
        await client.aclose()

    with ThreadedUpstream(handler) as upstream:
        run(scenario(upstream))


def test_a_body_trickled_slower_than_the_read_timeout_times_out(run):
    """The read timeout bounds each wait for body bytes, however the body began."""

    def handler(upstream, conn, sock):
        upstream.read_head(conn, sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nx")
        for _ in range(20):
            upstream.pause(0.4)
            sock.sendall(b"x")

    async def scenario(upstream):
        client = Client()
        response = await client.request(
            "GET", upstream.origin, b"/", [], b"", connect_timeout=5, read_timeout=0.2
        )
        received = await response.read()
        with pytest.raises(http1.ReadTimeout):
            while await response.read():
                pass
        response.close()
        await client.aclose()
        return received

    with ThreadedUpstream(handler) as upstream:
        assert run(scenario(upstream)) == b"x"


def test_a_pooled_connection_still_serves_after_the_hostile_checks(run):
    """The checks cost nothing to an upstream that behaves: one connection, many answers."""

    async def handler(server, conn, reader, writer):
        while await server.read_request(conn, reader) is not None:
            writer.write(OK)
            await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            bodies = [(await fetch(client, server.origin))[1] for _ in range(5)]
            await client.aclose()
            return server, bodies

    server, bodies = run(scenario())
    assert bodies == [b"hello"] * 5
    assert server.connections == 1
