"""OpenAI adapter: requests, credentials, errors, usage from bodies and streams, the one body
change and the filter that hides its trace. Fixtures are written as OpenAI sends them."""

import json
import os
import random

import pytest

from apps.proxy.providers import ADAPTERS, base, recovery
from apps.proxy.providers.base import RequestInfo, StreamFilter
from apps.proxy.providers.openai import adapter, usage_from_openai_body
from apps.proxy.sse import TAIL_BYTES
from apps.proxy.tests import byte_by_byte, encode, every_split, in_chunks, read, sse, whole
from apps.usage.metering.provider_usage import Usage
from costr.net import decoding
from costr.net.decoding import content_decoder

CHAT_STREAM_INFO = RequestInfo("chat", "gpt-4o", True)
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"

_CHUNK_HEAD = (
    '{"id":"chatcmpl-B9xQ2","object":"chat.completion.chunk","created":1741569952,'
    '"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8",'
)
USAGE_EVENT = (
    'data: {"id":"chatcmpl-B9xQ2","object":"chat.completion.chunk","created":1741569952,'
    '"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8",'
    '"choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":350,"total_tokens":1550,'
    '"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":128,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"vS1h"}'
)
CONTENT_EVENTS = (
    "data: " + _CHUNK_HEAD + '"choices":[{"index":0,"delta":{"role":"assistant","content":"",'
    '"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"Zq"}',
    "data: " + _CHUNK_HEAD + '"choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,'
    '"finish_reason":null}],"usage":null,"obfuscation":"xM2"}',
    "data: " + _CHUNK_HEAD + '"choices":[{"index":0,"delta":{"content":" \\"choices\\":[]"},'
    '"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"p"}',
    "data: " + _CHUNK_HEAD + '"choices":[{"index":0,"delta":{},"logprobs":null,'
    '"finish_reason":"stop"}],"usage":null,"obfuscation":"k9"}',
)
CHAT_STREAM = sse(*CONTENT_EVENTS, USAGE_EVENT, "data: [DONE]")
CHAT_STREAM_WITHOUT_USAGE_EVENT = sse(*CONTENT_EVENTS, "data: [DONE]")
CHAT_STREAM_USAGE = Usage(
    input_tokens=1200,  # prompt_tokens already includes the 1024 cached
    cached_input_tokens=1024,
    cache_write_tokens=0,
    cache_write_1h_tokens=None,
    output_tokens=350,  # completion_tokens already includes the 128 reasoning
    reasoning_tokens=128,
    model="gpt-4o-2024-08-06",
    service_tier=None,  # "default" is the standard tier
    raw=json.loads(USAGE_EVENT[len("data: ") :])["usage"],
)


def chat_reader(**overrides):
    arguments = {"status": 200, "content_type": SSE, "content_encoding": None} | overrides
    return adapter.usage_reader(CHAT_STREAM_INFO, **arguments)


# --- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "endpoint"),
    [
        ("POST", "v1/chat/completions", "chat"),
        ("POST", "v1/responses", "responses"),
        ("POST", "v1/embeddings", "embeddings"),
        ("POST", "v1/completions", "completions"),
        ("POST", "v1/images/generations", "other"),
        ("GET", "v1/models", "other"),
        ("GET", "v1/chat/completions", "other"),  # listing stored completions
        # Retrieving or cancelling one response: a background response's usage appears there.
        ("GET", "v1/responses/resp_123", "responses"),
        ("POST", "v1/responses/resp_123/cancel", "responses"),
        ("DELETE", "v1/responses/resp_123", "other"),
        ("GET", "v1/responses/resp_123/input_items", "other"),
        ("POST", "v1/responses/input_tokens", "other"),
        ("POST", "v1/audio/transcriptions", "transcriptions"),
        ("POST", "v1/audio/translations", "translations"),
        ("POST", "v1/audio/speech", "speech"),
    ],
)
def test_endpoint_from_method_and_path(method, path, endpoint):
    assert adapter.inspect_request(method, path, None).endpoint == endpoint


def test_model_and_stream_from_the_body():
    body = b'{"model": "gpt-4.1-mini", "stream": true, "messages": []}'
    assert adapter.inspect_request("POST", "v1/chat/completions", body) == RequestInfo(
        "chat", "gpt-4.1-mini", True
    )
    body = b'{"model": "text-embedding-3-small", "input": "hi"}'
    assert adapter.inspect_request("POST", "v1/embeddings", body) == RequestInfo(
        "embeddings", "text-embedding-3-small", False
    )


