"""The proxy's front door holds every limit in DESIGN.md ("Limits"), through the real server.

Methods the providers' APIs do not define, paths that climb above the upstream's, heads over
64 KiB and slow clients are answered by Costr in the provider's error shape, marked
``X-Costr-Error``, and forward nothing (so the provider key never travels with them).
Connection-named headers are hop-by-hop both ways, and an upstream cookie never reaches the
client. Raw sockets are used where an HTTP client would tidy the request (dot-segments) or
could not send it at all (a head that never ends).
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.asgi_server import ThreadedServer

ROOT = Path(__file__).resolve().parents[3]


def _raw_request(url: str, head: bytes, body: bytes = b"", *, pause: float = 0) -> bytes:
    """Send ``head`` (and ``body``, after ``pause`` seconds) on a new connection; the whole
    answer, read until the server closes or 10 s pass."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        if pause:
            time.sleep(pause)
        if body:
            sock.sendall(body)
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            answer += data
            if _complete(answer):
                break
    return answer


def _complete(answer: bytes) -> bool:
    head, separator, body = answer.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(separator) and match is not None and len(body) >= int(match.group(1))


def _parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _get_head(path: str, proxy, extra: bytes = b"") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {proxy.token}\r\nconnection: close\r\n".encode()
        + extra
        + b"\r\n"
    )


def _path(proxy, rest: str) -> str:
    return f"/p/{proxy.organization.slug}/{rest}"


def _server_url(proxy) -> str:
    return proxy.base.split("/p/")[0]


def _assert_nothing_recorded(http, proxy) -> None:
    """A sentinel's event is stored after any event of what came before it (one writer, in
    order), so only the sentinel's event existing proves the refusals recorded nothing."""
    sentinel = http.get(
        f"{proxy.url('openai')}/models", headers={"authorization": f"Bearer {proxy.token}"}
    )
    assert sentinel.status_code == 200
    events = proxy.events()
    assert [event.request_id for event in events] == [sentinel.headers["x-costr-request-id"]]


# ---------------------------------------------------------------------------------------------
# Methods


@pytest.mark.parametrize("method", ["PUT", "PATCH", "TRACE", "PROPFIND", "OPTIONS", "HEAD"])
def test_a_method_the_apis_do_not_define_is_405_and_never_forwarded(http, proxy, method):
    response = http.request(
        method,
        f"{proxy.url('openai')}/chat/completions",
        headers={"authorization": f"Bearer {proxy.token}"},
    )

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST, DELETE"
    assert response.headers["x-costr-error"] == "method_not_allowed"
    if method != "HEAD":
        assert response.json()["error"]["code"] == "method_not_allowed"
    assert proxy.fake.requests == []
    _assert_nothing_recorded(http, proxy)


@pytest.mark.parametrize("provider", ["anthropic", "google"])
def test_the_405_is_in_the_providers_error_shape(http, proxy, provider):
    credential = {"anthropic": "x-api-key", "google": "x-goog-api-key"}[provider]
    response = http.request(
        "TRACE", f"{proxy.url(provider)}/v1/anything", headers={credential: proxy.token}
    )

    assert response.status_code == 405
    body = response.json()
    if provider == "anthropic":
        assert body["type"] == "error" and body["error"]["message"]
    else:
        assert body["error"]["code"] == 405
        assert body["error"]["details"][0]["reason"] == "method_not_allowed"
    assert proxy.fake.requests == []


def test_get_post_and_delete_are_forwarded(http, proxy):
    headers = {"authorization": f"Bearer {proxy.token}", "x-fake-echo": "1"}
    for method in ("GET", "POST", "DELETE"):
        response = http.request(method, f"{proxy.url('openai')}/files/file-1", headers=headers)
        assert response.status_code == 200, method
        assert response.json()["method"] == method
    assert len(proxy.events(expected=3)) == 3


# ---------------------------------------------------------------------------------------------
# Hop-by-hop headers, both ways


def test_headers_the_client_names_in_connection_are_not_forwarded(http, proxy):
    response = http.get(
        f"{proxy.url('openai')}/models",
        headers={
            "authorization": f"Bearer {proxy.token}",
            "connection": "keep-alive, X-Hop-Secret",
            "x-hop-secret": "for the proxy only",
            "x-end-to-end": "kept",
            "x-fake-echo": "1",
        },
    )

    assert response.status_code == 200
    forwarded = {name.lower() for name, _ in response.json()["headers"]}
    assert "x-end-to-end" in forwarded
    assert "x-hop-secret" not in forwarded


