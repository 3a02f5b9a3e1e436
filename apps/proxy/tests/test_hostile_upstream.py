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
import functools
import gzip
import socket
import struct
import threading
import time
import zlib

import brotli
import pytest
import zstandard

from apps.proxy.tests.test_upstream import OK, Server, fetch
from costr.net import decoding, http1_connection
from costr.net.decoding import content_decoder
from costr.net.http1 import Client, Origin

FIRST = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Answer: first\r\n\r\nfirst"
STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Answer: stray\r\n\r\nstray"
SECOND = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Answer: second\r\n\r\nsecond"


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


# After the first answer, in the same write: a whole second response, or a head promising a body
# that the next request's answer must not become.
STRAY_AFTER_AN_ANSWER = {
    "second_response": STRAY,
    "started_response": b"HTTP/1.1 200 OK\r\nContent-Length: 80\r\nX-Answer: stray\r\n\r\nsmuggled",
}


@pytest.mark.parametrize("stray", STRAY_AFTER_AN_ANSWER.values(), ids=STRAY_AFTER_AN_ANSWER)
def test_a_response_after_the_answer_is_nobodys_answer(run, stray):
    """The upstream follows the first answer with more in one write: the answer keeps its own
    headers, and the next request goes on a new connection and gets its own answer."""

    async def handler(server, conn, reader, writer):
        answered = 0
        while await server.read_request(conn, reader) is not None:
            writer.write(FIRST + stray if answered == 0 and conn == 0 else SECOND)
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
        with pytest.raises(http1_connection.RemoteProtocolError) as caught:
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
    lines = (http1_connection.MAX_RESPONSE_HEAD_BYTES - 100) // len(filler)
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
        with pytest.raises(http1_connection.ReadTimeout):
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
        with pytest.raises(http1_connection.ReadTimeout):
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


# ---------------------------------------------------------------------------------------------
# Decompression bombs: bounded per chunk and per response, the bytes still flow

MIB = 1024 * 1024
BOMB_HEAD = (
    b'{"id":"msg_bomb","type":"message","role":"assistant","model":"claude-bomb","content":[]'
)
BOMB_TAIL = b',"usage":{"input_tokens":11,"output_tokens":7}}'


@functools.lru_cache(maxsize=4)
def gzip_bomb(filler_mib: int) -> bytes:
    """A valid gzip body: an Anthropic message whose usage comes after ``filler_mib`` MiB of
    spaces (valid JSON whitespace), compressed about a thousandfold.

    Built from one compressed MiB repeated: after a full flush a deflate compressor forgets its
    history, so the same MiB compresses to the same bytes every time.
    """
    block = b" " * MIB
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(BOMB_HEAD) + compressor.flush(zlib.Z_FULL_FLUSH)
    filler = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(BOMB_TAIL) + compressor.flush()
    crc = zlib.crc32(BOMB_HEAD)
    for _ in range(filler_mib):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(BOMB_TAIL, crc)
    size = len(BOMB_HEAD) + filler_mib * MIB + len(BOMB_TAIL)
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + filler * filler_mib + tail + trailer


def anthropic_reader(content_encoding="gzip"):
    from apps.proxy.providers import get_adapter
    from apps.proxy.providers.base import RequestInfo

    adapter = get_adapter("anthropic")
    return adapter.usage_reader(RequestInfo("messages"), 200, "application/json", content_encoding)


def test_the_bomb_is_a_valid_body_whose_usage_a_whole_decode_would_find():
    """Guards the tests below: the bomb is well-formed, and a small one is read for usage."""
    assert gzip.decompress(gzip_bomb(3)) == BOMB_HEAD + b" " * (3 * MIB) + BOMB_TAIL
    reader = anthropic_reader()
    reader.feed(gzip_bomb(3))
    usage = reader.finish()
    assert (usage.input_tokens, usage.output_tokens) == (11, 7)
    assert reader.decoded_bytes == len(BOMB_HEAD) + 3 * MIB + len(BOMB_TAIL)


