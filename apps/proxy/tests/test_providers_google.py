"""Google Gemini adapter: paths, credentials (header and ``?key=``), errors, and usage from
bodies and CRLF-framed streams of running totals. Fixtures are written as the Gemini API sends
them."""

import json
import random

import pytest

from apps.proxy.providers.base import RequestInfo
from apps.proxy.providers.google import adapter
from apps.proxy.tests import byte_by_byte, encode, every_split, in_chunks, read, sse, whole
from apps.usage.metering.provider_usage import Usage

SSE = "text/event-stream"
JSON = "application/json; charset=UTF-8"
STREAM_INFO = RequestInfo("generate", "gemini-2.5-pro", True)

_CHUNKS = (
    # Early chunks carry the prompt count but no candidates count yet.
    '{"candidates": [{"content": {"parts": [{"text": "The"}],"role": "model"},"index": 0}],'
    '"usageMetadata": {"promptTokenCount": 5200,"totalTokenCount": 5800,'
    '"cachedContentTokenCount": 4096,"promptTokensDetails": [{"modality": "TEXT",'
    '"tokenCount": 5200}],"cacheTokensDetails": [{"modality": "TEXT","tokenCount": 4096}],'
    '"thoughtsTokenCount": 600},"modelVersion": "gemini-2.5-pro","responseId": "mR2oaOu6"}',
    '{"candidates": [{"content": {"parts": [{"text": " sky is blue"}],"role": "model"},'
    '"index": 0}],"usageMetadata": {"promptTokenCount": 5200,"candidatesTokenCount": 40,'
    '"totalTokenCount": 6552,"cachedContentTokenCount": 4096,"thoughtsTokenCount": 1312},'
    '"modelVersion": "gemini-2.5-pro","responseId": "mR2oaOu6"}',
    '{"candidates": [{"content": {"parts": [{"text": "."}],"role": "model"},'
    '"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 5200,'
    '"candidatesTokenCount": 310,"totalTokenCount": 6822,"cachedContentTokenCount": 4096,'
    '"promptTokensDetails": [{"modality": "TEXT","tokenCount": 5200}],'
    '"cacheTokensDetails": [{"modality": "TEXT","tokenCount": 4096}],'
    '"thoughtsTokenCount": 1312},"modelVersion": "gemini-2.5-pro","responseId": "mR2oaOu6"}',
)
STREAM = sse(*("data: " + chunk for chunk in _CHUNKS), newline="\r\n")
STREAM_USAGE = Usage(
    input_tokens=5200,  # promptTokenCount already includes the 4096 cached
    cached_input_tokens=4096,
    cache_write_tokens=None,  # Gemini reports no cache writes
    cache_write_1h_tokens=None,
    output_tokens=1622,  # 310 candidates + 1312 thoughts: the last totals, never summed
    reasoning_tokens=1312,
    model="gemini-2.5-pro",
    raw=json.loads(_CHUNKS[-1])["usageMetadata"],
)


def stream_reader(content_encoding=None):
    return adapter.usage_reader(STREAM_INFO, 200, SSE, content_encoding)