class _CookieUpstream:
    """An upstream that answers with cookies and a header it names in ``Connection:``."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b'{"object":"list","data":[]}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"keep-alive, x-upstream-hop"),
                    (b"x-upstream-hop", b"for costr only"),
                    (b"set-cookie", b"__cf_bm=abc; path=/; HttpOnly"),
                    (b"set-cookie", b"session=1; path=/"),
                    (b"set-cookie2", b"old=1"),
                    (b"x-request-id", b"req_upstream"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def test_response_headers_named_in_connection_and_cookies_never_reach_the_client(
    http, proxy, settings
):
    with ThreadedServer(_CookieUpstream()) as upstream:
        settings.COSTR_UPSTREAM_OPENAI = upstream.url
        response = http.get(
            f"{proxy.url('openai')}/models", headers={"authorization": f"Bearer {proxy.token}"}
        )

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req_upstream"
    assert "x-upstream-hop" not in response.headers
    assert "set-cookie" not in response.headers
    assert "set-cookie2" not in response.headers
    assert not http.cookies


# ---------------------------------------------------------------------------------------------
# Dot-segments


@pytest.mark.parametrize(
    "rest",
    [
        "openai/../../x",
        "openai/v1/../../x",
        "openai/%2e%2e/%2E%2E/x",
        "openai/.%2e/x",
        "openai/..%2f..%2fx",
        "openai/..\\x",
        "openai/..;/x",
        "anthropic/v1/../../../admin",
    ],
)
def test_a_path_that_climbs_above_the_upstreams_is_refused_400(http, proxy, rest):
    answer = _raw_request(_server_url(proxy), _get_head(_path(proxy, rest), proxy))

    status, headers, body = _parse(answer)
    assert status == 400
    assert headers["x-costr-error"] == "invalid_path"
    assert json.loads(body)
    assert proxy.fake.requests == []


def test_a_dot_segment_that_stays_below_the_prefix_is_forwarded_as_received(http, proxy):
    rest = "openai/v1/files/../models/%2e/x%2Fy"
    answer = _raw_request(
        _server_url(proxy), _get_head(_path(proxy, rest), proxy, b"x-fake-echo: 1\r\n")
    )

    status, _, body = _parse(answer)
    assert status == 200
    assert json.loads(body)["raw_path"] == "/v1/files/../models/%2e/x%2Fy"


# ---------------------------------------------------------------------------------------------
# Attribution limits


def test_a_property_name_over_64_characters_is_refused_400(http, proxy):
    response = http.get(
        f"{proxy.url('openai')}/models",
        headers={"authorization": f"Bearer {proxy.token}", "x-costr-property-" + "n" * 65: "v"},
    )

    assert response.status_code == 400
    assert response.headers["x-costr-error"] == "invalid_property_name"
    assert "64" in response.json()["error"]["message"]
    assert proxy.fake.requests == []


def test_property_names_up_to_64_are_recorded_lowercase_and_values_cut_to_255(http, proxy):
    response = http.get(
        f"{proxy.url('openai')}/models",
        headers={
            "authorization": f"Bearer {proxy.token}",
            "X-Costr-Property-" + "N" * 64: "v" * 300,
            "X-Costr-Property-Feature": "Chat",
        },
    )

    assert response.status_code == 200
    [event] = proxy.events()
    assert event.properties == {"n" * 64: "v" * 255, "feature": "Chat"}


# ---------------------------------------------------------------------------------------------
# Request head and slow clients


def test_a_request_head_over_64_kib_is_431_in_the_providers_shape(http, proxy):
    """The proxy's own check, which holds under any server (the test server runs uvicorn's
    stock protocol, which bounds nothing)."""
    response = http.get(
        f"{proxy.url('anthropic')}/v1/models",
        headers={"x-api-key": proxy.token, "x-padding": "p" * (64 * 1024)},
    )

    assert response.status_code == 431
    assert response.headers["x-costr-error"] == "head_too_large"
    assert response.json()["type"] == "error"
    assert proxy.fake.requests == []


def test_a_request_head_just_under_64_kib_is_forwarded(http, proxy):
    response = http.get(
        f"{proxy.url('openai')}/models",
        headers={"authorization": f"Bearer {proxy.token}", "x-padding": "p" * (60 * 1024)},
    )

    assert response.status_code == 200


@pytest.fixture
def protected_server(costr_server, settings):
    """The session's Costr (served with ``costr.server.HttpToolsProtocol``, as ``make run`` and
    the Procfile's worker serve it) with a short head read timeout, read per connection."""
    settings.COSTR_PROXY_HEADER_READ_TIMEOUT = 0.5
    return costr_server.url