@pytest.mark.parametrize(
    "body",
    [None, b"", b"{", b"[1, 2]", b'{"model": 5, "stream": "yes"}', b"\xff\xfe", b"[" * 100_000],
)
def test_unreadable_bodies_give_no_model_and_no_stream(body):
    assert adapter.inspect_request("POST", "v1/chat/completions", body) == RequestInfo("chat")


# --- credentials and errors ------------------------------------------------------------------


def test_credential_is_the_bearer_token_whatever_the_header_case():
    headers = [(b"content-type", b"application/json"), (b"Authorization", b"Bearer costr_abc")]
    assert adapter.credential_from(headers, b"") == "costr_abc"
    assert adapter.credential_from([(b"authorization", b"bearer  costr_x ")], b"") == "costr_x"
    assert adapter.credential_from([(b"authorization", b"Basic Zm9v")], b"") is None
    assert adapter.credential_from([(b"x-api-key", b"costr_abc")], b"") is None
    assert adapter.credential_from([], b"") is None


def test_swap_puts_the_provider_key_in_place_and_keeps_everything_else():
    headers = [
        (b"accept-encoding", b"gzip, deflate"),
        (b"authorization", b"Bearer costr_abc"),
        (b"openai-organization", b"org-1"),
        (b"authorization", b"Bearer costr_duplicate"),
    ]
    new_headers, query = adapter.swap_credential(headers, b"a=1&key=x", "sk-proj-REAL")
    assert new_headers == [
        (b"accept-encoding", b"gzip, deflate"),
        (b"authorization", b"Bearer sk-proj-REAL"),
        (b"openai-organization", b"org-1"),
    ]
    assert query == b"a=1&key=x"
    assert not any(b"costr_" in value for _, value in new_headers)


def test_error_body_is_openai_shaped():
    body = json.loads(adapter.error_body(401, "invalid_token", "Costr: the token is not valid."))
    assert body == {
        "error": {
            "message": "Costr: the token is not valid.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_token",
        }
    }
    assert json.loads(adapter.error_body(502, "upstream_unreachable", "x"))["error"]["type"] == (
        "server_error"
    )


# --- chat streams --------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_chat_stream_usage_comes_from_the_final_chunk(cut):
    for chunks in cut(CHAT_STREAM):
        assert read(chat_reader(), chunks) == CHAT_STREAM_USAGE


def test_chat_stream_is_complete_exactly_when_the_usage_chunk_has_arrived():
    reader = chat_reader()
    for event in CONTENT_EVENTS:
        reader.feed(sse(event))
        assert not reader.complete
    usage_event = sse(USAGE_EVENT)
    reader.feed(usage_event[:-1])  # the blank line is not complete yet
    assert not reader.complete
    reader.feed(usage_event[-1:])
    assert reader.complete
    reader.feed(sse("data: [DONE]"))
    assert reader.finish() == CHAT_STREAM_USAGE


def test_chat_stream_without_usage_chunk_knows_the_model_but_no_tokens():
    reader = chat_reader()
    usage = read(reader, [CHAT_STREAM_WITHOUT_USAGE_EVENT])
    assert usage == Usage(model="gpt-4o-2024-08-06")
    assert not reader.complete


def test_chat_stream_cut_before_its_usage_chunk():
    usage = read(chat_reader(), [CHAT_STREAM[: CHAT_STREAM.index(b"\n\n") + 2]])
    assert usage == Usage(model="gpt-4o-2024-08-06")


def test_chat_stream_with_flex_tier_and_cache_writes():
    usage_event = (
        'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"o4-mini-2025-04-16",'
        '"service_tier":"flex","choices":[],"usage":{"prompt_tokens":5000,'
        '"completion_tokens":2100,"total_tokens":7100,"prompt_tokens_details":'
        '{"cached_tokens":3000,"cache_write_tokens":1500},"completion_tokens_details":'
        '{"reasoning_tokens":1800}}}'
    )
    usage = read(chat_reader(), [sse(usage_event, "data: [DONE]")])
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        5000,
        3000,
        1500,
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (2100, 1800)
    assert (usage.model, usage.service_tier) == ("o4-mini-2025-04-16", "flex")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "br", "zstd"])
def test_compressed_chat_stream(encoding):
    header = "deflate" if encoding == "raw-deflate" else encoding
    body = encode(CHAT_STREAM, encoding)
    for chunks in [[body], in_chunks(body, 7), byte_by_byte(body)[0]]:
        assert read(chat_reader(content_encoding=header), chunks) == CHAT_STREAM_USAGE


