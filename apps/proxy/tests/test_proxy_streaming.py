"""Bodies on the move: unbuffered, byte for byte (compressed ones too), and metered in full
however the stream ends -- split events, a client that leaves, an upstream that breaks."""

import asyncio
import gzip
import json
import time

import brotli
import httpx
import openai
import pytest

from apps.keys import keycache
from tests.fakes.provider import fake_text

PROVIDERS = ("openai", "anthropic", "google")
MESSAGES = [{"role": "user", "content": "Hi"}]
# (path on the upstream and below /p/<org>/<provider>, body), streamed and not. The OpenAI
# stream asks for usage itself, so Costr forwards its bytes untouched.
CALLS = {
    ("openai", True): (
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("openai", False): ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}),
    ("anthropic", True): (
        "/v1/messages",
        {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": MESSAGES, "stream": True},
    ),
    ("anthropic", False): (
        "/v1/messages",
        {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": MESSAGES},
    ),
    ("google", True): (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
    ),
    ("google", False): (
        "/v1beta/models/gemini-2.5-flash:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
    ),
}
# The fake's default usage, normalised: (input incl. cache, cached, output incl. reasoning).
FULL_USAGE = {
    "openai": (1200, 1000, 300),
    "anthropic": (50 + 200 + 1000, 1000, 300),
    "google": (1200, 1000, 180 + 120),
}


def _credential(provider: str, key: str) -> dict[str, str]:
    if provider == "openai":
        return {"authorization": f"Bearer {key}"}
    if provider == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return {"x-goog-api-key": key}


def _request(proxy, provider: str, stream: bool, knobs=None, *, direct: bool = False):
    """(method, url, headers, body bytes) of one call, through Costr or straight to the fake."""
    path, body = CALLS[provider, stream]
    if direct:
        url, headers = proxy.fake.url + path, _credential(provider, proxy.fake.keys[provider])
    else:
        url, headers = f"{proxy.base}/{provider}{path}", _credential(provider, proxy.token)
    return "POST", url, headers | (knobs or {}), json.dumps(body).encode()


def _usage(event) -> tuple:
    return event.input_tokens, event.cached_input_tokens, event.output_tokens


# ---------------------------------------------------------------------------------------------
# Unbuffered, intact


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_client_gets_the_first_chunk_before_the_upstream_sent_its_last(http, proxy, provider):
    method, url, headers, body = _request(
        proxy, provider, True, {"x-fake-chunks": "3", "x-fake-delay-ms": "80"}
    )

    with http.stream(method, url, headers=headers, content=body) as response:
        chunks = response.iter_raw()
        next(chunks)
        first_received_at = time.monotonic()
        for _ in chunks:
            pass

    sent_at = proxy.fake.sent_chunk_times[0]
    assert len(sent_at) >= 3
    assert first_received_at < sent_at[-1]
    [event] = proxy.events()
    assert (event.stream, event.outcome) == (True, "ok")
    assert _usage(event) == FULL_USAGE[provider]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_events_split_across_network_writes_arrive_intact_and_are_metered(http, proxy, provider):
    knobs = {"x-fake-split": "1"}
    method, url, headers, body = _request(proxy, provider, True, knobs, direct=True)
    expected = http.request(method, url, headers=headers, content=body).content
    method, url, headers, body = _request(proxy, provider, True, knobs)

    response = http.request(method, url, headers=headers, content=body)

    assert response.content == expected
    [event] = proxy.events()
    assert _usage(event) == FULL_USAGE[provider]


def test_split_events_with_the_usage_chunk_hidden_by_costr(http, proxy):
    """Costr asked for the usage chunk itself; its removal must survive any event split."""
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = _credential("openai", proxy.token) | {"x-fake-split": "1", "x-fake-chunks": "4"}

    response = http.post(f"{proxy.url('openai')}/chat/completions", headers=headers, json=body)

    data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert chunks and all(chunk["choices"] for chunk in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == fake_text(4)
    [event] = proxy.events()
    assert _usage(event) == FULL_USAGE["openai"]


def _decode(data: bytes, encoding: str) -> bytes:
    return gzip.decompress(data) if encoding == "gzip" else brotli.decompress(data)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("encoding", ["gzip", "br"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_compressed_response_reaches_the_client_compressed_byte_for_byte(
    http, proxy, provider, encoding, stream
):
    knobs = {"x-fake-encoding": encoding, "accept-encoding": "gzip, deflate, br"}
    method, url, headers, body = _request(proxy, provider, stream, knobs, direct=True)
    with http.stream(method, url, headers=headers, content=body) as direct:
        expected = b"".join(direct.iter_raw())
    method, url, headers, body = _request(proxy, provider, stream, knobs)

    with http.stream(method, url, headers=headers, content=body) as response:
        received = b"".join(response.iter_raw())

    assert response.headers["content-encoding"] == encoding
    assert received == expected
    assert b"Hello" in _decode(received, encoding)
    [event] = proxy.events()
    assert (event.stream, event.outcome) == (stream, "ok")
    assert _usage(event) == FULL_USAGE[provider]


def test_a_compressed_stream_with_the_usage_chunk_hidden_arrives_decoded(http, proxy):
    """Cutting an event out of a compressed stream would mean re-compressing it: the filtered
    stream goes out decoded, with content-encoding and content-length dropped."""
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = _credential("openai", proxy.token) | {
        "x-fake-encoding": "gzip",
        "accept-encoding": "gzip",
    }

    with http.stream(
        "POST", f"{proxy.url('openai')}/chat/completions", headers=headers, json=body
    ) as response:
        received = b"".join(response.iter_raw())

    assert "content-encoding" not in response.headers
    assert "content-length" not in response.headers
    assert b'"choices":[]' not in received and received.endswith(b"data: [DONE]\n\n")
    [event] = proxy.events()
    assert _usage(event) == FULL_USAGE["openai"]


# ---------------------------------------------------------------------------------------------
# Streams that end early


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_client_that_leaves_mid_stream_is_billed_in_full(http, proxy, provider):
    method, url, headers, body = _request(
        proxy, provider, True, {"x-fake-chunks": "6", "x-fake-delay-ms": "40"}
    )

    with http.stream(method, url, headers=headers, content=body) as response:
        chunks = response.iter_raw()
        received = next(chunks) + next(chunks)
    # Leaving the block with the body unread closes the connection.

    assert received
    [event] = proxy.events()
    assert (event.status, event.outcome) == (200, "client_disconnected")
    # The full counts only come at the end of the stream: Costr kept reading it.
    assert _usage(event) == FULL_USAGE[provider]


# What usage an upstream cut after three chunks leaves seen (input from message_start for
# Anthropic; running totals so far for Gemini; nothing for OpenAI, whose usage comes last).
USAGE_SEEN_BEFORE_A_CUT = {
    "openai": (None, None, None),
    "anthropic": (1250, 1000, 1),
    "google": (1200, 1000, 180 * 2 // 5 + 120),
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_upstream_cut_mid_stream_breaks_the_client_connection_too(http, proxy, provider):
    method, url, headers, body = _request(proxy, provider, True, {"x-fake-cut-after": "3"})

    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream(method, url, headers=headers, content=body) as response,
    ):
        assert response.status_code == 200
        for _ in response.iter_raw():
            pass

    [event] = proxy.events()
    assert (event.status, event.outcome) == (200, "upstream_disconnected")
    assert _usage(event) == USAGE_SEEN_BEFORE_A_CUT[provider]


def test_an_upstream_cut_in_a_whole_body_breaks_the_client_connection_too(http, proxy):
    method, url, headers, body = _request(proxy, "openai", False, {"x-fake-cut-after": "1"})

    with pytest.raises(httpx.RemoteProtocolError):
        http.request(method, url, headers=headers, content=body)

    [event] = proxy.events()
    assert (event.status, event.outcome) == (200, "upstream_disconnected")
    assert _usage(event) == (None, None, None)


def test_an_sdk_stream_cut_by_the_upstream_raises_instead_of_ending(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-fake-cut-after": "3"},
    )

    received = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(stream)

    assert len(received) <= 3  # the chunks sent before the cut, then the error
    [event] = proxy.events()
    assert event.outcome == "upstream_disconnected"


# ---------------------------------------------------------------------------------------------
# The one body change, switched off


def test_with_injection_off_the_body_reaches_the_upstream_untouched(http, proxy):
    organization = proxy.organization
    organization.inject_openai_stream_usage = False
    organization.save()
    keycache.invalidate_organization(organization.pk)
    body = (
        b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'
    )

    response = http.post(
        f"{proxy.url('openai')}/chat/completions",
        headers=_credential("openai", proxy.token),
        content=body,
    )

    assert response.status_code == 200
    assert proxy.fake.last_request.body == body
    [event] = proxy.events()
    assert (event.stream, event.outcome) == (True, "ok")
    assert _usage(event) == (None, None, None)


# ---------------------------------------------------------------------------------------------
# Async SDK clients


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_async_openai(sdk, proxy, stream):
    async def call() -> str:
        async with sdk.openai(proxy.url("openai"), proxy.token, asynchronous=True) as client:
            if not stream:
                completion = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES
                )
                return completion.choices[0].message.content
            chunks = [
                chunk
                async for chunk in await client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, stream=True
                )
            ]
            assert all(chunk.choices for chunk in chunks)  # the usage chunk stayed hidden
            return "".join(chunk.choices[0].delta.content or "" for chunk in chunks)

    assert asyncio.run(call()) == fake_text()
    [event] = proxy.events()
    assert (event.stream, event.outcome) == (stream, "ok")
    assert _usage(event) == FULL_USAGE["openai"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_async_anthropic(sdk, proxy, stream):
    async def call() -> str:
        call = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": MESSAGES}
        async with sdk.anthropic(proxy.url("anthropic"), proxy.token, asynchronous=True) as client:
            if stream:
                async with client.messages.stream(**call) as events:
                    message = await events.get_final_message()
            else:
                message = await client.messages.create(**call)
            return message.content[0].text

    assert asyncio.run(call()) == fake_text()
    [event] = proxy.events()
    assert (event.stream, event.outcome) == (stream, "ok")
    assert _usage(event) == FULL_USAGE["anthropic"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_async_google_genai(sdk, proxy, stream):
    async def call() -> str:
        client = sdk.google(proxy.url("google"), proxy.token).aio
        try:
            if not stream:
                response = await client.models.generate_content(
                    model="gemini-2.5-flash", contents="Hi"
                )
                return response.text
            chunks = await client.models.generate_content_stream(
                model="gemini-2.5-flash", contents="Hi"
            )
            return "".join([chunk.text or "" async for chunk in chunks])
        finally:
            await client.aclose()

    assert asyncio.run(call()) == fake_text()
    [event] = proxy.events()
    assert (event.stream, event.outcome) == (stream, "ok")
    assert _usage(event) == FULL_USAGE["google"]
