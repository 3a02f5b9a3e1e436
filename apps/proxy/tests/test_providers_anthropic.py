"""Anthropic adapter: requests, credentials, errors, and usage from Messages bodies and streams.
Fixtures are written as the Messages API sends them."""

import json
import random

import pytest

from apps.proxy.providers.anthropic import adapter
from apps.proxy.providers.base import RequestInfo
from apps.proxy.tests import byte_by_byte, encode, every_split, in_chunks, read, sse, whole
from apps.usage.metering.provider_usage import Usage

SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"
STREAM_INFO = RequestInfo("messages", "claude-sonnet-4-5", True)

MESSAGE_START = (
    "event: message_start\n"
    'data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL",'
    '"type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],'
    '"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,'
    '"cache_creation_input_tokens":3000,"cache_read_input_tokens":20000,'
    '"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000},'
    '"output_tokens":1,"service_tier":"standard"}}}'
)
BODY_EVENTS = (
    'event: ping\ndata: {"type": "ping"}',
    "event: content_block_start\n"
    'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":"Hello \\"usage\\": {\\"output_tokens\\": 9}"}}',
    'event: ping\ndata: {"type": "ping"}',
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}',
    'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}',
)
# Two deltas, as with a server tool pause: the first repeats every field, the second (as some
# API versions do) only output_tokens. Both are cumulative: the last value wins.
MESSAGE_DELTAS = (
    "event: message_delta\n"
    'data: {"type":"message_delta","delta":{"stop_reason":null,"stop_sequence":null},'
    '"usage":{"input_tokens":12,"cache_creation_input_tokens":3000,'
    '"cache_read_input_tokens":20000,"output_tokens":150}}',
    "event: message_delta\n"
    'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    '"usage":{"output_tokens":412}}',
)
MESSAGE_STOP = 'event: message_stop\ndata: {"type":"message_stop"}'
STREAM = sse(MESSAGE_START, *BODY_EVENTS, *MESSAGE_DELTAS, MESSAGE_STOP)
STREAM_USAGE = Usage(
    input_tokens=23012,  # 12 uncached + 3000 cache writes + 20000 cache reads
    cached_input_tokens=20000,
    cache_write_tokens=3000,
    cache_write_1h_tokens=2000,
    output_tokens=412,  # the last message_delta's, not 1 + 150 + 412
    reasoning_tokens=None,  # not broken out by this response
    model="claude-sonnet-4-5-20250929",
    service_tier=None,  # "standard"
    raw={
        "input_tokens": 12,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 20000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "output_tokens": 412,
        "service_tier": "standard",
    },
)


def stream_reader(content_encoding=None, status=200):
    return adapter.usage_reader(STREAM_INFO, status, SSE, content_encoding)


# --- requests, credentials, errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "endpoint"),
    [
        ("POST", "v1/messages", "messages"),
        ("POST", "/v1/messages/", "messages"),
        ("POST", "v1/messages/count_tokens", "count_tokens"),
        ("POST", "v1/messages/batches", "other"),
        ("GET", "v1/models", "other"),
        ("GET", "v1/messages", "other"),
    ],
)
def test_endpoint_from_method_and_path(method, path, endpoint):
    assert adapter.inspect_request(method, path, None).endpoint == endpoint


def test_model_and_stream_from_the_body():
    body = b'{"model":"claude-opus-4-1","max_tokens":1024,"stream":true,"messages":[]}'
    assert adapter.inspect_request("POST", "v1/messages", body) == RequestInfo(
        "messages", "claude-opus-4-1", True
    )
    assert adapter.inspect_request("POST", "v1/messages", b'{"model": "x", "stream"') == (
        RequestInfo("messages")
    )