def test_compressed_chat_stream_split_everywhere():
    body = encode(CHAT_STREAM, "gzip")
    for chunks in every_split(body):
        assert read(chat_reader(content_encoding="gzip"), chunks) == CHAT_STREAM_USAGE


def test_multi_member_gzip_is_read_through():
    middle = CHAT_STREAM.index(b"\n\n") + 2
    body = encode(CHAT_STREAM[:middle], "gzip") + encode(CHAT_STREAM[middle:], "gzip")
    assert read(chat_reader(content_encoding="gzip"), byte_by_byte(body)[0]) == CHAT_STREAM_USAGE


def test_decoded_output_comes_in_bounded_pieces():
    decoder = content_decoder("gzip")
    # One chunk decodes a bounded amount (a bomb guard); the rest comes out at the body's end.
    pieces = [*decoder.decode(encode(b"a" * (5 * 1024 * 1024), "gzip")), *decoder.flush()]
    assert sum(map(len, pieces)) == 5 * 1024 * 1024
    assert max(map(len, pieces)) <= decoding.DECODED_PIECE_BYTES


def test_brotli_output_also_comes_in_bounded_pieces():
    decoder = content_decoder("br")
    # One chunk decodes a bounded amount (a bomb guard); the rest comes out at the body's end.
    pieces = [*decoder.decode(encode(b"a" * (5 * 1024 * 1024), "br")), *decoder.flush()]
    assert sum(map(len, pieces)) == 5 * 1024 * 1024
    # brotli stops growing its buffer once past the limit, so a piece may overshoot a little.
    assert max(map(len, pieces)) <= 2 * decoding.DECODED_PIECE_BYTES


def test_top_level_strings_ignore_nested_keys_and_survive_a_cut():
    head = (
        '{"id":"x","prompt":{"id":"pmpt_1","variables":{"model":"nested"}},'
        '"tools":[{"model":"in-array"}],"model":"gpt-5","output":[{"text":"cut he'
    )
    assert recovery.top_level_strings(head, ["model", "service_tier"]) == {"model": "gpt-5"}
    assert recovery.top_level_strings('{"a":{"model":"x"', ["model"]) == {}


@pytest.mark.parametrize("encoding", ["compress", "gzip, br", "zstd, gzip", "x-unknown"])
def test_unknown_encoding_means_unknown_usage(encoding):
    reader = chat_reader(content_encoding=encoding)
    assert reader.complete
    assert read(reader, [CHAT_STREAM]) is None


def test_identity_encoding_is_plain():
    assert read(chat_reader(content_encoding="identity"), [CHAT_STREAM]) == CHAT_STREAM_USAGE


def test_error_status_has_no_usage():
    error = b'{"error":{"message":"Rate limit","type":"requests","param":null,"code":null}}'
    reader = adapter.usage_reader(CHAT_STREAM_INFO, 429, JSON, None)
    assert read(reader, [error]) is None
    assert read(chat_reader(status=500), [CHAT_STREAM]) is None


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate", "br", "zstd"])
@pytest.mark.parametrize("content_type", [SSE, JSON])
def test_garbage_never_raises(encoding, content_type):
    generator = random.Random(1234)
    for info in [CHAT_STREAM_INFO, RequestInfo("responses"), RequestInfo("embeddings")]:
        for _ in range(20):
            reader = adapter.usage_reader(info, 200, content_type, encoding)
            chunks = [generator.randbytes(generator.randint(0, 300)) for _ in range(5)]
            chunks += [b"data: {\n\n", b"data: [DONE]\n\n", b'data: {"usage": {"a"\n\n']
            result = read(reader, chunks)
            assert result is None or isinstance(result, Usage)


def test_malformed_events_are_skipped_and_the_usage_still_found():
    body = sse("data: {not json", "data: [1, 2]", "data: null", 'data: {"choices": []}')
    assert read(chat_reader(), [body + CHAT_STREAM]) == CHAT_STREAM_USAGE


def test_corrupt_compressed_body_gives_unknown_usage_without_raising():
    body = encode(CHAT_STREAM, "gzip")
    corrupt = body[:30] + bytes(byte ^ 0x55 for byte in body[30:60]) + body[60:]
    reader = chat_reader(content_encoding="gzip")
    assert read(reader, [corrupt]) is None
    assert reader.complete  # nothing more to learn: the proxy may stop waiting


# --- Responses API -------------------------------------------------------------------------

RESPONSE_USAGE_JSON = (
    '{"input_tokens":2300,"input_tokens_details":{"cached_tokens":2048},'
    '"output_tokens":900,"output_tokens_details":{"reasoning_tokens":640},"total_tokens":3200}'
)


