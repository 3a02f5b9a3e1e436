"""The fake provider must fool the official SDKs, or end-to-end tests of the proxy prove nothing.

Every test here talks to the fake directly (no proxy), through the SDKs where possible and through
raw httpx where the wire bytes themselves matter.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import anthropic
import httpx
import httpx2
import openai
import pytest
import zstandard
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes.provider import (
    ANTHROPIC_USAGE,
    DEFAULT_ANTHROPIC_KEY,
    DEFAULT_GOOGLE_KEY,
    DEFAULT_OPENAI_KEY,
    GEMINI_USAGE,
    OPENAI_CHAT_USAGE,
    FakeProvider,
    embedding_vector,
    fake_text,
    text_pieces,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TEXT = fake_text()
OPENAI_AUTH = {"authorization": f"Bearer {DEFAULT_OPENAI_KEY}"}
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
USER_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server():
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.clear()
    return server


def openai_client(fake, **kwargs):
    kwargs.setdefault("api_key", DEFAULT_OPENAI_KEY)
    return openai.OpenAI(base_url=f"{fake.url}/v1", max_retries=0, **kwargs)


def anthropic_client(fake, **kwargs):
    kwargs.setdefault("api_key", DEFAULT_ANTHROPIC_KEY)
    return anthropic.Anthropic(base_url=fake.url, max_retries=0, **kwargs)


def genai_client(fake, api_key=DEFAULT_GOOGLE_KEY, headers=None):
    options = genai_types.HttpOptions(base_url=fake.url, api_version="v1beta", headers=headers)
    return genai.Client(api_key=api_key, http_options=options)


def sse_events(body: bytes) -> list[tuple[str | None, dict | str]]:
    """(event name, parsed data) for each SSE event, to check the raw wire format."""
    events = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events


# --- OpenAI -------------------------------------------------------------------------------------


def test_openai_chat_non_stream(fake):
    with openai_client(fake) as client:
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=USER_MESSAGES)
    assert completion.choices[0].message.content == TEXT
    assert completion.model == "gpt-4o-mini"
    assert completion.usage.prompt_tokens == 1200
    assert completion.usage.prompt_tokens_details.cached_tokens == 1000
    assert completion.usage.completion_tokens == 300
    assert completion.usage.completion_tokens_details.reasoning_tokens == 120


def test_openai_chat_stream_with_include_usage(fake):
    with openai_client(fake) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER_MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 1200
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 120

    response = httpx.post(
        f"{fake.url}/v1/chat/completions",
        headers=OPENAI_AUTH,
        json={**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"].startswith("req_")
    events = sse_events(response.content)
    assert events[-1] == (None, "[DONE]")
    assert events[-2][1]["choices"] == [] and events[-2][1]["usage"] == OPENAI_CHAT_USAGE
    assert all("usage" in data and data["usage"] is None for _, data in events[:-2])


def test_openai_chat_stream_without_include_usage(fake):
    with openai_client(fake) as client:
        chunks = list(
            client.chat.completions.create(model="gpt-4o-mini", messages=USER_MESSAGES, stream=True)
        )
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT

    response = httpx.post(
        f"{fake.url}/v1/chat/completions",
        headers=OPENAI_AUTH,
        json={**CHAT_BODY, "stream": True, "stream_options": {"include_usage": False}},
    )
    assert b"usage" not in response.content


def test_openai_async_chat_stream(fake):
    async def run():
        client = openai.AsyncOpenAI(
            base_url=f"{fake.url}/v1", api_key=DEFAULT_OPENAI_KEY, max_retries=0
        )
        async with client:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=USER_MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-fake-chunks": "3"},
            )
            return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_text(3)
    assert chunks[-1].usage.total_tokens == 1500


def test_openai_responses(fake):
    with openai_client(fake) as client:
        response = client.responses.create(model="gpt-5", input="hi")
        assert response.output_text == TEXT
        assert response.usage.input_tokens_details.cached_tokens == 1000
        assert response.usage.output_tokens_details.reasoning_tokens == 120

        events = list(client.responses.create(model="gpt-5", input="hi", stream=True))
        assert events[0].type == "response.created"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        assert deltas == text_pieces()
        assert events[-1].type == "response.completed"
        assert events[-1].response.usage.total_tokens == 1500

        with client.responses.stream(model="gpt-5", input="hi") as stream:
            final = stream.get_final_response()
        assert final.output_text == TEXT
        assert final.usage.input_tokens == 1200


def test_openai_responses_async_stream(fake):
    async def run():
        client = openai.AsyncOpenAI(
            base_url=f"{fake.url}/v1", api_key=DEFAULT_OPENAI_KEY, max_retries=0
        )
        async with client:
            stream = await client.responses.create(model="gpt-5", input="hi", stream=True)
            return [event async for event in stream]

    events = asyncio.run(run())
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == TEXT


def test_openai_embeddings_completions_models(fake):
    with openai_client(fake) as client:
        # The SDK asks for base64 by default and decodes it itself.
        embedding = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert [e.embedding for e in embedding.data] == [embedding_vector(0), embedding_vector(1)]
        assert embedding.usage.prompt_tokens == 8
        assert fake.last_request.json()["encoding_format"] == "base64"
        floats = client.embeddings.create(
            model="text-embedding-3-small", input="a", encoding_format="float"
        )
        assert floats.data[0].embedding == embedding_vector(0)

        completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
        assert completion.choices[0].text == TEXT
        assert completion.usage.completion_tokens == 300

        assert "gpt-4o-mini" in [m.id for m in client.models.list()]
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-4o-mini")


def test_openai_custom_usage_model_and_prefix(fake):
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    # A path prefix before /v1 is accepted, as when the fake is the upstream of a proxy route.
    with openai.OpenAI(
        base_url=f"{fake.url}/some/prefix/v1", api_key=DEFAULT_OPENAI_KEY, max_retries=0
    ) as client:
        completion = client.chat.completions.create(
            model="gpt-4o",
            messages=USER_MESSAGES,
            extra_headers={"x-fake-usage": json.dumps(usage), "x-fake-model": "gpt-4o-2024-08-06"},
        )
    assert completion.usage.model_dump(exclude_none=True) == usage
    assert completion.model == "gpt-4o-2024-08-06"
    assert fake.last_request.path == "/some/prefix/v1/chat/completions"


# --- Anthropic ----------------------------------------------------------------------------------


def test_anthropic_message_non_stream(fake):
    with anthropic_client(fake) as client:
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=USER_MESSAGES
        )
    assert message.content[0].text == TEXT
    assert message.model == "claude-haiku-4-5"
    assert message.usage.input_tokens == 50
    assert message.usage.cache_read_input_tokens == 1000
    assert message.usage.cache_creation_input_tokens == 200
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 150
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 50
    assert message.usage.output_tokens == 300
    assert fake.last_request.header("authorization") == f"Bearer {DEFAULT_ANTHROPIC_KEY}"


def test_anthropic_stream(fake):
    with anthropic_client(fake) as client:
        events = list(
            client.messages.create(
                model="claude-haiku-4-5", max_tokens=100, messages=USER_MESSAGES, stream=True
            )
        )
        types = [e.type for e in events]
        assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
        start_usage = events[0].message.usage
        assert start_usage.output_tokens == 1
        assert start_usage.cache_creation.ephemeral_1h_input_tokens == 50
        assert events[-2].usage.output_tokens == 300
        assert events[-2].usage.cache_read_input_tokens == 1000

        with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=100, messages=USER_MESSAGES
        ) as stream:
            assert "".join(stream.text_stream) == TEXT
            final = stream.get_final_message()
        assert final.usage.output_tokens == 300
        assert final.usage.input_tokens == 50

    response = httpx.post(
        f"{fake.url}/v1/messages",
        headers={"x-api-key": DEFAULT_ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [], "stream": True},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_")
    assert all(name == data["type"] for name, data in sse_events(response.content))
    assert "ping" in [name for name, _ in sse_events(response.content)]


def test_anthropic_async_stream_custom_usage(fake):
    usage = {"input_tokens": 10, "cache_read_input_tokens": 0, "output_tokens": 42}

    async def run():
        client = anthropic.AsyncAnthropic(
            base_url=fake.url, api_key=DEFAULT_ANTHROPIC_KEY, max_retries=0
        )
        async with (
            client,
            client.messages.stream(
                model="claude-haiku-4-5",
                max_tokens=100,
                messages=USER_MESSAGES,
                extra_headers={"x-fake-usage": json.dumps(usage)},
            ) as stream,
        ):
            return await stream.get_final_message()

    final = asyncio.run(run())
    assert final.content[0].text == TEXT
    assert final.usage.output_tokens == 42
    assert final.usage.input_tokens == 10


def test_anthropic_count_tokens_and_models(fake):
    with anthropic_client(fake) as client:
        count = client.messages.count_tokens(model="claude-haiku-4-5", messages=USER_MESSAGES)
        assert count.input_tokens == 1250
        assert len(client.models.list().data) >= 1


# --- Google Gemini ------------------------------------------------------------------------------


def test_gemini_generate_and_stream(fake):
    client = genai_client(fake)
    response = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert response.text == TEXT
    assert response.usage_metadata.prompt_token_count == 1200
    assert response.usage_metadata.cached_content_token_count == 1000
    assert response.usage_metadata.thoughts_token_count == 120
    assert response.model_version == "gemini-2.5-flash"
    assert fake.last_request.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert fake.last_request.header("x-goog-api-key") == DEFAULT_GOOGLE_KEY

    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert "".join(c.text or "" for c in chunks) == TEXT
    totals = [c.usage_metadata.total_token_count for c in chunks]
    assert totals == sorted(totals) and totals[-1] == 1500
    assert chunks[0].usage_metadata.candidates_token_count is None
    assert chunks[-1].usage_metadata.candidates_token_count == 180
    assert fake.last_request.query_string == b"alt=sse"


def test_gemini_async(fake):
    async def run():
        client = genai_client(fake).aio
        response = await client.models.generate_content(model="gemini-2.5-pro", contents="hi")
        stream = await client.models.generate_content_stream(model="gemini-2.5-pro", contents="x")
        return response, [chunk async for chunk in stream]

    response, chunks = asyncio.run(run())
    assert response.text == TEXT
    assert "".join(c.text or "" for c in chunks) == TEXT
    assert chunks[-1].usage_metadata.prompt_token_count == 1200


def test_gemini_sse_wire_format(fake):
    response = httpx.post(
        f"{fake.url}/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        headers={"x-goog-api-key": DEFAULT_GOOGLE_KEY},
        json={"contents": []},
    )
    assert response.headers["content-type"] == "text/event-stream"
    assert response.content.count(b"\r\n\r\n") == len(text_pieces()) + 1
    assert b"\n\n" not in response.content.replace(b"\r\n", b"")
    last = sse_events(response.content)[-1][1]
    assert last["usageMetadata"] == GEMINI_USAGE
    assert last["candidates"][0]["content"]["parts"][0]["text"] == ""


def test_gemini_json_array_stream_and_query_key(fake):
    response = httpx.post(
        f"{fake.url}/v1alpha/models/gemini-2.5-flash:streamGenerateContent?key={DEFAULT_GOOGLE_KEY}",
        json={"contents": []},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    items = response.json()
    assert "".join(i["candidates"][0]["content"]["parts"][0]["text"] for i in items) == TEXT
    assert items[-1]["usageMetadata"]["totalTokenCount"] == 1500


def test_gemini_count_tokens_and_embed(fake):
    client = genai_client(fake)
    assert client.models.count_tokens(model="gemini-2.5-flash", contents="hi").total_tokens == 1200
    result = client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert [e.values for e in result.embeddings] == [embedding_vector(0), embedding_vector(1)]

    response = httpx.post(
        f"{fake.url}/v1beta/models/gemini-embedding-001:embedContent",
        headers={"x-goog-api-key": DEFAULT_GOOGLE_KEY},
        json={"content": {"parts": [{"text": "a"}]}},
    )
    assert response.json() == {"embedding": {"values": embedding_vector(0)}}


# --- Errors -------------------------------------------------------------------------------------


def test_wrong_key_raises_each_sdks_authentication_error(fake):
    client = openai_client(fake, api_key="sk-wrong")
    with client, pytest.raises(openai.AuthenticationError) as openai_error:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER_MESSAGES)
    assert openai_error.value.code == "invalid_api_key"
    assert openai_error.value.type == "invalid_request_error"

    client = anthropic_client(fake, api_key="sk-ant-wrong")
    with client, pytest.raises(anthropic.AuthenticationError) as anthropic_error:
        client.messages.create(model="claude-x", max_tokens=5, messages=USER_MESSAGES)
    assert anthropic_error.value.body["error"]["type"] == "authentication_error"

    client = genai_client(fake, api_key="AIzaWrong")
    with pytest.raises(genai_errors.ClientError) as google_error:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert google_error.value.code == 400
    assert google_error.value.status == "INVALID_ARGUMENT"
    assert "API key not valid" in google_error.value.message


def test_missing_or_leaked_credentials_are_refused(fake):
    response = httpx.post(f"{fake.url}/v1/chat/completions", json=CHAT_BODY)
    assert response.status_code == 401
    assert response.json()["error"]["code"] is None
    response = httpx.post(f"{fake.url}/v1beta/models/g:generateContent", json={})
    assert response.status_code == 403
    assert response.json()["error"]["status"] == "PERMISSION_DENIED"
    # A right key next to a wrong one (say, a proxy token left in place) is still refused.
    response = httpx.post(
        f"{fake.url}/v1/messages",
        headers={"x-api-key": DEFAULT_ANTHROPIC_KEY, "authorization": "Bearer costr_abc"},
        json={"model": "claude-x", "max_tokens": 5, "messages": []},
    )
    assert response.status_code == 401
    response = httpx.post(
        f"{fake.url}/v1beta/models/g:generateContent?key=costr_abc",
        headers={"x-goog-api-key": DEFAULT_GOOGLE_KEY},
        json={},
    )
    assert response.status_code == 400


def test_fake_status_errors(fake):
    with openai_client(fake) as client:
        with pytest.raises(openai.RateLimitError) as rate_limited:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=USER_MESSAGES,
                stream=True,
                extra_headers={"x-fake-status": "429"},
            )
        assert rate_limited.value.response.headers["retry-after"] == "1"
        assert rate_limited.value.code == "rate_limit_exceeded"
        with pytest.raises(openai.InternalServerError):
            client.responses.create(
                model="gpt-5", input="hi", extra_headers={"x-fake-status": "500"}
            )

    with anthropic_client(fake) as client:
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(
                model="claude-x",
                max_tokens=5,
                messages=USER_MESSAGES,
                extra_headers={"x-fake-status": "429"},
            )
        with pytest.raises(anthropic.OverloadedError):
            client.messages.create(
                model="claude-x",
                max_tokens=5,
                messages=USER_MESSAGES,
                extra_headers={"x-fake-status": "529"},
            )

    client = genai_client(fake, headers={"x-fake-status": "429"})
    with pytest.raises(genai_errors.ClientError) as google_error:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert google_error.value.code == 429
    assert google_error.value.status == "RESOURCE_EXHAUSTED"


def test_unknown_paths_answer_404_in_each_shape(fake):
    response = httpx.post(f"{fake.url}/v1/nope", headers=OPENAI_AUTH, json={})
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = httpx.get(f"{fake.url}/v1/nope", headers={"anthropic-version": "2023-06-01"})
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "not_found_error"
    response = httpx.post(f"{fake.url}/v1beta/models/g:nope", json={})
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


# --- Transport knobs ----------------------------------------------------------------------------


def test_compressed_bodies_decode_in_the_sdks(fake):
    with openai_client(fake) as client:
        for coding in ("gzip", "deflate", "br"):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=USER_MESSAGES,
                extra_headers={"x-fake-encoding": coding},
            )
            assert raw.headers["content-encoding"] == coding
            assert raw.parse().choices[0].message.content == TEXT

        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER_MESSAGES,
            stream=True,
            extra_headers={"x-fake-encoding": "gzip"},
        )
        assert stream.response.headers["content-encoding"] == "gzip"
        assert "".join(c.choices[0].delta.content or "" for c in stream) == TEXT

    with (
        anthropic_client(fake) as client,
        client.messages.stream(
            model="claude-x",
            max_tokens=5,
            messages=USER_MESSAGES,
            extra_headers={"x-fake-encoding": "br"},
        ) as stream,
    ):
        assert "".join(stream.text_stream) == TEXT

    client = genai_client(fake, headers={"x-fake-encoding": "gzip"})
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="x"))
    assert "".join(c.text or "" for c in chunks) == TEXT


def test_compressed_stream_is_flushed_per_chunk(fake):
    headers = {**OPENAI_AUTH, "x-fake-encoding": "gzip", "x-fake-delay-ms": "20"}
    body = {**CHAT_BODY, "stream": True}
    decoder = zlib.decompressobj(wbits=31)
    with httpx.stream("POST", f"{fake.url}/v1/chat/completions", headers=headers, json=body) as r:
        first = next(r.iter_raw())
    # The first compressed read already decodes to a whole SSE event.
    assert decoder.decompress(first).startswith(b"data: {")


def test_zstd_and_stacked_codings_when_accepted(fake):
    """Stacked codings apply in the order Content-Encoding lists them (gzip first here)."""
    body = {**CHAT_BODY, "stream": True}
    for coding in ("zstd", "gzip, zstd"):
        headers = {**OPENAI_AUTH, "x-fake-encoding": coding, "accept-encoding": "gzip, zstd"}
        with httpx.stream(
            "POST", f"{fake.url}/v1/chat/completions", headers=headers, json=body
        ) as response:
            raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == coding
        text = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        if coding == "gzip, zstd":
            text = zlib.decompress(text, wbits=31)
        assert text.startswith(b"data: {") and text.endswith(b"data: [DONE]\n\n")
    headers = {**OPENAI_AUTH, "x-fake-encoding": "gzip, zstd", "accept-encoding": "gzip"}
    response = httpx.post(f"{fake.url}/v1/chat/completions", headers=headers, json=CHAT_BODY)
    assert "content-encoding" not in response.headers


def test_encoding_only_when_accepted(fake):
    headers = {**OPENAI_AUTH, "x-fake-encoding": "br", "accept-encoding": "gzip;q=1, br;q=0"}
    response = httpx.post(f"{fake.url}/v1/chat/completions", headers=headers, json=CHAT_BODY)
    assert "content-encoding" not in response.headers
    assert response.json()["choices"][0]["message"]["content"] == TEXT


def test_cut_after_makes_clients_fail(fake):
    headers = {**OPENAI_AUTH, "x-fake-cut-after": "3"}
    body = {**CHAT_BODY, "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST", f"{fake.url}/v1/chat/completions", headers=headers, json=body
        ) as response,
    ):
        response.read()

    with openai_client(fake) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER_MESSAGES,
            stream=True,
            extra_headers={"x-fake-cut-after": "2"},
        )
        with pytest.raises(openai.APIConnectionError):
            list(stream)
        # A non-streamed body counts as two halves: cut after one, mid-JSON.
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=USER_MESSAGES,
                extra_headers={"x-fake-cut-after": "1"},
            )

    with anthropic_client(fake) as client:
        stream = client.messages.create(
            model="claude-x",
            max_tokens=5,
            messages=USER_MESSAGES,
            stream=True,
            extra_headers={"x-fake-cut-after": "4"},
        )
        # anthropic 2.17 (the locked version) wraps a transport error met mid-stream in
        # APIConnectionError as openai does; its releases before 2.17 let it through unwrapped.
        with pytest.raises(anthropic.APIConnectionError) as caught:
            list(stream)
        assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)

    # google-genai lets the transport error through unwrapped.
    client = genai_client(fake, headers={"x-fake-cut-after": "2"})
    with pytest.raises(httpx2.RemoteProtocolError):
        list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="x"))
    assert len(fake.sent_chunk_times[-1]) == 2


def test_split_events_reassemble(fake):
    with (
        anthropic_client(fake) as client,
        client.messages.stream(
            model="claude-x",
            max_tokens=5,
            messages=USER_MESSAGES,
            extra_headers={"x-fake-split": "1"},
        ) as stream,
    ):
        assert "".join(stream.text_stream) == TEXT

    client = genai_client(fake, headers={"x-fake-split": "1"})
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="x"))
    assert "".join(c.text or "" for c in chunks) == TEXT

    body = {**CHAT_BODY, "stream": True}
    whole = httpx.post(f"{fake.url}/v1/chat/completions", headers=OPENAI_AUTH, json=body)
    headers = {**OPENAI_AUTH, "x-fake-split": "1"}
    with httpx.stream(
        "POST", f"{fake.url}/v1/chat/completions", headers=headers, json=body
    ) as response:
        reads = list(response.iter_raw())
    assert b"".join(reads) == whole.content
    # Some read ends in the middle of an event, which is what the split is for.
    assert any(not read.endswith(b"\n\n") for read in reads)


def test_delays_and_stall(fake):
    started = time.monotonic()
    httpx.post(
        f"{fake.url}/v1/chat/completions",
        headers={**OPENAI_AUTH, "x-fake-first-byte-delay-ms": "100"},
        json=CHAT_BODY,
    )
    assert time.monotonic() - started >= 0.1

    headers = {**OPENAI_AUTH, "x-fake-stall-ms": "300"}
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{fake.url}/v1/chat/completions", headers=headers, json=CHAT_BODY
    ) as response:
        headers_at = time.monotonic()
        response.read()
        body_at = time.monotonic()
    assert headers_at - started < 0.2
    assert body_at - headers_at >= 0.29


def test_stream_chunks_leave_one_by_one(fake):
    """A client sees the first chunk before the fake sends the last: the basis of no-buffering
    tests through the proxy."""
    headers = {**OPENAI_AUTH, "x-fake-delay-ms": "40", "x-fake-chunks": "3"}
    body = {**CHAT_BODY, "stream": True}
    with httpx.stream(
        "POST", f"{fake.url}/v1/chat/completions", headers=headers, json=body
    ) as response:
        chunks = response.iter_raw()
        next(chunks)
        first_seen = time.monotonic()
        for _ in chunks:
            pass
    times = fake.sent_chunk_times[-1]
    assert len(times) == 3 + 3  # role, 3 text, finish, [DONE]
    assert first_seen < times[-1]
    assert times[-1] - times[0] >= 0.18


# --- Echo and recording -------------------------------------------------------------------------


def test_echo_returns_the_request_as_received(fake):
    body = b'{"model": "x",  "odd spacing": true}'
    response = httpx.post(
        f"{fake.url}/p/org/openai/v1/some%2Fthing?b=2&a=%20",
        headers={"x-fake-echo": "1", "X-Custom": "Value"},
        content=body,
    )
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["raw_path"] == "/p/org/openai/v1/some%2Fthing"
    assert echo["query_string"] == "b=2&a=%20"
    assert ["x-custom", "Value"] in echo["headers"]
    assert base64.b64decode(echo["body_base64"]) == body


def test_recording(fake):
    with openai_client(fake) as client:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER_MESSAGES,
            extra_headers={"x-trace": "abc"},
        )
    assert len(fake.requests) == 1
    request = fake.last_request
    assert request.method == "POST"
    assert request.raw_path == b"/v1/chat/completions"
    assert request.query_string == b""
    assert request.header("Authorization") == f"Bearer {DEFAULT_OPENAI_KEY}"
    assert (b"x-trace", b"abc") in request.headers
    assert request.json() == {"messages": USER_MESSAGES, "model": "gpt-4o-mini"}
    assert request.timestamp > 0 and request.received_at <= time.monotonic()

    raw = b'{"model":"gpt-4o-mini" , "messages":[]}'
    httpx.post(f"{fake.url}/v1/chat/completions?x=1", headers=OPENAI_AUTH, content=raw)
    assert fake.last_request.body == raw
    assert fake.last_request.query_string == b"x=1"
    assert len(fake.requests) == len(fake.sent_chunk_times) == 2
    fake.clear()
    assert fake.requests == [] and fake.last_request is None


def test_keys_are_configurable():
    with FakeProvider(openai_key="sk-other", google_key=None) as fake:
        ok = httpx.post(
            f"{fake.url}/v1/chat/completions",
            headers={"authorization": "Bearer sk-other"},
            json=CHAT_BODY,
        )
        assert ok.status_code == 200
        assert httpx.post(f"{fake.url}/v1/models/g:countTokens", json={}).status_code == 200


def test_runs_as_a_process():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.provider", "--port", str(port)], cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/messages",
                    headers={"x-api-key": DEFAULT_ANTHROPIC_KEY},
                    json={"model": "claude-x", "max_tokens": 5, "messages": [], "stream": True},
                )
                break
            except httpx.ConnectError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200
        assert sse_events(response.content)[-2][1]["usage"]["output_tokens"] == 300
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_default_usage_constants_match_the_wire(fake):
    """Tests elsewhere assert against these constants, so they must be what is sent."""
    response = httpx.post(
        f"{fake.url}/v1/messages",
        headers={"x-api-key": DEFAULT_ANTHROPIC_KEY},
        json={"model": "claude-x", "max_tokens": 5, "messages": []},
    )
    assert response.json()["usage"] == ANTHROPIC_USAGE
