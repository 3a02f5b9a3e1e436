"""Every content encoding a client asks for (DESIGN.md, "Every endpoint and transport the SDKs
use"): zstd read for usage like gzip and br, the bytes unchanged; a coding Costr cannot read, or
a body past the decoding bound, flows unchanged and is flagged ``usage_unknown``; and the usage
chunk Costr asked for never reaches a client that did not, whatever coding it accepts.

httpx (0.29, the client litellm's SDK uses) asks for ``gzip, deflate, br, zstd`` and decodes
zstd; it stands in here for every client that does (openai-python asks for zstd too once a zstd
decoder is installed, which this environment's httpx2 lacks).
"""

import json
from decimal import Decimal

import pytest
import zstandard

from apps.proxy.tests.test_proxy_streaming import CALLS, FULL_USAGE, PROVIDERS, _credential
from costr.net.decoding import decodable_accept_encoding

ZSTD_ACCEPTED = {"accept-encoding": "gzip, deflate, br, zstd"}
MESSAGES = [{"role": "user", "content": "Hi"}]


def _call(proxy, provider: str, stream: bool, knobs: dict[str, str], *, direct: bool = False):
    path, body = CALLS[provider, stream]
    if direct:
        url, headers = proxy.fake.url + path, _credential(provider, proxy.fake.keys[provider])
    else:
        url, headers = f"{proxy.base}/{provider}{path}", _credential(provider, proxy.token)
    return url, headers | knobs, json.dumps(body).encode()


def _raw(http, url: str, headers: dict[str, str], body: bytes) -> tuple[object, bytes]:
    """The response and its body bytes exactly as they came over the wire (still encoded)."""
    with http.stream("POST", url, headers=headers, content=body) as response:
        return response, b"".join(response.iter_raw())


def _direct_and_proxied(http, proxy, provider, stream, knobs):
    url, headers, body = _call(proxy, provider, stream, knobs, direct=True)
    _, expected = _raw(http, url, headers, body)
    proxy.fake.clear()
    url, headers, body = _call(proxy, provider, stream, knobs)
    response, received = _raw(http, url, headers, body)
    return response, received, expected


def _usage(event) -> tuple:
    return event.input_tokens, event.cached_input_tokens, event.output_tokens


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_zstd_response_is_forwarded_byte_for_byte_and_metered(http, proxy, provider, stream):
    knobs = ZSTD_ACCEPTED | {"x-fake-encoding": "zstd"}

    response, received, expected = _direct_and_proxied(http, proxy, provider, stream, knobs)

    assert response.status_code == 200
    assert response.headers["content-encoding"] == "zstd"
    assert received == expected
    decoded = zstandard.ZstdDecompressor().decompressobj().decompress(received)
    assert b"Hello" in decoded
    [event] = proxy.events()
    assert (event.stream, event.outcome, event.price_source) == (stream, "ok", "catalog")
    assert _usage(event) == FULL_USAGE[provider]


def test_a_zstd_response_is_priced_exactly(http, proxy):
    knobs = ZSTD_ACCEPTED | {"x-fake-encoding": "zstd"}
    url, headers, body = _call(proxy, "openai", False, knobs)

    response = http.post(url, headers=headers, content=body)

    assert response.json()["usage"]["prompt_tokens"] == 1200  # httpx decoded the zstd body
    [event] = proxy.events()
    # gpt-4o-mini: $0.15 per million input tokens, $0.075 cached, $0.60 output (genai-prices):
    # 200 uncached, 1000 cached, 300 output.
    expected = (200 * Decimal("0.15") + 1000 * Decimal("0.075") + 300 * Decimal("0.60")) / 10**6
    assert event.cost_usd == expected == Decimal("0.000285")