def responses_stream(final_type="response.completed", usage_json=RESPONSE_USAGE_JSON):
    """A Responses API stream; the response object's fields in the order OpenAI sends them."""

    def response(status, output, service_tier, usage):
        return (
            '{"id":"resp_68af","object":"response","created_at":1756300000,'
            f'"status":"{status}","background":false,"error":null,"incomplete_details":null,'
            '"instructions":null,"max_output_tokens":null,"model":"gpt-5-2025-08-07",'
            f'"output":{output},"parallel_tool_calls":true,"previous_response_id":null,'
            f'"reasoning":{{"effort":"medium","summary":null}},"service_tier":"{service_tier}",'
            '"store":true,"temperature":1.0,"tool_choice":"auto","tools":[],"top_p":1.0,'
            f'"truncation":"disabled","usage":{usage},"user":null,"metadata":{{}}}}'
        )

    message = (
        '[{"type":"message","id":"msg_1","status":"completed","role":"assistant",'
        '"content":[{"type":"output_text","text":"Hi","annotations":[]}]}]'
    )
    final_status = final_type.removeprefix("response.")
    return sse(
        "event: response.created\n"
        'data: {"type":"response.created","sequence_number":0,"response":'
        + response("in_progress", "[]", "auto", "null")
        + "}",
        "event: response.in_progress\n"
        'data: {"type":"response.in_progress","sequence_number":1,"response":'
        + response("in_progress", "[]", "auto", "null")
        + "}",
        "event: response.output_text.delta\n"
        'data: {"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_1",'
        '"output_index":0,"content_index":0,"delta":"Hi","logprobs":[]}',
        "event: response.output_text.done\n"
        'data: {"type":"response.output_text.done","sequence_number":3,"item_id":"msg_1",'
        '"output_index":0,"content_index":0,"text":"Hi","logprobs":[]}',
        f"event: {final_type}\n"
        f'data: {{"type":"{final_type}","sequence_number":4,"response":'
        + response(final_status, message, "priority", usage_json)
        + "}",
    )


RESPONSES_USAGE = Usage(
    input_tokens=2300,  # includes the 2048 cached
    cached_input_tokens=2048,
    cache_write_tokens=0,
    output_tokens=900,  # includes the 640 reasoning
    reasoning_tokens=640,
    model="gpt-5-2025-08-07",
    service_tier="priority",
    raw=json.loads(RESPONSE_USAGE_JSON),
)


@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_responses_stream_usage_from_response_completed(cut):
    info = RequestInfo("responses", "gpt-5", True)
    for chunks in cut(responses_stream()):
        assert read(adapter.usage_reader(info, 200, SSE, None), chunks) == RESPONSES_USAGE


@pytest.mark.parametrize("final_type", ["response.incomplete", "response.failed"])
def test_responses_stream_incomplete_and_failed_also_carry_usage(final_type):
    reader = adapter.usage_reader(RequestInfo("responses", stream=True), 200, SSE, None)
    body = responses_stream(final_type)
    reader.feed(body[: body.index(f"event: {final_type}".encode())])
    assert not reader.complete
    reader.feed(body[body.index(f"event: {final_type}".encode()) :])
    assert reader.complete
    assert reader.finish() == RESPONSES_USAGE


def test_responses_stream_with_a_huge_final_event_recovers_usage_from_its_tail():
    image = "iVBORw0KGgo" + "A" * (3 * 1024 * 1024)  # a generated image, base64, 3 MiB
    body = responses_stream().replace(
        b'"output":[{"type":"message"',
        b'"output":[{"type":"image_generation_call","id":"ig_1","status":"completed",'
        b'"result":"' + image.encode() + b'"},{"type":"message"',
    )
    reader = adapter.usage_reader(RequestInfo("responses", stream=True), 200, SSE, "gzip")
    assert read(reader, in_chunks(encode(body, "gzip"), 16 * 1024)) == RESPONSES_USAGE


def test_responses_body_usage():
    body = (
        '{"id":"resp_1","object":"response","created_at":1,"status":"completed",'
        '"model":"gpt-5-mini-2025-08-07","output":[],"service_tier":"flex",'
        '"usage":' + RESPONSE_USAGE_JSON + "}"
    ).encode()
    usage = read(adapter.usage_reader(RequestInfo("responses"), 200, JSON, None), [body])
    assert usage == Usage(
        input_tokens=2300,
        cached_input_tokens=2048,
        cache_write_tokens=0,
        output_tokens=900,
        reasoning_tokens=640,
        model="gpt-5-mini-2025-08-07",
        service_tier="flex",
        raw=json.loads(RESPONSE_USAGE_JSON),
    )