def test_one_chunk_of_a_bomb_decodes_into_a_bounded_amount():
    chunk = gzip_bomb(2048)[: 64 * 1024]  # 64 KiB that would inflate to about 64 MiB
    decoder = content_decoder("gzip")
    decoded = sum(len(piece) for piece in decoder.decode(chunk))
    assert decoded == decoder.decoded_bytes
    # A 64 KiB chunk's allowance: 1 MiB (the floor, and 16 times its size).
    assert decoded <= MIB


@pytest.mark.parametrize("chunk_size", [64 * 1024, 512], ids=["large-chunks", "small-chunks"])
def test_a_bomb_stops_the_reader_within_the_bound_and_leaves_no_usage(settings, chunk_size):
    """Large chunks fill the backlog; small ones each stay within their allowance, and the
    response's bound stops them."""
    settings.COSTR_PROXY_MAX_DECODED_BYTES = 16 * MIB
    body = gzip_bomb(256)  # 256 KiB compressed, 256 MiB decoded
    reader = anthropic_reader()
    for start in range(0, len(body), chunk_size):
        reader.feed(body[start : start + chunk_size])
    assert reader.finish() is None
    assert reader.decoded_bytes <= 16 * MIB + 1


def test_a_brotli_bomb_is_bounded_too(settings):
    settings.COSTR_PROXY_MAX_DECODED_BYTES = 16 * MIB
    body = brotli.compress(BOMB_HEAD + b" " * (256 * MIB) + BOMB_TAIL, quality=5)
    reader = anthropic_reader("br")
    reader.feed(body)  # a few hundred bytes: one chunk
    assert reader.finish() is None
    # brotli's output buffer may overshoot its limit by one piece.
    assert reader.decoded_bytes <= 16 * MIB + 2 * decoding.DECODED_PIECE_BYTES


def zstd_bomb(filler_mib: int, *, window_log: int | None = None) -> bytes:
    """A valid zstd body: the bomb's message with ``filler_mib`` MiB of spaces before its usage,
    compressed several thousandfold."""
    params = (
        zstandard.ZstdCompressionParameters.from_level(19, window_log=window_log)
        if window_log is not None
        else None
    )
    compressor = (
        zstandard.ZstdCompressor(compression_params=params)
        if params is not None
        else zstandard.ZstdCompressor(level=19)
    ).compressobj()
    parts = [compressor.compress(BOMB_HEAD)]
    block = b" " * MIB
    parts += [compressor.compress(block) for _ in range(filler_mib)]
    parts += [compressor.compress(BOMB_TAIL), compressor.flush()]
    return b"".join(parts)


def test_the_zstd_bomb_is_a_valid_body_whose_usage_a_whole_decode_would_find():
    body = zstd_bomb(3)
    expected = BOMB_HEAD + b" " * (3 * MIB) + BOMB_TAIL
    assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == expected
    reader = anthropic_reader("zstd")
    reader.feed(body)
    usage = reader.finish()
    assert (usage.input_tokens, usage.output_tokens) == (11, 7)
    assert reader.decoded_bytes == len(expected)


def test_one_chunk_of_a_zstd_bomb_decodes_into_a_bounded_amount():
    body = zstd_bomb(2048)  # 2 GiB decoded
    decoder = content_decoder("zstd")
    decoded = sum(len(piece) for piece in decoder.decode(body[: 64 * 1024]))
    assert decoded == decoder.decoded_bytes
    # A 64 KiB chunk's allowance: 1 MiB (the floor, and 16 times its size).
    assert decoded <= MIB


