"""The official SDKs through Costr to the fake provider: identical behaviour, exact usage."""

import json

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

pytestmark = pytest.mark.django_db(transaction=True)

# Headers that legitimately differ between two otherwise identical SDK calls, and the hop-by-hop
# header a proxy must not forward (each connection has its own).
VOLATILE = {"x-stainless-retry-count", "idempotency-key", "x-stainless-read-timeout", "connection"}


def _comparable(recorded):
    headers = sorted((k, v) for k, v in recorded.headers if k.decode() not in VOLATILE)
    return recorded.method, recorded.raw_path, recorded.query_string, headers, recorded.body


def _openai(base_url, api_key, **kwargs):
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, **kwargs)


def test_openai_chat_through_costr_is_what_the_provider_would_have_seen_and_said(proxy):
    fake = proxy.fake
    call = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    direct_client = _openai(f"{fake.url}/v1", fake.keys["openai"])
    direct = direct_client.chat.completions.with_raw_response.create(**call).parse()
    seen_direct = fake.last_request
    fake.clear()

    client = _openai(proxy.url("openai"), proxy.token)
    raw = client.chat.completions.with_raw_response.create(
        **call, extra_headers={"X-Costr-Customer": "acme", "X-Costr-Property-Feature": "chat"}
    )
    proxied = raw.parse()
    seen_proxied = fake.last_request

    assert proxied.model_dump() == direct.model_dump()
    # The fake saw the same request, minus Costr's headers: the provider key, not the token.
    assert _comparable(seen_proxied) == _comparable(seen_direct)
    assert seen_proxied.header("authorization") == f"Bearer {fake.keys['openai']}"
    assert not any(k.startswith(b"x-costr-") for k, _ in seen_proxied.headers)
    assert proxy.token.encode() not in repr(seen_proxied.headers).encode() + seen_proxied.body
    assert raw.headers["x-costr-request-id"].startswith("req_")
    assert float(raw.headers["x-costr-overhead-ms"]) >= 0

    [event] = proxy.events()
    usage = direct.usage
    assert event.request_id == raw.headers["x-costr-request-id"]
    assert (event.provider, event.endpoint, event.model, event.stream) == (
        "openai",
        "chat",
        direct.model,
        False,
    )
    assert (event.status, event.outcome) == (200, "ok")
    assert event.input_tokens == usage.prompt_tokens
    assert event.cached_input_tokens == usage.prompt_tokens_details.cached_tokens
    assert event.output_tokens == usage.completion_tokens
    assert event.reasoning_tokens == usage.completion_tokens_details.reasoning_tokens
    assert event.customer.external_id == "acme"
    assert event.properties == {"feature": "chat"}


def test_openai_stream_without_include_usage_is_metered_and_the_client_never_sees_the_extra_chunk(
    proxy,
):
    usage = {
        "prompt_tokens": 500,
        "completion_tokens": 80,
        "total_tokens": 580,
        "prompt_tokens_details": {"cached_tokens": 200},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    client = _openai(proxy.url("openai"), proxy.token)

    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        extra_headers={"x-fake-usage": json.dumps(usage)},
    )
    chunks = list(stream)

    assert chunks and all(chunk.choices for chunk in chunks)
    sent = proxy.fake.last_request.json()
    assert sent["stream_options"] == {"include_usage": True}
    [event] = proxy.events()
    assert (event.stream, event.outcome) == (True, "ok")
    assert (event.input_tokens, event.cached_input_tokens) == (500, 200)
    assert (event.output_tokens, event.reasoning_tokens) == (80, 30)


def test_openai_stream_that_asked_for_usage_is_forwarded_untouched(proxy):
    client = _openai(proxy.url("openai"), proxy.token)
    direct = _openai(f"{proxy.fake.url}/v1", proxy.fake.keys["openai"])
    call = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    expected = [c.model_dump() for c in direct.chat.completions.create(**call)]
    got = [c.model_dump() for c in client.chat.completions.create(**call)]

    assert got == expected
    assert got[-1]["choices"] == [] and got[-1]["usage"] is not None


def test_anthropic_stream_usage_is_cumulative_with_the_cache_split(proxy):
    usage = {
        "input_tokens": 40,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        "output_tokens": 250,
    }
    client = anthropic.Anthropic(
        base_url=proxy.url("anthropic"), api_key=proxy.token, max_retries=0
    )

    with client.messages.stream(
        model="claude-opus-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"x-fake-usage": json.dumps(usage), "X-Costr-Customer": "globex"},
    ) as stream:
        message = stream.get_final_message()

    assert message.usage.output_tokens == 250
    assert proxy.fake.last_request.header("x-api-key") or proxy.fake.last_request.header(
        "authorization"
    )
    [event] = proxy.events()
    assert (event.provider, event.endpoint, event.stream) == ("anthropic", "messages", True)
    assert event.input_tokens == 40 + 300 + 1000
    assert event.cached_input_tokens == 1000
    assert (event.cache_write_tokens, event.cache_write_1h_tokens) == (300, 200)
    assert event.output_tokens == 250
    assert event.customer.external_id == "globex"


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_generate_content_with_running_totals(proxy, stream):
    usage = {
        "promptTokenCount": 900,
        "cachedContentTokenCount": 400,
        "candidatesTokenCount": 120,
        "thoughtsTokenCount": 60,
        "totalTokenCount": 1080,
    }
    client = genai.Client(
        api_key=proxy.token,
        http_options=types.HttpOptions(base_url=proxy.url("google"), api_version="v1beta"),
    )
    config = types.GenerateContentConfig(
        http_options=types.HttpOptions(headers={"x-fake-usage": json.dumps(usage)})
    )

    if stream:
        text = "".join(
            c.text or ""
            for c in client.models.generate_content_stream(
                model="gemini-2.5-flash", contents="Hi", config=config
            )
        )
    else:
        text = client.models.generate_content(
            model="gemini-2.5-flash", contents="Hi", config=config
        ).text

    assert text
    seen = proxy.fake.last_request
    assert seen.header("x-goog-api-key") == proxy.fake.keys["google"]
    [event] = proxy.events()
    assert (event.provider, event.endpoint, event.stream) == ("google", "generate", stream)
    assert event.requested_model == "gemini-2.5-flash"
    assert (event.input_tokens, event.cached_input_tokens) == (900, 400)
    assert (event.output_tokens, event.reasoning_tokens) == (120 + 60, 60)