# --- whole bodies ----------------------------------------------------------------------------

CHAT_BODY = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1741569952,'
    b'"model":"gpt-4.1-2025-04-14","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hi","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,'
    b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},'
    b'"service_tier":"priority","system_fingerprint":"fp_1"}'
)


@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_chat_body_usage(cut):
    info = RequestInfo("chat", "gpt-4.1")
    for chunks in cut(CHAT_BODY):
        usage = read(adapter.usage_reader(info, 200, JSON, None), chunks)
        assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (19, 0, 10)
        assert (usage.reasoning_tokens, usage.cache_write_tokens) == (0, 0)
        assert (usage.model, usage.service_tier) == ("gpt-4.1-2025-04-14", "priority")


def test_chat_body_with_a_long_answer_past_the_cap():
    answer = "word " * 120_000  # 600 KB of content, past the 256 KiB cap
    body = CHAT_BODY.replace(b'"content":"Hi"', b'"content":"' + answer.encode() + b'"')
    reader = adapter.usage_reader(RequestInfo("chat"), 200, JSON, "br")
    usage = read(reader, in_chunks(encode(body, "br"), 4096))
    assert (usage.input_tokens, usage.output_tokens) == (19, 10)
    assert (usage.model, usage.service_tier) == ("gpt-4.1-2025-04-14", "priority")


def embeddings_body(count: int) -> bytes:
    generator = random.Random(7)
    data = ",".join(
        f'{{"object":"embedding","index":{index},"embedding":['
        + ",".join(f"{generator.uniform(-1, 1):.9f}" for _ in range(1536))
        + "]}"
        for index in range(count)
    )
    return (
        '{"object":"list","data":[' + data + '],"model":"text-embedding-3-small",'
        '"usage":{"prompt_tokens":8123,"total_tokens":8123}}'
    ).encode()


EMBEDDINGS_USAGE = Usage(
    input_tokens=8123,
    cached_input_tokens=0,
    cache_write_tokens=0,
    output_tokens=None,  # embeddings report no output
    reasoning_tokens=None,
    model="text-embedding-3-small",
    raw={"prompt_tokens": 8123, "total_tokens": 8123},
)


@pytest.mark.parametrize("encoding", [None, "gzip", "zstd"])
def test_embeddings_body_over_the_cap_recovers_usage_from_its_tail(encoding):
    body = embeddings_body(100)
    assert len(body) > 1_500_000
    payload = encode(body, encoding) if encoding else body
    reader = adapter.usage_reader(RequestInfo("embeddings"), 200, JSON, encoding)
    for chunk in in_chunks(payload, 16 * 1024):
        reader.feed(chunk)
        assert reader._body is None or len(reader._body) <= base.JSON_BODY_CAP + 64 * 1024
        assert len(reader._tail) <= 2 * TAIL_BYTES + 64 * 1024
    assert reader.finish() == EMBEDDINGS_USAGE


def test_small_embeddings_body():
    body = embeddings_body(2)
    assert read(adapter.usage_reader(RequestInfo("embeddings"), 200, JSON, None), [body]) == (
        EMBEDDINGS_USAGE
    )


# Kept bodies from JSON_TAIL_FIRST_BYTES up are read from their end when that is provably the
# same as parsing them whole; json.loads is the oracle below.

PADDING = "word " * 4000  # 20 KB: past JSON_TAIL_FIRST_BYTES, below the cap