def test_credential_from_x_api_key_or_bearer():
    assert adapter.credential_from([(b"X-Api-Key", b"costr_old_sdk")], b"") == "costr_old_sdk"
    headers = [(b"authorization", b"Bearer costr_new_sdk"), (b"anthropic-version", b"2023-06-01")]
    assert adapter.credential_from(headers, b"") == "costr_new_sdk"
    assert adapter.credential_from([(b"x-api-key", b"")], b"") is None
    assert adapter.credential_from([], b"key=costr_x") is None


def test_swap_keeps_the_place_the_client_used():
    headers = [(b"x-api-key", b"costr_a"), (b"anthropic-version", b"2023-06-01")]
    assert adapter.swap_credential(headers, b"beta=true", "sk-ant-REAL") == (
        [(b"x-api-key", b"sk-ant-REAL"), (b"anthropic-version", b"2023-06-01")],
        b"beta=true",
    )
    headers = [(b"anthropic-version", b"2023-06-01"), (b"authorization", b"Bearer costr_a")]
    assert adapter.swap_credential(headers, b"", "sk-ant-REAL")[0] == [
        (b"anthropic-version", b"2023-06-01"),
        (b"authorization", b"Bearer sk-ant-REAL"),
    ]
    both = [(b"authorization", b"Bearer costr_a"), (b"x-api-key", b"costr_a")]
    swapped = adapter.swap_credential(both, b"", "sk-ant-REAL")[0]
    assert swapped == [(b"authorization", b"Bearer sk-ant-REAL"), (b"x-api-key", b"sk-ant-REAL")]


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, "authentication_error"), (400, "invalid_request_error"), (504, "timeout_error")],
)
def test_error_body_is_anthropic_shaped(status, kind):
    body = json.loads(adapter.error_body(status, "invalid_token", "Costr: bad token."))
    assert body == {"type": "error", "error": {"type": kind, "message": "Costr: bad token."}}


# --- streams -------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_stream_usage_is_message_start_overwritten_by_the_last_delta(cut):
    for chunks in cut(STREAM):
        assert read(stream_reader(), chunks) == STREAM_USAGE


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "br", "zstd"])
def test_compressed_stream(encoding):
    header = "deflate" if encoding == "raw-deflate" else encoding
    body = encode(STREAM, encoding)
    for chunks in [[body], in_chunks(body, 5), byte_by_byte(body)[0]]:
        assert read(stream_reader(header), chunks) == STREAM_USAGE


def test_gzip_stream_split_everywhere():
    body = encode(STREAM, "gzip")
    for chunks in every_split(body):
        assert read(stream_reader("gzip"), chunks) == STREAM_USAGE


def test_stream_is_complete_at_message_stop_not_at_the_first_delta():
    reader = stream_reader()
    for event in (MESSAGE_START, *BODY_EVENTS, *MESSAGE_DELTAS):
        reader.feed(sse(event))
        assert not reader.complete
    reader.feed(sse(MESSAGE_STOP))
    assert reader.complete
    assert reader.finish() == STREAM_USAGE


def test_delta_nulls_do_not_erase_and_thinking_tokens_are_reasoning():
    start = MESSAGE_START.replace('"output_tokens":1,', '"output_tokens":3,')
    delta = (
        "event: message_delta\n"
        'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{'
        '"input_tokens":null,"cache_creation_input_tokens":null,"cache_read_input_tokens":null,'
        '"output_tokens":2500,"output_tokens_details":{"thinking_tokens":1900}}}'
    )
    usage = read(stream_reader(), [sse(start, delta, MESSAGE_STOP)])
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        23012,
        20000,
        3000,
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (2500, 1900)