# --- requests, credentials, errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        (
            "POST",
            "v1beta/models/gemini-2.5-pro:streamGenerateContent",
            RequestInfo("generate", "gemini-2.5-pro", True),
        ),
        (
            "POST",
            "v1/models/gemini-2.5-flash:generateContent",
            RequestInfo("generate", "gemini-2.5-flash", False),
        ),
        (
            "POST",
            "v1alpha/models/gemini-2.0-flash-thinking-exp:generateContent",
            RequestInfo("generate", "gemini-2.0-flash-thinking-exp", False),
        ),
        (
            "POST",
            "v1beta/models/gemini-2.5-flash%3AgenerateContent",
            RequestInfo("generate", "gemini-2.5-flash", False),
        ),
        (
            "POST",
            "v1beta/models/gemini-embedding-001:embedContent",
            RequestInfo("embed", "gemini-embedding-001", False),
        ),
        (
            "POST",
            "v1beta/models/text-embedding-004:batchEmbedContents",
            RequestInfo("embed", "text-embedding-004", False),
        ),
        (
            "POST",
            "v1beta/models/gemini-2.5-pro:countTokens",
            RequestInfo("count_tokens", "gemini-2.5-pro", False),
        ),
        (
            "POST",
            "v1beta/tunedModels/my-model-7:generateContent",
            RequestInfo("generate", "tunedModels/my-model-7", False),
        ),
        ("GET", "v1beta/models", RequestInfo("other")),
        ("GET", "v1beta/models/gemini-2.5-pro", RequestInfo("other")),
        ("POST", "v1beta/cachedContents", RequestInfo("other")),
        ("POST", "upload/v1beta/files", RequestInfo("other")),
    ],
)
def test_request_info_from_the_path(method, path, expected):
    assert adapter.inspect_request(method, path, b'{"model": "ignored", "stream": true}') == (
        expected
    )


def test_credential_from_header_or_query():
    assert adapter.credential_from([(b"X-Goog-Api-Key", b"costr_h")], b"alt=sse") == "costr_h"
    assert adapter.credential_from([], b"alt=sse&key=costr_q&foo=1") == "costr_q"
    assert adapter.credential_from([], b"alt=sse&key=costr%5Fpct") == "costr_pct"
    assert adapter.credential_from([], b"monkey=1&keys=2") is None
    assert adapter.credential_from([(b"authorization", b"Bearer costr_x")], b"") is None


def test_swap_replaces_the_query_key_in_place_and_keeps_the_rest_verbatim():
    headers = [(b"content-type", b"application/json")]
    new_headers, query = adapter.swap_credential(
        headers, b"alt=sse&key=costr_x&foo=b%20c", "AIzaSyREAL-key_1"
    )
    assert query == b"alt=sse&key=AIzaSyREAL-key_1&foo=b%20c"
    assert new_headers == headers


def test_swap_replaces_the_header_and_leaves_the_query_alone():
    headers = [(b"x-goog-api-key", b"costr_x"), (b"user-agent", b"google-genai-sdk/3.4.0")]
    new_headers, query = adapter.swap_credential(headers, b"alt=sse&monkey=1", "AIzaREAL")
    assert new_headers == [
        (b"x-goog-api-key", b"AIzaREAL"),
        (b"user-agent", b"google-genai-sdk/3.4.0"),
    ]
    assert query == b"alt=sse&monkey=1"


def test_swap_replaces_both_places_when_both_were_used():
    headers, query = adapter.swap_credential(
        [(b"x-goog-api-key", b"costr_x")], b"key=costr_x&alt=sse", "AIzaREAL"
    )
    assert (headers, query) == ([(b"x-goog-api-key", b"AIzaREAL")], b"key=AIzaREAL&alt=sse")


@pytest.mark.parametrize(
    ("status", "grpc_status"),
    [(401, "UNAUTHENTICATED"), (400, "INVALID_ARGUMENT"), (504, "DEADLINE_EXCEEDED")],
)
def test_error_body_is_google_shaped(status, grpc_status):
    body = json.loads(adapter.error_body(status, "invalid_token", "Costr: bad token."))
    assert body["error"]["code"] == status
    assert body["error"]["message"] == "Costr: bad token."
    assert body["error"]["status"] == grpc_status
    assert body["error"]["details"][0]["reason"] == "invalid_token"


# --- streams -------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_stream_usage_is_the_last_running_total(cut):
    for chunks in cut(STREAM):
        assert read(stream_reader(), chunks) == STREAM_USAGE


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "br", "zstd"])
def test_compressed_stream(encoding):
    header = "deflate" if encoding == "raw-deflate" else encoding
    body = encode(STREAM, encoding)
    for chunks in [[body], in_chunks(body, 3), byte_by_byte(body)[0]]:
        assert read(stream_reader(header), chunks) == STREAM_USAGE