def tail_cases() -> dict[str, bytes]:
    usage = '{"input_tokens":10,"output_tokens":5}'
    return {
        # Nothing of interest after the usage object: every field from before it.
        "embeddings-6": embeddings_body(6),
        "chat-long-answer": CHAT_BODY.replace(b'"Hi"', json.dumps(PADDING).encode()),
        # The tier between the bulky output and the usage object, and a usage-named object in
        # a tool schema after it: the nested one is not the usage.
        "responses-tool-schema-after-usage": (
            '{"model":"gpt-5","output":[{"content":' + json.dumps(PADDING) + "}],"
            '"service_tier":"flex","usage":' + usage + ","
            '"tools":[{"type":"function","parameters":{"properties":{"usage":'
            '{"type":"object","description":"x"}}}}],"user":null}'
        ).encode(),
        # The tier between the bulky output and the usage object, found by the scan before it.
        "responses-tier-before-usage": (
            '{"model":"gpt-5","output":[{"content":' + json.dumps(PADDING) + "}],"
            '"service_tier":"flex","usage":' + usage + ',"user":null}'
        ).encode(),
        # The real usage object comes first; the last one near the end is nested.
        "usage-before-a-nested-usage": (
            '{"model":"gpt-5","usage":'
            + usage
            + ',"output":[{"content":'
            + json.dumps(PADDING)
            + ',"meta":{"usage":{"input_tokens":999}}}]}'
        ).encode(),
        # A key that only ends in "usage", its quote escaped.
        "escaped-key": (
            '{"model":"m","usage":' + usage + ',"pad":' + json.dumps(PADDING) + ","
            '"a\\"usage":{"input_tokens":7}}'
        ).encode(),
        "null-tier": (
            '{"model":"m","output":' + json.dumps(PADDING) + ',"service_tier":null,'
            '"usage":' + usage + "}"
        ).encode(),
        "no-usage": ('{"model":"m","output":' + json.dumps(PADDING) + "}").encode(),
        "array": (
            "[" + '{"model":"m","output":' + json.dumps(PADDING) + ',"usage":' + usage + "}]"
        ).encode(),
        "cut-short": CHAT_BODY.replace(b'"Hi"', json.dumps(PADDING).encode())[:-3],
    }


@pytest.mark.parametrize("name", list(tail_cases()))
def test_a_body_read_from_its_end_gives_what_parsing_it_whole_gives(name):
    body = tail_cases()[name]
    assert len(body) >= base.JSON_TAIL_FIRST_BYTES
    info = RequestInfo("responses")
    expected = usage_from_openai_body(base.loads_or_none(body))
    assert read(adapter.usage_reader(info, 200, JSON, None), in_chunks(body, 4096)) == expected


def test_the_tail_read_takes_the_usage_only_where_it_is_provably_top_level():
    cases = tail_cases()
    usage = {"input_tokens": 10, "output_tokens": 5}
    keys = ("model", "service_tier")
    read_from_tail = {
        name: recovery.usage_document_from_tail(body, "usage", keys) for name, body in cases.items()
    }
    assert read_from_tail["embeddings-6"] == {
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8123, "total_tokens": 8123},
    }
    assert read_from_tail["responses-tier-before-usage"] == {
        "model": "gpt-5",
        "service_tier": "flex",
        "usage": usage,
    }
    assert read_from_tail["null-tier"] == {"model": "m", "usage": usage}
    # Where the end proves nothing, the caller parses the whole body.
    for name in (
        "responses-tool-schema-after-usage",
        "usage-before-a-nested-usage",
        "escaped-key",
        "no-usage",
        "array",
        "cut-short",
    ):
        assert read_from_tail[name] is None, name


