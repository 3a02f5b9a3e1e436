"""The proxy's HTTP/1.1 upstream client (``costr/net/http1.py``) against real servers on
127.0.0.1, speaking raw HTTP/1.1 so each test controls the exact bytes: framing, keep-alive,
stale connections, early closes, timeouts, TLS, flow control, headers byte for byte.

Every test runs on the standard asyncio loop and on uvloop (what the workers run).
"""

import asyncio
import hashlib
import ssl

import pytest

from apps.proxy.app import upstream_failure
from costr.net import http1, http1_connection
from costr.net.http1 import Client, Origin
from tests.fakes.tls import self_signed_certificate

TIMEOUTS = {"connect_timeout": 5.0, "read_timeout": 5.0}


class Server:
    """A raw HTTP/1.1 server: ``handler(conn, reader, writer)`` per accepted connection.

    ``conn`` counts connections from 0; every request head it reads is kept in ``requests``
    as ``(conn, raw head bytes, body)``.
    """

    def __init__(self, handler, ssl_context=None):
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[tuple[int, bytes, bytes]] = []
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        self.origin = Origin.parse(f"{scheme}://127.0.0.1:{self.port}")
        return self

    async def __aexit__(self, *exc_info):
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _accept(self, reader, writer):
        conn = self.connections
        self.connections += 1
        self.tasks.add(asyncio.current_task())
        try:
            await self.handler(self, conn, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, conn, reader) -> tuple[bytes, bytes] | None:
        """One request (head, de-chunked body), or None when the client closed first."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lowered = head.lower()
        body = b""
        if b"transfer-encoding: chunked" in lowered:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += data[:-2]
        elif b"content-length:" in lowered:
            length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        self.requests.append((conn, head, body))
        return head, body


def keep_alive_handler(response: bytes):
    """Answers every request on a connection with the same bytes, until the client leaves."""

    async def handler(server, conn, reader, writer):
        while await server.read_request(conn, reader) is not None:
            writer.write(response)
            await writer.drain()

    return handler


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


async def fetch(client, origin, target=b"/", headers=(), body=b"", method="POST"):
    response = await client.request(method, origin, target, list(headers), body, **TIMEOUTS)
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    response.close()
    return response, b"".join(parts)


# ---------------------------------------------------------------------------------------------
# Keep-alive and response framing


def test_sequential_requests_reuse_one_connection(run):
    async def scenario():
        async with Server(keep_alive_handler(OK)) as server:
            client = Client()
            for _ in range(3):
                response, body = await fetch(client, server.origin)
                assert (response.status, body) == (200, b"hello")
            await client.aclose()
            return server

    server = run(scenario())
    assert server.connections == 1
    assert [conn for conn, _, _ in server.requests] == [0, 0, 0]


def test_a_chunked_response_is_read_whole_and_the_connection_reused(run):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n"
    )

    async def scenario():
        async with Server(keep_alive_handler(chunked)) as server:
            client = Client()
            first = await fetch(client, server.origin)
            second = await fetch(client, server.origin)
            await client.aclose()
            return server, first, second

    server, (response, body), (_, body_again) = run(scenario())
    assert body == body_again == b"hello world!"
    assert response.headers == [(b"Transfer-Encoding", b"chunked")]
    assert server.connections == 1


def test_a_content_length_response_ends_at_its_length(run):
    async def scenario():
        async with Server(keep_alive_handler(OK)) as server:
            client = Client()
            response, body = await fetch(client, server.origin)
            idle = client.idle_connections(server.origin)
            await client.aclose()
            return response, body, idle

    response, body, idle = run(scenario())
    assert body == b"hello"
    assert response.complete
    assert idle == 1


def test_a_response_without_length_is_read_until_close_and_not_reused(run):
    async def handler(server, conn, reader, writer):
        await server.read_request(conn, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"the end")
        await writer.drain()
        writer.close()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            first = await fetch(client, server.origin)
            second = await fetch(client, server.origin)
            await client.aclose()
            return server, first, second

    server, (_, body), (_, body_again) = run(scenario())
    assert body == body_again == b"until the end"
    assert server.connections == 2


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_a_connection_the_upstream_will_close_is_not_reused(run, response):
    async def handler(server, conn, reader, writer):
        # The server keeps the connection open: only the client's own rule stops the reuse.
        while await server.read_request(conn, reader) is not None:
            writer.write(response)
            await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            for _ in range(2):
                assert (await fetch(client, server.origin))[1] == b"hello"
            await client.aclose()
            return server

    server = run(scenario())
    assert server.connections == 2


def test_an_interim_100_continue_is_skipped(run):
    response = b"HTTP/1.1 100 Continue\r\n\r\n" + OK

    async def scenario():
        async with Server(keep_alive_handler(response)) as server:
            client = Client()
            first = await fetch(client, server.origin)
            second = await fetch(client, server.origin)
            await client.aclose()
            return server, first, second

    server, (first, body), (_, body_again) = run(scenario())
    assert (first.status, body, body_again) == (200, b"hello", b"hello")
    assert first.headers == [(b"Content-Length", b"5")]
    assert server.connections == 1


def test_a_head_response_ends_with_its_headers(run):
    async def scenario():
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        async with Server(keep_alive_handler(response)) as server:
            client = Client()
            head_response, body = await fetch(client, server.origin, method="HEAD")
            await client.aclose()
            return head_response, body

    response, body = run(scenario())
    assert (response.status, body) == (200, b"")
    assert response.headers == [(b"Content-Length", b"1000")]


def test_an_idle_connection_past_its_expiry_is_not_reused(run):
    async def scenario():
        async with Server(keep_alive_handler(OK)) as server:
            client = Client(idle_expiry=0.05)
            await fetch(client, server.origin)
            await asyncio.sleep(0.15)
            await fetch(client, server.origin)
            await client.aclose()
            return server

    assert run(scenario()).connections == 2


# ---------------------------------------------------------------------------------------------
# Stale connections and retries


def test_a_stale_pooled_connection_is_retried_once_on_a_new_one(run):
    """The upstream drops an idle connection just as it is reused: the request goes again."""

    async def handler(server, conn, reader, writer):
        if conn == 0:
            await server.read_request(conn, reader)
            writer.write(OK)
            await writer.drain()
            await server.read_request(conn, reader)
            writer.transport.abort()  # the second request on this connection: no answer
            return
        while await server.read_request(conn, reader) is not None:
            writer.write(OK)
            await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            await fetch(client, server.origin, body=b"first")
            response, body = await fetch(client, server.origin, body=b"second")
            await client.aclose()
            return server, response, body

    server, response, body = run(scenario())
    assert (response.status, body) == (200, b"hello")
    assert [(conn, body) for conn, _, body in server.requests] == [
        (0, b"first"),
        (0, b"second"),
        (1, b"second"),
    ]


def test_no_retry_once_a_response_byte_came_back(run):
    async def handler(server, conn, reader, writer):
        await server.read_request(conn, reader)
        writer.write(OK)
        await writer.drain()
        await server.read_request(conn, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-")
        await writer.drain()
        writer.transport.abort()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            await fetch(client, server.origin)
            with pytest.raises(http1_connection.RemoteProtocolError):
                await fetch(client, server.origin, body=b"once")
            await client.aclose()
            return server

    server = run(scenario())
    assert server.connections == 1
    assert [body for _, _, body in server.requests].count(b"once") == 1


def test_a_body_cut_short_raises_and_the_connection_is_not_reused(run):
    async def handler(server, conn, reader, writer):
        await server.read_request(conn, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            response = await client.request("GET", server.origin, b"/", [], b"", **TIMEOUTS)
            received = await response.read()
            with pytest.raises(http1_connection.RemoteProtocolError):
                await response.read()
            idle = client.idle_connections(server.origin)
            await client.aclose()
            return received, idle

    received, idle = run(scenario())
    assert received == b"only part"
    assert idle == 0


def test_a_fresh_connection_closed_before_answering_is_not_retried(run):
    async def handler(server, conn, reader, writer):
        await server.read_request(conn, reader)
        writer.transport.abort()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            with pytest.raises(http1_connection.RemoteProtocolError) as caught:
                await fetch(client, server.origin)
            await client.aclose()
            return server, caught.value

    server, error = run(scenario())
    assert server.connections == 1
    assert upstream_failure(error, answered=False).status == 502


# ---------------------------------------------------------------------------------------------
# Failures the proxy answers 502/504


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_refused_connection_is_the_502_failure(run):
    origin = Origin.parse(f"http://127.0.0.1:{_closed_port()}")

    async def scenario():
        client = Client()
        with pytest.raises(http1_connection.ConnectError) as caught:
            await fetch(client, origin)
        await client.aclose()
        return caught.value

    error = run(scenario())
    assert not isinstance(error, http1_connection.UpstreamTimeout)
    failure = upstream_failure(error, answered=False)
    assert (failure.status, failure.code) == (502, "upstream_unreachable")


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_an_upstream_that_goes_quiet_is_the_504_failure(run, stage):
    async def handler(server, conn, reader, writer):
        await server.read_request(conn, reader)
        if stage == "body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf ")
            await writer.drain()
        await asyncio.sleep(10)

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            with pytest.raises(http1_connection.ReadTimeout) as caught:
                response = await client.request(
                    "POST", server.origin, b"/", [], b"x", connect_timeout=5, read_timeout=0.1
                )
                assert await response.read() == b"half "
                await response.read()
            await client.aclose()
            return caught.value

    error = run(scenario())
    failure = upstream_failure(error, answered=stage == "body")
    assert (failure.status, failure.code) == (504, "upstream_timeout")


def test_the_read_timeout_bounds_each_wait_not_the_whole_body(run):
    """A slow stream that never goes quiet for the read timeout is read to its end."""

    async def handler(server, conn, reader, writer):
        await server.read_request(conn, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(10):
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.08)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            response = await client.request(
                "GET", server.origin, b"/", [], b"", connect_timeout=5, read_timeout=0.25
            )
            body = b""
            while chunk := await response.read():
                body += chunk
            response.close()
            await client.aclose()
            return body

    assert run(scenario()) == b"x" * 10


# ---------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory):
    cert_path, key_path = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = http1.default_ssl_context()
    client_context.load_verify_locations(cafile=cert_path)
    return server_context, client_context


def test_tls_to_a_trusted_server_works_and_keeps_the_connection(run, tls_contexts):
    server_context, client_context = tls_contexts

    async def scenario():
        async with Server(keep_alive_handler(OK), ssl_context=server_context) as server:
            client = Client(ssl_context=client_context)
            first = await fetch(client, server.origin)
            second = await fetch(client, server.origin)
            await client.aclose()
            return server, first, second

    server, (_, body), (_, body_again) = run(scenario())
    assert body == body_again == b"hello"
    assert server.connections == 1
    assert server.requests[0][1].startswith(b"POST / HTTP/1.1\r\nHost: 127.0.0.1:")


def test_tls_to_an_untrusted_server_is_a_connect_error(run, tls_contexts):
    server_context, _ = tls_contexts

    async def scenario():
        async with Server(keep_alive_handler(OK), ssl_context=server_context) as server:
            client = Client()  # the default context: certifi's CAs, not this certificate
            with pytest.raises(http1_connection.ConnectError) as caught:
                await fetch(client, server.origin)
            await client.aclose()
            return server, caught.value

    server, error = run(scenario())
    assert server.requests == []
    assert isinstance(error.__cause__, ssl.SSLError)


# ---------------------------------------------------------------------------------------------
# Flow control


def test_a_slow_reader_makes_the_client_stop_reading_instead_of_buffering(run):
    total = 64 * 1024 * 1024
    piece = bytes(range(256)) * 256  # 64 KiB

    async def handler(server, conn, reader, writer):
        await server.read_request(conn, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()
            server.sent += len(piece)

    async def scenario():
        async with Server(handler) as server:
            server.sent = 0
            client = Client()
            response = await client.request("GET", server.origin, b"/", [], b"", **TIMEOUTS)
            digest = hashlib.sha256()
            received = len(first := await response.read())
            digest.update(first)
            await asyncio.sleep(0.5)  # a slow client: nothing read for a while
            held, sent_while_slow = response.buffered, server.sent
            while chunk := await response.read():
                received += len(chunk)
                digest.update(chunk)
            await client.aclose()
            return held, sent_while_slow, received, digest.hexdigest()

    held, sent_while_slow, received, digest = run(scenario())
    # One socket read may land past the high-water mark before reading pauses.
    assert held <= http1_connection.HIGH_WATER + 256 * 1024
    assert sent_while_slow < total
    assert received == total
    assert digest == hashlib.sha256(piece * (total // len(piece))).hexdigest()


# ---------------------------------------------------------------------------------------------
# Headers and bodies byte for byte


def test_response_headers_come_back_as_sent_duplicates_order_and_case(run):
    response = (
        b"HTTP/1.1 200 OK\r\n"
        b"Set-Cookie: a=1; Path=/\r\n"
        b"x-request-id: abc\r\n"
        b"set-cookie: b=2\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )

    async def scenario():
        async with Server(keep_alive_handler(response)) as server:
            client = Client()
            result = await fetch(client, server.origin)
            await client.aclose()
            return result

    answer, _ = run(scenario())
    assert answer.headers == [
        (b"Set-Cookie", b"a=1; Path=/"),
        (b"x-request-id", b"abc"),
        (b"set-cookie", b"b=2"),
        (b"Content-Length", b"5"),
    ]


def test_the_request_goes_out_exactly_as_given_and_no_cookie_is_ever_sent(run):
    setting_cookies = (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: __cf_bm=tenantA; Path=/\r\nContent-Length: 0\r\n\r\n"
    )
    headers = [(b"authorization", b"Bearer sk-one"), (b"X-Mixed-Case", b"v"), (b"accept", b"*/*")]

    async def scenario():
        async with Server(keep_alive_handler(setting_cookies)) as server:
            client = Client()
            await fetch(client, server.origin, b"/v1/a/../b?x=%2F&y", headers, b'{"a":1}')
            await fetch(client, server.origin, b"/again", [(b"authorization", b"Bearer sk-two")])
            await client.aclose()
            return server

    server = run(scenario())
    host = b"127.0.0.1:%d" % server.port
    assert [(head, body) for _, head, body in server.requests] == [
        (
            b"POST /v1/a/../b?x=%2F&y HTTP/1.1\r\nHost: " + host + b"\r\n"
            b"authorization: Bearer sk-one\r\nX-Mixed-Case: v\r\naccept: */*\r\n"
            b"Content-Length: 7\r\n\r\n",
            b'{"a":1}',
        ),
        (
            b"POST /again HTTP/1.1\r\nHost: " + host + b"\r\n"
            b"authorization: Bearer sk-two\r\nContent-Length: 0\r\n\r\n",
            b"",
        ),
    ]


def test_a_given_content_length_that_no_longer_matches_the_body_is_corrected_in_place(run):
    async def scenario():
        async with Server(keep_alive_handler(OK)) as server:
            client = Client()
            headers = [(b"content-length", b"2"), (b"x-after", b"1")]
            await fetch(client, server.origin, b"/", headers, b"longer")
            await client.aclose()
            return server

    [(_, head, body)] = run(scenario()).requests
    assert head.endswith(b"\r\ncontent-length: 6\r\nx-after: 1\r\n\r\n")
    assert body == b"longer"


def test_a_get_without_body_sends_no_length(run):
    async def scenario():
        async with Server(keep_alive_handler(OK)) as server:
            client = Client()
            await fetch(client, server.origin, b"/models", method="GET")
            await client.aclose()
            return server

    server = run(scenario())
    [(_, head, _)] = server.requests
    assert head == b"GET /models HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % server.port


def test_a_header_value_with_a_line_break_is_refused_before_sending(run):
    async def scenario():
        async with Server(keep_alive_handler(OK)) as server:
            client = Client()
            with pytest.raises(ValueError):
                await fetch(client, server.origin, headers=[(b"x", b"a\r\nInjected: 1")])
            await client.aclose()
            return server

    assert run(scenario()).requests == []


@pytest.mark.parametrize("with_length", [False, True], ids=["chunked", "content-length"])
def test_a_streamed_body_is_sent_as_it_comes(run, with_length):
    parts = [b"first ", b"", b"second ", b"third"]
    whole = b"".join(parts)

    async def body():
        for part in parts:
            yield part
            await asyncio.sleep(0.01)

    async def scenario():
        async with Server(keep_alive_handler(OK)) as server:
            client = Client()
            headers = [(b"content-length", b"%d" % len(whole))] if with_length else []
            result = await fetch(client, server.origin, b"/up", headers, body())
            await client.aclose()
            return server, result

    server, (_, answer) = run(scenario())
    [(_, head, received)] = server.requests
    assert answer == b"hello"
    assert received == whole
    framing = b"content-length: %d" % len(whole) if with_length else b"Transfer-Encoding: chunked"
    assert head.endswith(b"\r\n" + framing + b"\r\n\r\n")


def test_an_error_from_a_streamed_body_passes_through_and_the_connection_is_dropped(run):
    class ClientLeft(Exception):
        pass

    async def body():
        yield b"beginning"
        raise ClientLeft

    async def handler(server, conn, reader, writer):
        await reader.read()  # whatever arrives, until the client closes

    async def scenario():
        async with Server(handler) as server:
            client = Client()
            with pytest.raises(ClientLeft):
                await client.request("POST", server.origin, b"/", [], body(), **TIMEOUTS)
            idle = client.idle_connections(server.origin)
            await client.aclose()
            return idle

    assert run(scenario()) == 0


@pytest.mark.parametrize(
    ("url", "host", "port", "host_header", "prefix"),
    [
        ("https://api.openai.com", "api.openai.com", 443, b"api.openai.com", b""),
        ("https://API.openai.com:443/", "api.openai.com", 443, b"api.openai.com", b""),
        ("http://127.0.0.1:8000/prefix/", "127.0.0.1", 8000, b"127.0.0.1:8000", b"/prefix"),
        ("http://[::1]:8080", "::1", 8080, b"[::1]:8080", b""),
        ("https://bücher.example", "xn--bcher-kva.example", 443, b"xn--bcher-kva.example", b""),
    ],
)
def test_an_origin_setting_gives_the_address_the_host_header_and_the_path_prefix(
    url, host, port, host_header, prefix
):
    origin = Origin.parse(url)
    assert (origin.host, origin.port, origin.host_header, origin.path_prefix) == (
        host,
        port,
        host_header,
        prefix,
    )


@pytest.mark.parametrize("url", ["ftp://example.com", "api.openai.com", "https://"])
def test_an_origin_setting_that_is_not_http_is_refused(url):
    with pytest.raises(ValueError):
        Origin.parse(url)