def test_stream_broken_by_an_error_event_keeps_what_was_seen():
    error = (
        "event: error\n"
        'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    )
    reader = stream_reader()
    usage = read(reader, [sse(MESSAGE_START, *BODY_EVENTS[:3], error)])
    assert not reader.complete
    assert (usage.input_tokens, usage.output_tokens, usage.cache_write_1h_tokens) == (
        23012,
        1,
        2000,
    )


def test_stream_cut_before_message_start_has_no_usage():
    assert read(stream_reader(), [STREAM[:40]]) is None


def test_priority_tier_and_no_cache_fields():
    start = (
        "event: message_start\n"
        'data: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        '"role":"assistant","model":"claude-haiku-4-5","content":[],"stop_reason":null,'
        '"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":1,'
        '"service_tier":"priority"}}}'
    )
    delta = (
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        '"usage":{"output_tokens":7}}'
    )
    usage = read(stream_reader(), [sse(start, delta, MESSAGE_STOP)])
    assert usage == Usage(
        input_tokens=42,
        cached_input_tokens=0,
        cache_write_tokens=0,
        cache_write_1h_tokens=0,
        output_tokens=7,
        model="claude-haiku-4-5",
        service_tier="priority",
        raw={"input_tokens": 42, "output_tokens": 7, "service_tier": "priority"},
    )


@pytest.mark.parametrize("content_type", [SSE, JSON])
def test_garbage_never_raises(content_type):
    generator = random.Random(99)
    for encoding in [None, "gzip", "br", "zstd"]:
        for _ in range(30):
            reader = adapter.usage_reader(STREAM_INFO, 200, content_type, encoding)
            chunks = [generator.randbytes(generator.randint(0, 200)) for _ in range(4)]
            chunks += [b'event: message_start\ndata: {"message": 5}\n\n', b"\xff\n\n"]
            result = read(reader, chunks)
            assert result is None or isinstance(result, Usage)


# --- whole bodies ----------------------------------------------------------------------------

MESSAGE_BODY = (
    b'{"model":"claude-opus-4-1-20250805","id":"msg_01","type":"message","role":"assistant",'
    b'"content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,'
    b'"usage":{"input_tokens":250,"cache_creation_input_tokens":1200,'
    b'"cache_read_input_tokens":800,"cache_creation":{"ephemeral_5m_input_tokens":1200,'
    b'"ephemeral_1h_input_tokens":0},"output_tokens":95,"service_tier":"standard"}}'
)
MESSAGE_USAGE = Usage(
    input_tokens=2250,  # 250 + 1200 + 800
    cached_input_tokens=800,
    cache_write_tokens=1200,
    cache_write_1h_tokens=0,
    output_tokens=95,
    model="claude-opus-4-1-20250805",
    raw=json.loads(MESSAGE_BODY)["usage"],
)


@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_message_body_usage(cut):
    for chunks in cut(MESSAGE_BODY):
        reader = adapter.usage_reader(RequestInfo("messages"), 200, JSON, None)
        assert read(reader, chunks) == MESSAGE_USAGE


def test_large_message_body_past_the_cap():
    """The model is read at the top level of the head: a nested ``"model"`` does not count."""
    content = (
        '[{"type":"tool_use","id":"toolu_1","name":"pick","input":{"model":"not-this"}},'
        '{"type":"text","text":"' + "x" * 700_000 + '"}]'
    )
    body = MESSAGE_BODY.replace(b'[{"type":"text","text":"Hi"}]', content.encode())
    assert json.loads(body)["content"][0]["input"]["model"] == "not-this"
    reader = adapter.usage_reader(RequestInfo("messages"), 200, JSON, "gzip")
    assert read(reader, in_chunks(encode(body, "gzip"), 8192)) == MESSAGE_USAGE


def test_count_tokens_and_errors_have_no_usage():
    reader = adapter.usage_reader(RequestInfo("count_tokens"), 200, JSON, None)
    assert reader.complete
    assert read(reader, [b'{"input_tokens": 2095}']) is None
    error = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert read(adapter.usage_reader(RequestInfo("messages"), 529, JSON, None), [error]) is None


@pytest.mark.parametrize("method", ["credential_from", "swap_credential"])
def test_methods_holding_keys_hide_their_variables_from_error_reports(method):
    assert getattr(adapter, method).sensitive_variables == "__ALL__"