def test_truncated_or_garbled_body_has_no_usage():
    reader = adapter.usage_reader(RequestInfo("chat"), 200, JSON, None)
    assert read(reader, [CHAT_BODY[: len(CHAT_BODY) // 2]]) is None
    reader = adapter.usage_reader(RequestInfo("chat"), 200, JSON, None)
    assert read(reader, [os.urandom(600_000)]) is None


def test_other_endpoints_have_no_usage():
    reader = adapter.usage_reader(RequestInfo("other"), 200, JSON, None)
    assert reader.complete
    assert read(reader, [CHAT_BODY]) is None


# --- the one body change -------------------------------------------------------------------


def inject(body: bytes, info: RequestInfo = CHAT_STREAM_INFO, enabled: bool = True):
    return adapter.prepare_request_body(info, body, enabled)


def test_include_usage_is_added_when_absent():
    body = (
        b'{"model": "gpt-4o", "stream": true,'
        b' "messages": [{"role": "user", "content": "h\xc3\xa9"}]}'
    )
    new_body, injected = inject(body)
    assert injected
    assert json.loads(new_body) == {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "hé"}],
        "stream_options": {"include_usage": True},
    }


def test_include_usage_false_becomes_true_and_other_options_are_kept():
    body = (
        b'{"stream": true,'
        b' "stream_options": {"include_obfuscation": false, "include_usage": false}}'
    )
    new_body, injected = inject(body)
    assert injected
    assert json.loads(new_body)["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }


@pytest.mark.parametrize(
    ("body", "info", "enabled"),
    [
        (b'{"stream": true, "stream_options": {"include_usage": true}}', CHAT_STREAM_INFO, True),
        (b'{"stream": false, "messages": []}', RequestInfo("chat"), True),
        (b'{"model": "gpt-4o", "messages": []}', RequestInfo("chat"), True),
        (b'{"stream": true}', RequestInfo("responses", stream=True), True),
        (b'{"stream": true}', CHAT_STREAM_INFO, False),
        (b'{"stream": true, "messages": [', CHAT_STREAM_INFO, True),
        (b"\xff\xfe garbage", CHAT_STREAM_INFO, True),
        (b'{"stream": true, "stream_options": "weird"}', CHAT_STREAM_INFO, True),
        (b'["stream", true]', CHAT_STREAM_INFO, True),
    ],
)
def test_other_bodies_are_returned_as_the_same_bytes(body, info, enabled):
    assert inject(body, info, enabled) == (body, False)


# --- the client filter ---------------------------------------------------------------------


def client_filter(content_encoding=None, status=200, content_type=SSE):
    return adapter.client_stream_filter(CHAT_STREAM_INFO, status, content_type, content_encoding)


def run_filter(stream_filter, chunks):
    return b"".join(stream_filter.feed(chunk) for chunk in chunks) + stream_filter.finish()


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_filter_removes_exactly_the_usage_event(cut, newline):
    stream = sse(*CONTENT_EVENTS, USAGE_EVENT, "data: [DONE]", newline=newline)
    expected = sse(*CONTENT_EVENTS, "data: [DONE]", newline=newline)
    for chunks in cut(stream):
        assert run_filter(client_filter(), chunks) == expected


def test_filter_forwards_each_event_as_soon_as_it_is_complete():
    stream_filter = client_filter()
    first = sse(CONTENT_EVENTS[0])
    assert stream_filter.feed(first[:-1]) == b""
    assert stream_filter.feed(first[-1:]) == first
    assert stream_filter.feed(sse(USAGE_EVENT)) == b""
    assert stream_filter.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert stream_filter.finish() == b""


def test_filter_keeps_comments_other_empty_choice_chunks_and_odd_bytes():
    moderation_chunk = (
        'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
        '"choices":[],"moderation":{"input":{},"output":{}},"usage":null}'
    )
    stream = (
        b": keep-alive\n\n"
        + sse(moderation_chunk, *CONTENT_EVENTS[:2])
        + b"\n\n"
        + sse(USAGE_EVENT, "data: [DONE]")
    )
    expected = stream.replace(sse(USAGE_EVENT), b"")
    assert run_filter(client_filter(), byte_by_byte(stream)[0]) == expected


def test_filter_passes_a_huge_event_through_without_holding_it():
    big_event = sse("data: " + _CHUNK_HEAD + '"choices":[{"delta":{"content":"' + "z" * 300_000)
    big_event = big_event[:-2] + b'"}}],"usage":null}\n\n'
    stream_filter = client_filter()
    output = stream_filter.feed(big_event[:200_000])
    assert len(output) >= 200_000 - 64 * 1024
    output += stream_filter.feed(big_event[200_000:] + sse(USAGE_EVENT, "data: [DONE]"))
    assert output + stream_filter.finish() == big_event + b"data: [DONE]\n\n"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_filter_decodes_a_compressed_stream_and_says_which_headers_to_drop(encoding):
    stream_filter = client_filter(content_encoding=encoding)
    compressed = encode(CHAT_STREAM, encoding)
    output = run_filter(stream_filter, byte_by_byte(compressed)[0])
    assert output == CHAT_STREAM_WITHOUT_USAGE_EVENT
    assert stream_filter.decodes
    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"Content-Encoding", encoding.encode()),
        (b"content-length", str(len(compressed)).encode()),
        (b"x-request-id", b"req_1"),
    ]
    assert stream_filter.response_headers(headers) == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-request-id", b"req_1"),
    ]


def test_uncompressed_filter_drops_only_content_length():
    stream_filter = client_filter()
    assert not stream_filter.decodes
    assert stream_filter.headers_to_remove == {b"content-length"}


def test_no_filter_where_there_is_nothing_to_hide():
    assert client_filter(status=400, content_type=JSON) is None
    assert client_filter(content_type=JSON) is None
    assert client_filter(content_encoding="compress") is None
    assert adapter.client_stream_filter(RequestInfo("responses"), 200, SSE, None) is None


def test_usage_reader_fed_upstream_bytes_still_sees_the_hidden_chunk():
    stream_filter, reader = client_filter("gzip"), chat_reader(content_encoding="gzip")
    to_client = b""
    for chunk in in_chunks(encode(CHAT_STREAM, "gzip"), 50):
        reader.feed(chunk)
        to_client += stream_filter.feed(chunk)
    assert to_client + stream_filter.finish() == CHAT_STREAM_WITHOUT_USAGE_EVENT
    assert reader.finish() == CHAT_STREAM_USAGE