def test_br_stream_split_everywhere():
    body = encode(STREAM, "br")
    for chunks in every_split(body):
        assert read(stream_reader("br"), chunks) == STREAM_USAGE


def test_stream_is_never_complete_before_it_ends():
    reader = stream_reader()
    for chunk in byte_by_byte(STREAM)[0]:
        reader.feed(chunk)
        assert not reader.complete
    assert reader.finish() == STREAM_USAGE


def test_stream_cut_midway_keeps_the_last_totals_seen():
    cut = STREAM.index(b"\r\n\r\n") + 4
    usage = read(stream_reader(), [STREAM[:cut]])
    # The first chunk alone: prompt 5200 (4096 cached), no candidates yet, 600 thoughts.
    assert (usage.input_tokens, usage.cached_input_tokens) == (5200, 4096)
    assert (usage.output_tokens, usage.reasoning_tokens) == (600, 600)


def test_tool_use_prompt_tokens_count_as_input_and_omitted_counts_are_zero():
    chunk = (
        'data: {"candidates": [{"content": {"parts": [{"text": "Done"}],"role": "model"},'
        '"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 800,'
        '"candidatesTokenCount": 55,"totalTokenCount": 2355,"toolUsePromptTokenCount": 1500},'
        '"modelVersion": "gemini-2.5-flash"}'
    )
    usage = read(stream_reader(), [sse(chunk, newline="\r\n")])
    assert (
        usage
        == Usage(
            input_tokens=2300,  # 800 prompt + 1500 tool-use prompt
            cached_input_tokens=0,
            output_tokens=55,  # 55 candidates + 0 thoughts (omitted)
            reasoning_tokens=0,
            model="gemini-2.5-flash",
            raw=json.loads(chunk[len("data: ") :])["usageMetadata"],
        )
    )


def test_no_usage_metadata_means_no_tokens():
    chunk = 'data: {"candidates": [{"content": {"parts": [{"text": "x"}]}}],"modelVersion": "m"}'
    assert read(stream_reader(), [sse(chunk)]) == Usage(model="m")
    assert read(stream_reader(), [b""]) is None


def test_huge_image_chunk_recovers_usage_from_its_tail():
    image = "iVBORw0KGgo" + "B" * (2 * 1024 * 1024)
    chunk = (
        'data: {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png",'
        '"data": "' + image + '"}}],"role": "model"},"finishReason": "STOP","index": 0}],'
        '"usageMetadata": {"promptTokenCount": 12,"candidatesTokenCount": 1290,'
        '"totalTokenCount": 1302},"modelVersion": "gemini-2.5-flash-image"}'
    )
    body = sse("data: " + _CHUNKS[0], chunk, newline="\r\n")
    usage = read(stream_reader("gzip"), in_chunks(encode(body, "gzip"), 32 * 1024))
    assert (usage.input_tokens, usage.output_tokens) == (12, 1290)
    assert usage.model == "gemini-2.5-flash-image"


def test_error_chunk_midstream_is_ignored():
    error = 'data: {"error": {"code": 503,"message": "overloaded","status": "UNAVAILABLE"}}'
    body = sse("data: " + _CHUNKS[0], "data: " + _CHUNKS[1], error, newline="\r\n")
    usage = read(stream_reader(), [body])
    assert (usage.output_tokens, usage.reasoning_tokens) == (1352, 1312)  # 40 + 1312


@pytest.mark.parametrize("content_type", [SSE, JSON])
def test_garbage_never_raises(content_type):
    generator = random.Random(5)
    for encoding in [None, "gzip", "deflate"]:
        for _ in range(30):
            reader = adapter.usage_reader(STREAM_INFO, 200, content_type, encoding)
            chunks = [generator.randbytes(generator.randint(0, 200)) for _ in range(4)]
            chunks += [b'data: {"usageMetadata": 7}\r\n\r\n', b'data: [{"a":\r\n\r\n']
            result = read(reader, chunks)
            assert result is None or isinstance(result, Usage)


