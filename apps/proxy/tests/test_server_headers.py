"""``date`` and ``server``: a proxied answer carries the provider's only, every answer that is
Costr's own (the proxy's errors, the server's refusals, Django's pages, the health check)
carries exactly one of each, the server's. Served as the Procfile and ``make run`` serve Costr,
with ``costr.server.HttpToolsProtocol``.
"""

import httpx
import pytest

from apps.proxy.tests.test_hostile_upstream import ThreadedUpstream
from apps.proxy.tests.test_proxy_limits import _parse, _raw_request

PROVIDER_DATE = b"Mon, 01 Jan 2024 00:00:00 GMT"
PROVIDER_SERVER = b"provider-edge/1.0"
MODELS = b'{"object":"list","data":[]}'


@pytest.fixture
def costr_protocol_server(costr_server):
    """The session's Costr, served with ``costr.server.HttpToolsProtocol`` and uvicorn's
    default ``date`` and ``server`` headers, as in production."""
    return costr_server.url


def _provider(upstream, conn, sock):
    """Answers every request on the connection as a provider behind its own edge would."""
    while upstream.read_head(conn, sock) is not None:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nDate: "
            + PROVIDER_DATE
            + b"\r\nServer: "
            + PROVIDER_SERVER
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(MODELS)
            + MODELS
        )


def _one_each_of_the_servers(response: httpx.Response) -> None:
    assert response.headers.get_list("server") == ["uvicorn"]
    [date] = response.headers.get_list("date")
    assert date.endswith(" GMT") and date != PROVIDER_DATE.decode()


def test_a_proxied_answer_carries_the_providers_date_and_server_only(
    proxy, settings, costr_protocol_server
):
    with ThreadedUpstream(_provider) as upstream, httpx.Client(timeout=10) as client:
        settings.COSTR_UPSTREAM_OPENAI = upstream.url
        url = f"{costr_protocol_server}/p/{proxy.organization.slug}/openai/v1/models"
        headers = {"authorization": f"Bearer {proxy.token}"}
        # Twice on one connection: the second request's cycle is a new one.
        answers = [client.get(url, headers=headers) for _ in range(2)]

    for response in answers:
        assert response.status_code == 200
        assert response.content == MODELS
        assert response.headers.get_list("date") == [PROVIDER_DATE.decode()]
        assert response.headers.get_list("server") == [PROVIDER_SERVER.decode()]
        assert "x-costr-request-id" in response.headers


def test_costr_s_own_proxy_errors_carry_one_date_and_one_server(proxy, costr_protocol_server):
    with httpx.Client(timeout=10) as client:
        base = f"{costr_protocol_server}/p/{proxy.organization.slug}"
        refused = client.get(f"{base}/openai/v1/models", headers={"authorization": "Bearer no"})
        unknown = client.get(f"{base}/nowhere/v1/models")
        # The same connection then serves a page of Costr's own: its defaults are intact.
        page = client.get(f"{costr_protocol_server}/healthz")

    assert (refused.status_code, refused.headers["x-costr-error"]) == (401, "invalid_token")
    assert (unknown.status_code, unknown.headers["x-costr-error"]) == (404, "unknown_provider")
    for response in (refused, unknown, page):
        _one_each_of_the_servers(response)


def test_django_pages_carry_one_date_and_one_server(costr_protocol_server):
    response = httpx.get(f"{costr_protocol_server}/security/", timeout=10)

    assert response.status_code == 200
    _one_each_of_the_servers(response)


def test_the_protocol_s_own_refusal_carries_one_date_and_one_server(proxy, costr_protocol_server):
    path = f"/p/{proxy.organization.slug}/openai/v1/models"
    head = f"GET {path} HTTP/1.1\r\nhost: x\r\nx-padding: {'p' * 70_000}\r\n\r\n".encode()

    answer = _raw_request(costr_protocol_server, head)

    status, _, _ = _parse(answer)
    assert status == 431
    head_lines = answer.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert sum(line.startswith(b"date:") for line in head_lines) == 1
    assert [line for line in head_lines if line.startswith(b"server:")] == [b"server: uvicorn"]