@pytest.mark.parametrize("chunk_size", [64 * 1024, 64], ids=["large-chunks", "small-chunks"])
def test_a_zstd_bomb_stops_the_reader_within_the_bound_and_leaves_no_usage(settings, chunk_size):
    settings.COSTR_PROXY_MAX_DECODED_BYTES = 16 * MIB
    body = zstd_bomb(256)  # 256 MiB decoded, a few KiB compressed
    reader = anthropic_reader("zstd")
    for start in range(0, len(body), chunk_size):
        reader.feed(body[start : start + chunk_size])
    assert reader.finish() is None
    assert reader.decoded_bytes <= 16 * MIB + 1


def test_a_zstd_bomb_that_arrives_whole_is_stopped_at_the_end_allowance():
    """Too small to fill the backlog, so the end of the body may decode its allowance, once."""
    decoder = content_decoder("zstd")
    body = zstd_bomb(64)
    assert len(body) < decoding.MAX_BACKLOG_BYTES
    decoded = sum(len(piece) for piece in decoder.decode(body))
    with pytest.raises(decoding.DecodedSizeExceeded):
        decoded += sum(len(piece) for piece in decoder.flush())
    assert decoder.decoded_bytes <= decoding.DECODE_FLOOR_BYTES + decoding.FINISH_ALLOWANCE_BYTES


def test_a_zstd_frame_asking_for_a_window_over_8_mib_is_refused():
    """RFC 9659 holds HTTP's zstd to an 8 MB window; a larger one would make every such
    response hold that much memory in the decoder."""
    within, beyond = zstd_bomb(1, window_log=23), zstd_bomb(1, window_log=24)
    decoder = content_decoder("zstd")
    assert sum(len(piece) for piece in decoder.decode(within)) > 0
    with pytest.raises(decoding.ContentDecodingError):
        list(content_decoder("zstd").decode(beyond))
    reader = anthropic_reader("zstd")
    reader.feed(beyond)
    assert reader.finish() is None


def test_a_large_real_body_is_read_whole_in_large_chunks():
    """Real JSON expands a few times: chunks of the size the proxy reads when it is behind
    (512 KiB) never fall behind the decoder's allowance, so usage is found."""
    numbers = ",\n".join(
        f"        {(index * 7919 % 100003) / 1e5 - 0.5:.17f}" for index in range(2**19)
    )
    body = BOMB_HEAD + b',"embedding":[' + numbers.encode() + b"]" + BOMB_TAIL
    compressed = gzip.compress(body, 6)
    reader = anthropic_reader()
    for start in range(0, len(compressed), 512 * 1024):
        reader.feed(compressed[start : start + 512 * 1024])
        assert reader.decoded_bytes > 0
    usage = reader.finish()
    assert (usage.input_tokens, usage.output_tokens) == (11, 7)
    assert reader.decoded_bytes == len(body)


# ---------------------------------------------------------------------------------------------
# Through the real proxy


def _answer_with(head: bytes, body: bytes, *, sent_first: threading.Event, go_on: threading.Event):
    """Answers the first request with ``head`` and half of ``body``, then waits for ``go_on``
    (the test's other request) before the rest, then closes."""

    def handler(upstream, conn, sock):
        upstream.read_head(conn, sock)
        half = len(body) // 2
        sock.sendall(head + body[:half])
        sent_first.set()
        go_on.wait(30)
        sock.sendall(body[half:])
        sock.shutdown(socket.SHUT_WR)
        upstream.pause(1)

    return handler


def _events_of(organization, expected: int):
    from apps.usage.metering import sink
    from apps.usage.models import UsageEvent

    deadline = time.monotonic() + 10
    while True:
        assert sink.flush(timeout=10)
        events = list(UsageEvent.objects.for_org(organization).order_by("timestamp", "id"))
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.02)