def test_an_injected_chat_stream_in_zstd_hides_the_usage_chunk(http, proxy):
    """The stream Costr asked usage for, in zstd: decoded for the client, the chunk cut out."""
    headers = _credential("openai", proxy.token) | ZSTD_ACCEPTED | {"x-fake-encoding": "zstd"}
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}

    with http.stream(
        "POST", f"{proxy.url('openai')}/chat/completions", headers=headers, json=body
    ) as response:
        received = b"".join(response.iter_raw())

    assert proxy.fake.last_request.json()["stream_options"] == {"include_usage": True}
    assert "content-encoding" not in response.headers
    assert received.startswith(b"data: {") and received.endswith(b"data: [DONE]\n\n")
    assert b'"choices":[]' not in received
    [event] = proxy.events()
    assert _usage(event) == FULL_USAGE["openai"]


@pytest.mark.parametrize(
    ("accepted", "forwarded"),
    [
        ("gzip, compress, br;q=0.5, *;q=0.1", "gzip, br;q=0.5"),
        ("*", "identity"),
        ("compress", "identity"),
    ],
)
def test_an_injected_request_asks_the_upstream_only_for_codings_costr_decodes(
    http, proxy, accepted, forwarded
):
    """A client accepting a coding Costr cannot decode (or any, ``*``) must not get it back
    with the usage chunk inside: the injected request admits only codings Costr reads."""
    headers = _credential("openai", proxy.token) | {
        "x-fake-encoding": "gzip",
        "accept-encoding": accepted,
    }
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}

    with http.stream(
        "POST", f"{proxy.url('openai')}/chat/completions", headers=headers, json=body
    ) as response:
        received = b"".join(response.iter_raw())

    [upstream_request] = proxy.fake.requests
    assert upstream_request.header_values("accept-encoding") == [forwarded]
    assert b'"choices":[]' not in received and received.endswith(b"data: [DONE]\n\n")
    [event] = proxy.events()
    assert _usage(event) == FULL_USAGE["openai"]


@pytest.mark.parametrize(
    ("accepted", "kept"),
    [
        (b"gzip, deflate, br, zstd", b"gzip, deflate, br, zstd"),
        (b"GZIP;q=0.8, x-gzip, dcb, dcz, identity;q=0.1", b"GZIP;q=0.8, x-gzip"),
        (b"*", b"identity"),
        (b"", b"identity"),
        (None, b"identity"),
    ],
)
def test_decodable_accept_encoding_keeps_only_what_costr_decodes(accepted, kept):
    assert decodable_accept_encoding(accepted) == kept


def test_a_request_costr_does_not_rewrite_keeps_its_accept_encoding(http, proxy):
    accepted = "gzip, compress, *;q=0.1"
    headers = _credential("openai", proxy.token) | {"accept-encoding": accepted}
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    http.post(f"{proxy.url('openai')}/chat/completions", headers=headers, json=body)

    assert proxy.fake.last_request.header_values("accept-encoding") == [accepted]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_coding_costr_cannot_read_flows_unchanged_and_is_usage_unknown(
    http, proxy, provider, stream
):
    """Stacked codings (gzip, then zstd) are valid HTTP that Costr does not decode."""
    knobs = {"accept-encoding": "gzip, zstd", "x-fake-encoding": "gzip, zstd"}

    response, received, expected = _direct_and_proxied(http, proxy, provider, stream, knobs)

    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip, zstd"
    assert received == expected
    [event] = proxy.events()
    assert (event.status, event.outcome, event.stream) == (200, "ok", stream)
    assert _usage(event) == (None, None, None)
    assert (event.price_source, event.cost_usd) == ("usage_unknown", None)


@pytest.mark.parametrize("encoding", ["zstd", "gzip", "br"])
def test_a_body_past_the_decoding_bound_flows_unchanged_and_is_usage_unknown(
    http, proxy, settings, encoding
):
    """The fake's answer decodes to more than Costr decodes for one response here."""
    settings.COSTR_PROXY_MAX_DECODED_BYTES = 200
    knobs = ZSTD_ACCEPTED | {"x-fake-encoding": encoding}

    response, received, expected = _direct_and_proxied(http, proxy, "anthropic", False, knobs)

    assert response.headers["content-encoding"] == encoding
    assert received == expected
    [event] = proxy.events()
    assert _usage(event) == (None, None, None)
    assert (event.model, event.outcome, event.price_source) == (
        "claude-haiku-4-5",
        "ok",
        "usage_unknown",
    )
