"""Every endpoint a client may call through Costr: metered ones with exact usage, unmetered and
unknown ones forwarded and recorded with tokens null, and the wire left as the client made it --
path, query, headers -- with the provider's response headers and only Costr's own added."""

import json
import socket

import pytest
from google.genai import types

from apps.keys import keycache, tasks
from apps.keys.models import ProviderKey, ProxyToken
from tests.fakes.provider import fake_text

MESSAGES = [{"role": "user", "content": "Hi"}]
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def _tokens(event) -> tuple:
    return (
        event.input_tokens,
        event.cached_input_tokens,
        event.output_tokens,
        event.reasoning_tokens,
    )


def _assert_unmetered(event, endpoint: str, status: int = 200) -> None:
    # A provider's answer with an error status is an error whatever the endpoint (DESIGN.md).
    outcome = "upstream_error" if status >= 400 else "ok"
    assert (event.endpoint, event.status, event.outcome) == (endpoint, status, outcome)
    assert _tokens(event) == (None, None, None, None)


# ---------------------------------------------------------------------------------------------
# OpenAI


def test_openai_responses_api(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)

    response = client.responses.create(model="gpt-4.1", input="Hi")

    assert response.output_text == fake_text()
    [event] = proxy.events()
    assert (event.endpoint, event.model, event.stream) == ("responses", "gpt-4.1", False)
    assert _tokens(event) == (1200, 1000, 300, 120)


def test_openai_responses_api_streamed_takes_usage_from_response_completed(sdk, proxy):
    usage = {
        "input_tokens": 700,
        "input_tokens_details": {"cached_tokens": 300},
        "output_tokens": 90,
        "output_tokens_details": {"reasoning_tokens": 40},
        "total_tokens": 790,
    }
    client = sdk.openai(proxy.url("openai"), proxy.token)

    events = list(
        client.responses.create(
            model="gpt-4.1",
            input="Hi",
            stream=True,
            extra_headers={"x-fake-usage": json.dumps(usage)},
        )
    )

    assert events[-1].type == "response.completed"
    # The body went out untouched: the one body change is for chat streams only.
    assert "stream_options" not in proxy.fake.last_request.json()
    [event] = proxy.events()
    assert (event.endpoint, event.stream, event.outcome) == ("responses", True, "ok")
    assert _tokens(event) == (700, 300, 90, 40)


def test_openai_embeddings(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)

    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])

    assert len(result.data) == 2
    [event] = proxy.events()
    assert (event.endpoint, event.model) == ("embeddings", "text-embedding-3-small")
    assert (event.input_tokens, event.output_tokens) == (8, None)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_legacy_completions(sdk, proxy, stream):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    call = {"model": "gpt-3.5-turbo-instruct", "prompt": "Hi"}

    if stream:
        text = "".join(
            chunk.choices[0].text
            for chunk in client.completions.create(
                **call, stream=True, stream_options={"include_usage": True}
            )
            if chunk.choices
        )
    else:
        text = client.completions.create(**call).choices[0].text

    assert text == fake_text()
    [event] = proxy.events()
    assert (event.endpoint, event.stream) == ("completions", stream)
    assert _tokens(event) == (1200, 1000, 300, 120)


def test_openai_model_list_is_forwarded_and_recorded_unmetered(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)

    models = [model.id for model in client.models.list()]

    assert "gpt-4o-mini" in models
    [event] = proxy.events()
    _assert_unmetered(event, "other")
    assert (proxy.fake.last_request.method, event.stream) == ("GET", False)


# ---------------------------------------------------------------------------------------------
# Anthropic


def test_anthropic_messages_whole(sdk, proxy):
    client = sdk.anthropic(proxy.url("anthropic"), proxy.token)

    message = client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=MESSAGES)

    assert message.content[0].text == fake_text()
    [event] = proxy.events()
    assert (event.endpoint, event.model, event.stream) == ("messages", "claude-haiku-4-5", False)
    assert (event.input_tokens, event.cached_input_tokens) == (50 + 200 + 1000, 1000)
    assert (event.cache_write_tokens, event.cache_write_1h_tokens) == (200, 50)
    assert event.output_tokens == 300


def test_anthropic_count_tokens_is_recorded_unmetered(sdk, proxy):
    client = sdk.anthropic(proxy.url("anthropic"), proxy.token)

    counted = client.messages.count_tokens(model="claude-haiku-4-5", messages=MESSAGES)

    assert counted.input_tokens == 1250
    [event] = proxy.events()
    _assert_unmetered(event, "count_tokens")
    assert event.requested_model == "claude-haiku-4-5"


