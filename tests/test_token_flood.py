"""Floods of invalid tokens against a real Costr (the ASGI app under uvicorn): the proxy and the
API answer 429 with Retry-After past the per-address limit, in their own error shapes, while
other addresses and valid tokens are still served; with Redis, two processes share the count.

Client addresses are real: each client binds its own 127.0.0.x source address, which the server
sees as the socket's peer (no header involved).
"""

import logging
import random
import subprocess
import sys

import httpx
import pytest

from apps.proxy.tests.conftest import (  # noqa: F401 - fixtures, used by name
    committed_db,
    costr_server,
    make_organization,
    proxy,
)
from costr import throttle
from tests.outage import ROOT, child_env, free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 5
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
BAD_TOKEN = "costr_" + "0" * 43


@pytest.fixture
def token_limit(settings):
    settings.COSTR_THROTTLE_INVALID_TOKENS_PER_ADDRESS = f"{LIMIT}/minute"


def _addresses() -> tuple[str, str]:
    """Two loopback source addresses of this test's own."""
    first, second = random.sample(range(2, 255), 2)
    return f"127.0.{random.randrange(1, 255)}.{first}", f"127.0.{random.randrange(1, 255)}.{second}"


def _client(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def _chat(client: httpx.Client, url: str, token: str) -> httpx.Response:
    return client.post(
        f"{url}/chat/completions", headers={"authorization": f"Bearer {token}"}, json=CHAT
    )


def _events(client: httpx.Client, origin: str, token: str) -> httpx.Response:
    return client.get(f"{origin}/api/v1/events/", headers={"authorization": f"Bearer {token}"})


def _assert_proxy_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-costr-error"] == "rate_limited"
    assert response.json()["error"]["code"] == "rate_limited"  # OpenAI's error shape


def _assert_api_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.json()["error"]["code"] == "rate_limited"


def test_a_bad_token_flood_on_the_proxy_is_throttled_per_address(
    proxy,  # noqa: F811
    make_organization,  # noqa: F811
    token_limit,
    caplog,
):
    caplog.set_level(logging.INFO)
    attacker, bystander = _addresses()
    url = proxy.url("openai")
    unseen_org, unseen = make_organization(providers=("openai",), scopes=("proxy",))
    unseen_url = url.replace(f"/p/{proxy.organization.slug}/", f"/p/{unseen_org.slug}/")
    with _client(attacker) as flood, _client(bystander) as other:
        # A token this process has served: another organization behind the attacker's address.
        assert _chat(other, url, proxy.token).status_code == 200
        answers = [_chat(flood, url, BAD_TOKEN).status_code for _ in range(LIMIT)]
        assert answers == [401] * LIMIT
        _assert_proxy_throttled(_chat(flood, url, BAD_TOKEN))
        before = len(proxy.fake.requests)
        # A blocked address gets no look-ups: a valid token this process has not met yet is
        # refused, one it already knows is still served.
        _assert_proxy_throttled(_chat(flood, unseen_url, unseen.plaintext))
        assert len(proxy.fake.requests) == before
        assert _chat(flood, url, proxy.token).status_code == 200
        assert len(proxy.fake.requests) == before + 1

        # Another address: a valid token is served, a bad one is only refused.
        assert _chat(other, unseen_url, unseen.plaintext).status_code == 200
        assert _chat(other, url, BAD_TOKEN).status_code == 401
        for _ in range(20):
            _assert_proxy_throttled(_chat(flood, url, BAD_TOKEN))

    # Costr logs the flood once, when its address is blocked, not once per refused request
    # (the server's access log has its line per request, as for any request).
    logged = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("costr") and attacker in r.getMessage()
    ]
    assert len(logged) == 1, logged
    assert "past its limit" in logged[0]


def test_a_bad_token_flood_on_the_api_is_throttled_per_address(
    costr_server,  # noqa: F811
    make_organization,  # noqa: F811
    token_limit,
):
    _, created = make_organization(providers=(), scopes=("read",))
    attacker, bystander = _addresses()
    with _client(attacker) as flood, _client(bystander) as other:
        answers = [_events(flood, costr_server.url, BAD_TOKEN) for _ in range(LIMIT)]
        assert [a.status_code for a in answers] == [401] * LIMIT
        assert {a.json()["error"]["code"] for a in answers} == {"invalid_token"}
        _assert_api_throttled(_events(flood, costr_server.url, BAD_TOKEN))
        _assert_api_throttled(_events(flood, costr_server.url, created.plaintext))

        assert _events(other, costr_server.url, created.plaintext).status_code == 200
        assert _events(other, costr_server.url, BAD_TOKEN).status_code == 401


def test_the_proxy_and_the_api_count_one_address_together(proxy, token_limit):  # noqa: F811
    attacker, _ = _addresses()
    origin = proxy.base.split("/p/")[0]
    with _client(attacker) as flood:
        for _ in range(LIMIT):
            assert _chat(flood, proxy.url("openai"), BAD_TOKEN).status_code == 401
        _assert_api_throttled(_events(flood, origin, BAD_TOKEN))


def test_with_redis_two_processes_share_the_count(
    proxy,  # noqa: F811
    make_organization,  # noqa: F811
    settings,
    redis_url,
    token_limit,
    tmp_path,
):
    """The test's own server and a second uvicorn process, both on one Redis: a flood at the first
    is refused at the second at once, which still serves other addresses."""
    _, reader = make_organization(providers=(), scopes=("read",))
    port = free_port()
    env = child_env(
        settings,
        REDIS_URL=redis_url,
        COSTR_THROTTLE_INVALID_TOKENS_PER_ADDRESS=f"{LIMIT}/minute",
        COSTR_UPSTREAM_OPENAI=proxy.fake.url,
        COSTR_UPSTREAM_ANTHROPIC=proxy.fake.url,
        COSTR_UPSTREAM_GOOGLE=proxy.fake.url,
    )
    log = tmp_path / "second.log"
    with open(log, "wb") as output:
        second = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "costr.asgi:application", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    attacker, bystander = _addresses()
    second_url = f"http://127.0.0.1:{port}/p/{proxy.organization.slug}/openai/v1"
    try:
        wait_until(lambda: b"startup complete" in log.read_bytes(), message=log.read_text)
        with _client(attacker) as flood, _client(bystander) as other:
            for _ in range(LIMIT):
                assert _chat(flood, proxy.url("openai"), BAD_TOKEN).status_code == 401
            # The second process never saw this address, and refuses it on its first try.
            _assert_proxy_throttled(_chat(flood, second_url, BAD_TOKEN))
            _assert_api_throttled(_events(flood, f"http://127.0.0.1:{port}", BAD_TOKEN))

            assert _chat(other, second_url, proxy.token).status_code == 200
            assert _events(other, f"http://127.0.0.1:{port}", reader.plaintext).status_code == 200
    finally:
        second.terminate()
        second.wait(30)
        throttle.reset_all()