def test_a_gzip_bomb_through_the_proxy_flows_unchanged_bounded_and_harms_no_one(
    proxy, settings, monkeypatch, costr_server, make_organization
):
    import httpx

    from apps.proxy.providers import get_adapter

    body = gzip_bomb(2048)  # 2 MiB compressed, 2 GiB decoded
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    # The proxy's own reader, recorded as the proxy makes it (a spy: it changes nothing).
    adapter = get_adapter("anthropic")
    readers = []
    make_reader = adapter.usage_reader

    def recording_usage_reader(*args, **kwargs):
        readers.append(make_reader(*args, **kwargs))
        return readers[-1]

    monkeypatch.setattr(adapter, "usage_reader", recording_usage_reader)
    other_organization, other_token = make_organization(providers=("openai",))
    sent_first, other_done = threading.Event(), threading.Event()
    received = {}

    def bomb_client():
        with (
            httpx.Client(timeout=60) as client,
            client.stream(
                "POST",
                f"{proxy.url('anthropic')}/v1/messages",
                headers={"x-api-key": proxy.token, "anthropic-version": "2023-06-01"},
                json={"model": "claude-bomb", "max_tokens": 5, "messages": []},
            ) as response,
        ):
            received["status"] = response.status_code
            received["body"] = b"".join(response.iter_raw())

    handler = _answer_with(head, body, sent_first=sent_first, go_on=other_done)
    with ThreadedUpstream(handler) as upstream:
        settings.COSTR_UPSTREAM_ANTHROPIC = upstream.url
        client_thread = threading.Thread(target=bomb_client)
        client_thread.start()
        try:
            assert sent_first.wait(30)
            # Another tenant's request, on the same worker, while the bomb is half through.
            other = httpx.post(
                f"{costr_server.url}/p/{other_organization.slug}/openai/v1/chat/completions",
                headers={"authorization": f"Bearer {other_token.plaintext}"},
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                timeout=60,
            )
        finally:
            other_done.set()
            client_thread.join(60)

    assert other.status_code == 200
    assert received == {"status": 200, "body": body}
    [reader] = readers
    assert reader.decoded_bytes <= settings.COSTR_PROXY_MAX_DECODED_BYTES + 1
    [event] = proxy.events()
    assert (event.status, event.outcome, event.input_tokens, event.output_tokens) == (
        200,
        "ok",
        None,
        None,
    )
    [other_event] = _events_of(other_organization, 1)
    assert other_event.input_tokens is not None


def test_an_endless_response_head_is_answered_502_by_the_proxy(http, proxy, settings):
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    with ThreadedUpstream(_endless_head(line, one_line=False)) as upstream:
        settings.COSTR_UPSTREAM_ANTHROPIC = upstream.url
        settings.COSTR_UPSTREAM_READ_TIMEOUT = 3
        response = http.post(
            f"{proxy.url('anthropic')}/v1/messages",
            headers={"x-api-key": proxy.token, "anthropic-version": "2023-06-01"},
            json={"model": "claude-x", "max_tokens": 5, "messages": []},
        )
    assert response.status_code == 502
    assert response.headers["x-costr-error"] == "upstream_unreachable"
    assert response.json()["type"] == "error"
    [event] = proxy.events()
    assert (event.status, event.outcome) == (502, "upstream_error")


def test_a_body_trickled_slower_than_the_read_timeout_breaks_the_client_and_is_recorded(
    http, proxy, settings
):
    import httpx

    def handler(upstream, conn, sock):
        upstream.read_head(conn, sock)
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        for _ in range(20):
            upstream.pause(0.5)
            sock.sendall(b" ")

    with ThreadedUpstream(handler) as upstream:
        settings.COSTR_UPSTREAM_ANTHROPIC = upstream.url
        settings.COSTR_UPSTREAM_READ_TIMEOUT = 0.2
        with (
            pytest.raises(httpx.RemoteProtocolError),
            http.stream(
                "POST",
                f"{proxy.url('anthropic')}/v1/messages",
                headers={"x-api-key": proxy.token, "anthropic-version": "2023-06-01"},
                json={"model": "claude-x", "max_tokens": 5, "messages": []},
            ) as response,
        ):
            assert response.status_code == 200
            response.read()
    [event] = proxy.events()
    assert (event.status, event.outcome) == (200, "upstream_disconnected")