# ---------------------------------------------------------------------------------------------
# Gemini


def test_gemini_embed_content(http, proxy):
    response = http.post(
        f"{proxy.url('google')}/v1beta/models/gemini-embedding-001:embedContent",
        headers={"x-goog-api-key": proxy.token, "x-fake-usage": '{"promptTokenCount": 7}'},
        json={"content": {"parts": [{"text": "Hi"}]}},
    )

    assert response.status_code == 200 and response.json()["embedding"]["values"]
    [event] = proxy.events()
    assert (event.endpoint, event.requested_model) == ("embed", "gemini-embedding-001")
    assert event.input_tokens == 7


def test_gemini_batch_embed_contents_through_the_sdk(sdk, proxy):
    client = sdk.google(proxy.url("google"), proxy.token)

    result = client.models.embed_content(
        model="gemini-embedding-001",
        contents=["a", "b", "c"],
        config=types.EmbedContentConfig(
            http_options=types.HttpOptions(headers={"x-fake-usage": '{"promptTokenCount": 9}'})
        ),
    )

    assert len(result.embeddings) == 3
    assert proxy.fake.last_request.path.endswith(":batchEmbedContents")
    [event] = proxy.events()
    assert (event.endpoint, event.input_tokens) == ("embed", 9)


def test_gemini_count_tokens_is_recorded_unmetered(sdk, proxy):
    client = sdk.google(proxy.url("google"), proxy.token)

    counted = client.models.count_tokens(model="gemini-2.5-flash", contents="Hi")

    assert counted.total_tokens == 1200
    [event] = proxy.events()
    _assert_unmetered(event, "count_tokens")
    assert event.requested_model == "gemini-2.5-flash"


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_every_gemini_version_segment_is_routed_alike(sdk, proxy, version):
    client = sdk.google(proxy.url("google"), proxy.token, api_version=version)

    response = client.models.generate_content(model="gemini-2.5-flash", contents="Hi")

    assert response.text == fake_text()
    assert proxy.fake.last_request.path == f"/{version}/models/gemini-2.5-flash:generateContent"
    [event] = proxy.events()
    assert (event.endpoint, event.requested_model) == ("generate", "gemini-2.5-flash")
    assert _tokens(event) == (1200, 1000, 300, 120)


def test_a_gemini_key_in_the_query_is_replaced_in_place(http, proxy):
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    query = f"alt=sse&key={proxy.token}&note=a%2Fb+c%20d&empty=&flag"

    response = http.post(f"{proxy.url('google')}{path}?{query}", json=GEMINI_BODY)

    assert response.status_code == 200
    seen = proxy.fake.last_request
    fake_key = proxy.fake.keys["google"]
    assert seen.query_string == f"alt=sse&key={fake_key}&note=a%2Fb+c%20d&empty=&flag".encode()
    assert seen.header("x-goog-api-key") is None  # the key goes where the token was, only
    [event] = proxy.events()
    assert (event.endpoint, event.stream) == ("generate", True)
    assert _tokens(event) == (1200, 1000, 300, 120)


# ---------------------------------------------------------------------------------------------
# Unknown paths, and the path and query as received


UNKNOWN_PATHS = {
    "openai": ("GET", "/v1/fine_tuning/nothing-here"),
    "anthropic": ("POST", "/v1/nothing-here"),
    "google": ("POST", "/v1beta/models/gemini-2.5-flash:nothingHere"),
}


def _credential(provider: str, key: str) -> dict[str, str]:
    if provider == "openai":
        return {"authorization": f"Bearer {key}"}
    if provider == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return {"x-goog-api-key": key}


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_an_unknown_path_passes_through_and_is_recorded_unmetered(http, proxy, provider):
    method, path = UNKNOWN_PATHS[provider]
    body = b"{}" if method == "POST" else None
    fake = proxy.fake
    direct = http.request(
        method,
        fake.url + path,
        headers=_credential(provider, fake.keys[provider]),
        content=body,
    )
    fake.clear()

    response = http.request(
        method,
        f"{proxy.base}/{provider}{path}",
        headers=_credential(provider, proxy.token),
        content=body,
    )

    assert response.status_code == direct.status_code == 404
    assert response.content == direct.content
    assert fake.last_request.path == path
    [event] = proxy.events()
    _assert_unmetered(event, "other", status=404)