def test_a_head_that_never_ends_gets_408_from_the_protocol(proxy, protected_server):
    head = f"POST {_path(proxy, 'openai/v1/chat/completions')} HTTP/1.1\r\nhost: x\r\n"
    answer = _raw_request(protected_server, head.encode() + b"x-slow: 1")

    status, headers, body = _parse(answer)
    assert status == 408
    assert headers["x-costr-error"] == "header_read_timeout"
    assert json.loads(body)["error"]["code"] == "header_read_timeout"  # openai's shape
    assert proxy.fake.requests == []


def test_each_head_on_a_kept_alive_connection_has_the_read_timeout(proxy, protected_server):
    """The timeout runs from each head's first byte, not from the connection's start, and the
    time a kept-alive connection waits idle between requests is not a head's."""
    host, port = protected_server.removeprefix("http://").split(":")
    path = _path(proxy, "openai/v1/models")
    first = f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {proxy.token}\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(first.encode())
        answer = b""
        while not _complete(answer):
            data = sock.recv(65536)
            assert data, "the connection closed before the first answer was complete"
            answer += data
        assert _parse(answer)[0] == 200
        time.sleep(0.8)  # idle, past the 0.5 s head timeout: not a head's time
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n".encode())  # and no more
        second = b""
        while not _complete(second):
            data = sock.recv(65536)
            if not data:
                break
            second += data

    status, headers, _ = _parse(second)
    assert status == 408
    assert headers["x-costr-error"] == "header_read_timeout"


def test_an_endless_head_gets_431_before_it_is_complete(proxy, protected_server):
    head = f"GET {_path(proxy, 'google/v1beta/models')} HTTP/1.1\r\nhost: x\r\n".encode()
    padding = b"".join(b"x-pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(70))

    answer = _raw_request(protected_server, head + padding)  # and no blank line, ever

    status, headers, body = _parse(answer)
    assert status == 431
    assert headers["x-costr-error"] == "head_too_large"
    assert json.loads(body)["error"]["details"][0]["reason"] == "head_too_large"
    assert proxy.fake.requests == []


def test_a_whole_head_within_the_timeout_is_served_by_the_protocol(proxy, protected_server):
    answer = _raw_request(protected_server, _get_head(_path(proxy, "openai/v1/models"), proxy))

    assert _parse(answer)[0] == 200


def test_a_body_that_stops_arriving_gets_408_and_is_not_forwarded(http, proxy, settings):
    settings.COSTR_PROXY_BODY_READ_TIMEOUT = 0.3
    head = (
        f"POST {_path(proxy, 'openai/v1/chat/completions')} HTTP/1.1\r\nhost: x\r\n"
        f"authorization: Bearer {proxy.token}\r\ncontent-type: application/json\r\n"
        "content-length: 100\r\n\r\n"
    ).encode()

    answer = _raw_request(_server_url(proxy), head + b'{"model":')

    status, headers, body = _parse(answer)
    assert status == 408
    assert headers["x-costr-error"] == "body_read_timeout"
    assert json.loads(body)["error"]["code"] == "body_read_timeout"
    assert proxy.fake.requests == []
    _assert_nothing_recorded(http, proxy)


# ---------------------------------------------------------------------------------------------
# Access log


def test_a_gemini_key_in_the_query_never_reaches_the_access_log(tmp_path):
    """A real uvicorn, as ``make run`` starts it but with its access log on (the Procfile's
    gunicorn workers log access): a token in ``?key=`` is redacted from every line."""
    token = "costr_" + "s3cret" * 7
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # A database of its own (empty: the token lookup fails, and the line is logged all the
    # same), so that the test database has no client but the test run.
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="costr.settings.test",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        PYTHONUNBUFFERED="1",
    )
    env.pop("REDIS_URL", None)
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "costr.asgi:application", "--port", str(port)),
                *("--http", "costr.server:HttpToolsProtocol", "--lifespan", "off"),
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while b"Uvicorn running on" not in log.read_bytes() and server.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            for path in (
                f"/p/some-org/google/v1beta/models/gemini-2.5-flash:generateContent?key={token}",
                f"/healthz?alt=sse&key={token}&x=1",
            ):
                _raw_request(
                    url, f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
                )
            deadline = time.monotonic() + 10
            while log.read_text().count('HTTP/1.1"') < 2:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            server.terminate()
            server.wait(timeout=10)

    text = log.read_text()
    assert "s3cret" not in text
    assert "generateContent?key=[redacted]" in text
    assert "/healthz?alt=sse&key=[redacted]&x=1" in text