# --- whole bodies ----------------------------------------------------------------------------

BODY = (
    b'{"candidates": [{"content": {"parts": [{"text": "Hello"}],"role": "model"},'
    b'"finishReason": "STOP","avgLogprobs": -0.1,"index": 0}],"usageMetadata": {'
    b'"promptTokenCount": 1000,"candidatesTokenCount": 200,"totalTokenCount": 1500,'
    b'"cachedContentTokenCount": 750,"thoughtsTokenCount": 300},'
    b'"modelVersion": "gemini-2.5-flash","responseId": "abc"}'
)
BODY_USAGE = Usage(
    input_tokens=1000,
    cached_input_tokens=750,
    output_tokens=500,  # 200 + 300
    reasoning_tokens=300,
    model="gemini-2.5-flash",
    raw=json.loads(BODY)["usageMetadata"],
)


@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_body_usage(cut):
    info = RequestInfo("generate", "gemini-2.5-flash")
    for chunks in cut(BODY):
        assert read(adapter.usage_reader(info, 200, JSON, None), chunks) == BODY_USAGE


def test_stream_without_alt_sse_is_a_json_array_whose_last_totals_count():
    body = ("[" + ",\r\n".join(_CHUNKS) + "]").encode()
    reader = adapter.usage_reader(STREAM_INFO, 200, JSON, "gzip")
    assert read(reader, in_chunks(encode(body, "gzip"), 10)) == STREAM_USAGE


def test_large_body_past_the_cap():
    text = "lorem ipsum " * 60_000
    body = BODY.replace(b'"text": "Hello"', b'"text": "' + text.encode() + b'"')
    reader = adapter.usage_reader(RequestInfo("generate"), 200, JSON, None)
    assert read(reader, in_chunks(body, 65536)) == BODY_USAGE


@pytest.mark.parametrize(
    "body",
    [
        # Read from its end: the model version follows usageMetadata.
        BODY.replace(b'"text": "Hello"', b'"text": "' + b"lorem ipsum " * 3000 + b'"'),
        # A function call whose arguments hold a usageMetadata-named object, after the real
        # one: parsed whole.
        BODY.replace(
            b'"responseId": "abc"}',
            b'"responseId": "abc","extra": [{"functionCall": {"args": {"usageMetadata": '
            b'{"promptTokenCount": 9}}}}], "pad": "' + b"x" * 20_000 + b'"}',
        ),
        # A JSON array of chunks (streamGenerateContent without alt=sse): parsed whole.
        ("[" + ",".join(_CHUNKS) + "," + json.dumps({"pad": "x" * 20_000}) + "]").encode(),
    ],
    ids=["tail", "nested-after", "array"],
)
def test_a_large_body_gives_what_parsing_it_whole_gives(body):
    from apps.proxy.providers.google import usage_from_gemini_body

    expected = usage_from_gemini_body(json.loads(body))
    assert expected is not None and expected.input_tokens
    reader = adapter.usage_reader(RequestInfo("generate"), 200, JSON, None)
    assert read(reader, in_chunks(body, 4096)) == expected


def test_embed_without_usage_and_errors_and_count_tokens_have_no_usage():
    embed = b'{"embedding": {"values": [0.1, -0.2, 0.3]}}'
    assert read(adapter.usage_reader(RequestInfo("embed"), 200, JSON, None), [embed]) is None
    error = b'{"error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED"}}'
    assert read(adapter.usage_reader(STREAM_INFO, 429, JSON, None), [error]) is None
    reader = adapter.usage_reader(RequestInfo("count_tokens"), 200, JSON, None)
    assert read(reader, [b'{"totalTokens": 31}']) is None


@pytest.mark.parametrize("method", ["credential_from", "swap_credential"])
def test_methods_holding_keys_hide_their_variables_from_error_reports(method):
    assert getattr(adapter, method).sensitive_variables == "__ALL__"