@pytest.mark.parametrize(
    "path",
    [
        "/v1beta/models/tunedModels%2Facme%3Av2:generateContent",
        "/v1beta/models/gemini-2.5-flash%3Aexp:generateContent",
        "/v1beta/models/a%20b%7Ec%25d:generateContent",
    ],
)
def test_percent_encoding_in_the_path_is_forwarded_as_received(http, proxy, path):
    response = http.post(
        f"{proxy.url('google')}{path}?x=%2F%3a",
        headers={"x-goog-api-key": proxy.token, "x-fake-echo": "1"},
        json=GEMINI_BODY,
    )

    echoed = response.json()
    assert echoed["raw_path"] == path
    assert echoed["query_string"] == "x=%2F%3a"
    assert proxy.events()[0].status == 200


def _raw_http(url: str, request_line: str, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 request written by hand: no client library gets to normalise the target."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    lines = [request_line, f"host: {host}:{port}", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_dot_segments_and_unusual_query_characters_are_forwarded_verbatim(proxy):
    target = "/v1/./models/../models?q='single'&a=%zz&b=!$*,;:@/?&c=%7e"
    slug = proxy.organization.slug

    received = _raw_http(
        proxy.base,
        f"GET /p/{slug}/openai{target} HTTP/1.1",
        {"authorization": f"Bearer {proxy.token}", "x-fake-echo": "1"},
    )

    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echoed = json.loads(body)
    path, _, query = target.partition("?")
    assert (echoed["raw_path"], echoed["query_string"]) == (path, query)


# ---------------------------------------------------------------------------------------------
# Headers, timings and last use


VOLATILE_RESPONSE_HEADERS = {"x-request-id", "request-id", "date"}
DJANGO_HEADERS = {
    "vary",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
    "set-cookie",
    "content-security-policy",
}


def test_response_headers_are_the_providers_plus_costrs_own(http, proxy):
    fake = proxy.fake
    call = {"model": "gpt-4o-mini", "messages": MESSAGES}
    direct = http.post(
        f"{fake.url}/v1/chat/completions",
        headers=_credential("openai", fake.keys["openai"]),
        json=call,
    )

    response = http.post(
        f"{proxy.url('openai')}/chat/completions",
        headers=_credential("openai", proxy.token),
        json=call,
    )
    refused = http.post(
        f"{proxy.url('openai')}/chat/completions",
        headers=_credential("openai", "costr_unknown"),
        json=call,
    )

    def comparable(headers):
        return {
            (name, value)
            for name, value in headers.multi_items()
            if name not in VOLATILE_RESPONSE_HEADERS
        }

    added = comparable(response.headers) - comparable(direct.headers)
    assert {name for name, _ in added} == {"x-costr-request-id", "x-costr-overhead-ms"}
    assert comparable(direct.headers) <= comparable(response.headers)
    assert response.content == direct.content
    for answer in (response, refused):
        assert not DJANGO_HEADERS & set(answer.headers.keys()), answer.headers
        assert answer.headers["x-costr-request-id"].startswith("req_")
        assert float(answer.headers["x-costr-overhead-ms"]) >= 0


def test_timings_are_recorded_and_ordered(http, proxy):
    """Overhead is Costr's own time, so the upstream's wait before its first byte is in the
    time to first byte and the latency, and never in the overhead."""
    wait_ms = 100
    response = http.post(
        f"{proxy.url('openai')}/chat/completions",
        headers=_credential("openai", proxy.token)
        | {"x-fake-first-byte-delay-ms": str(wait_ms), "x-fake-delay-ms": "20"},
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
    )

    assert response.status_code == 200
    [event] = proxy.events()
    assert None not in (event.latency_ms, event.ttfb_ms, event.overhead_ms)
    assert 0 <= event.overhead_ms <= event.latency_ms
    assert event.overhead_ms + wait_ms <= event.ttfb_ms + 1  # ms rounding
    assert wait_ms <= event.ttfb_ms <= event.latency_ms
    assert float(response.headers["x-costr-overhead-ms"]) == event.overhead_ms


def test_a_forwarded_request_notes_the_last_use_of_its_token_and_key(sdk, proxy, settings):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    client.models.list()

    # Uses are collected in memory and written in bulk, never on the request path.
    keycache.flush_uses()
    if settings.REDIS_URL:
        tasks.last_used_flush()

    organization = proxy.organization
    assert ProxyToken.objects.for_org(organization).get().last_used_at is not None
    used = ProviderKey.objects.for_org(organization).exclude(last_used_at=None)
    assert [key.provider for key in used] == ["openai"]