# The proxy feeds the reader through the filter (one split per chunk): the client must get the
# same bytes and the event the same usage as when each is fed on its own.


def shared(content_encoding=None):
    stream_filter, reader = (
        client_filter(content_encoding),
        chat_reader(content_encoding=content_encoding),
    )
    assert stream_filter.share(reader)
    return stream_filter, reader


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_a_reader_fed_through_the_filter_sees_the_usage_the_client_does_not(cut, newline):
    stream = sse(*CONTENT_EVENTS, USAGE_EVENT, "data: [DONE]", newline=newline)
    expected = sse(*CONTENT_EVENTS, "data: [DONE]", newline=newline)
    for chunks in cut(stream):
        stream_filter, reader = shared()
        assert run_filter(stream_filter, chunks) == expected
        assert reader.finish() == CHAT_STREAM_USAGE


def test_a_reader_fed_through_the_filter_event_by_event_is_complete_at_the_usage_chunk():
    stream_filter, reader = shared()
    for event in (*CONTENT_EVENTS, USAGE_EVENT):
        assert not reader.complete
        stream_filter.feed(sse(event))
    assert reader.complete
    assert stream_filter.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert reader.finish() == CHAT_STREAM_USAGE


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_reader_fed_through_the_filter_of_a_compressed_stream(encoding):
    stream_filter, reader = shared(encoding)
    output = run_filter(stream_filter, in_chunks(encode(CHAT_STREAM, encoding), 50))
    assert output == CHAT_STREAM_WITHOUT_USAGE_EVENT
    assert reader.finish() == CHAT_STREAM_USAGE


def test_a_stream_broken_off_after_an_unterminated_usage_event_still_gives_its_usage():
    """No filter ``finish`` when the upstream breaks: the reader's own finish takes the
    unterminated last event from the splitter they share."""
    stream_filter, reader = shared()
    stream = sse(*CONTENT_EVENTS) + USAGE_EVENT.encode() + b"\n"
    for chunk in in_chunks(stream, 100):
        stream_filter.feed(chunk)
    assert reader.finish() == CHAT_STREAM_USAGE


def test_an_unterminated_usage_event_at_a_clean_end_reaches_the_reader_through_the_filter():
    stream_filter, reader = shared()
    stream = sse(*CONTENT_EVENTS) + USAGE_EVENT.encode()
    assert run_filter(stream_filter, [stream]) == sse(*CONTENT_EVENTS)
    assert reader.finish() == CHAT_STREAM_USAGE


def test_an_event_too_big_to_hold_is_forwarded_even_when_it_arrives_whole():
    """Past FILTER_EVENT_BYTES an event is passed on rather than held, so even a usage chunk
    that large reaches the client, in one network chunk or in many alike."""
    huge_usage = USAGE_EVENT[:-1] + ',"padding":"' + "p" * 70_000 + '"}'
    stream = sse(CONTENT_EVENTS[0], huge_usage)
    for chunks in ([sse(CONTENT_EVENTS[0]), sse(huge_usage)], in_chunks(stream, 1000)):
        stream_filter, _ = shared()
        assert run_filter(stream_filter, chunks) == stream


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
@pytest.mark.parametrize("encoding", [None, "gzip", "br"])
def test_every_client_stream_filter_implements_the_stream_filter_interface(provider, encoding):
    """The proxy calls ``share``, ``response_headers``, ``feed`` and ``finish`` on whatever
    filter an adapter returns: all are declared by ``StreamFilter``, and present here."""
    provider_adapter = ADAPTERS[provider]
    for endpoint in sorted(provider_adapter.metered_endpoints):
        info = RequestInfo(endpoint, "m", True)
        stream_filter = provider_adapter.client_stream_filter(info, 200, SSE, encoding)
        assert stream_filter is None or isinstance(stream_filter, StreamFilter)
    assert isinstance(client_filter(encoding), StreamFilter)


def test_the_filter_shares_only_with_an_event_stream_reader_of_the_same_coding():
    assert not client_filter().share(chat_reader(content_encoding="gzip"))
    assert not client_filter().share(chat_reader(status=500))  # reads nothing
    assert not client_filter("br").share(chat_reader())


@pytest.mark.parametrize("method", ["credential_from", "swap_credential"])
def test_methods_holding_keys_hide_their_variables_from_error_reports(method):
    assert getattr(adapter, method).sensitive_variables == "__ALL__"
