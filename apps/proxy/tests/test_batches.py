"""The proxy's part in batches (apps/proxy/batches.py), piece by piece: which calls are batch
calls, the origin the rewritten ``results_url`` names, the rewrite itself on the stream
(members split across chunks, compressed answers, everything else byte for byte).

End to end, with the SDKs through a real Costr, in tests/test_batches.py.
"""

import gzip
import json

import pytest

from apps.proxy.batches import ResultsUrlFilter, batch_call
from costr.net.decoding import ContentDecoder

BASE = "https://costr.example/p/acme/anthropic"


def _call(provider, method, rest, headers=(), scope=None):
    return batch_call(
        provider,
        method,
        rest,
        list(headers),
        scope or {"scheme": "http"},
        "acme",
        "00000000-0000-0000-0000-000000000001",
    )


def test_batch_calls_are_told_apart_from_everything_else():
    host = [(b"host", b"costr.example")]
    openai_create = _call("openai", "POST", "v1/batches", host)
    assert (openai_create.creates, openai_create.rewrite_base) == (True, None)
    assert _call("openai", "GET", "v1/batches/batch_1", host) is None
    assert _call("openai", "POST", "v1/chat/completions", host) is None
    create = _call("anthropic", "POST", "v1/messages/batches", host)
    assert (create.creates, create.rewrite_base) == (True, "http://costr.example/p/acme/anthropic")
    for method, rest in (
        ("GET", "v1/messages/batches"),
        ("GET", "v1/messages/batches/msgbatch_1"),
        ("POST", "v1/messages/batches/msgbatch_1/cancel"),
    ):
        call = _call("anthropic", method, rest, host)
        assert (call.creates, call.rewrite_base) == (False, "http://costr.example/p/acme/anthropic")
    # The results file itself goes through untouched, and so does anything else.
    assert _call("anthropic", "GET", "v1/messages/batches/msgbatch_1/results", host) is None
    assert _call("anthropic", "POST", "v1/messages", host) is None
    assert _call("anthropic", "GET", "v1/messages/batchesx", host) is None


@pytest.mark.parametrize(
    ("headers", "scheme", "origin"),
    [
        ([(b"host", b"costr.example")], "https", "https://costr.example"),
        ([(b"host", b"costr.example:8443")], "http", "http://costr.example:8443"),
        # Behind a TLS proxy the server sees http; the proxy says https.
        (
            [(b"host", b"costr.example"), (b"x-forwarded-proto", b"https, http")],
            "http",
            "https://costr.example",
        ),
        ([(b"host", b"[::1]:8000")], "http", "http://[::1]:8000"),
        # A Host that is no host name: the configured base URL.
        ([(b"host", b'evil"/><x')], "http", "http://127.0.0.1:8000"),
        ([], "http", "http://127.0.0.1:8000"),
    ],
)
def test_the_rewritten_url_names_the_origin_the_client_reached(settings, headers, scheme, origin):
    settings.COSTR_BASE_URL = "http://127.0.0.1:8000"
    call = _call("anthropic", "GET", "v1/messages/batches", headers, {"scheme": scheme})
    assert call.rewrite_base == f"{origin}/p/acme/anthropic"


def _batch(results_url):
    return {
        "id": "msgbatch_01",
        "type": "message_batch",
        "processing_status": "ended",
        "results_url": results_url,
        "note": 'a "results_url": "https://api.anthropic.com/x" inside a string',
    }


def _filtered(body: bytes, chunk: int, encoding: str = "identity") -> bytes:
    rewrite = ResultsUrlFilter(ContentDecoder(encoding), BASE)
    out = b"".join(rewrite.feed(body[i : i + chunk]) for i in range(0, len(body), chunk))
    return out + rewrite.finish()


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_results_url_is_rewritten_and_every_other_byte_kept(settings, chunk):
    settings.COSTR_UPSTREAM_ANTHROPIC = "https://api.anthropic.com"
    upstream = "https://api.anthropic.com/v1/messages/batches/msgbatch_01/results"
    listed = {"data": [_batch(upstream), _batch(None), _batch(upstream + "?page=2")]}
    body = json.dumps(listed, indent=1).encode()  # whitespace around the colons, as any JSON

    out = _filtered(body, chunk)

    expected = json.loads(body)
    expected["data"][0]["results_url"] = f"{BASE}/v1/messages/batches/msgbatch_01/results"
    expected["data"][2]["results_url"] = f"{BASE}/v1/messages/batches/msgbatch_01/results?page=2"
    assert json.loads(out) == expected
    # Byte for byte but the URLs: the same text with the two URLs swapped back.
    assert out.replace(f"{BASE}/v1".encode(), b"https://api.anthropic.com/v1") == body


def test_a_compressed_answer_is_rewritten_decoded(settings):
    settings.COSTR_UPSTREAM_ANTHROPIC = "https://api.anthropic.com"
    upstream = "https://api.anthropic.com/v1/messages/batches/msgbatch_01/results"
    body = json.dumps(_batch(upstream)).encode()
    rewrite = ResultsUrlFilter(ContentDecoder("gzip"), BASE)
    headers = rewrite.response_headers(
        [
            (b"content-type", b"application/json"),
            (b"content-encoding", b"gzip"),
            (b"content-length", b"99"),
        ]
    )
    compressed = gzip.compress(body)
    out = rewrite.feed(compressed[:10]) + rewrite.feed(compressed[10:]) + rewrite.finish()
    assert headers == [(b"content-type", b"application/json")]
    assert json.loads(out)["results_url"] == f"{BASE}/v1/messages/batches/msgbatch_01/results"


def test_an_upstream_path_prefix_is_not_repeated_and_no_url_leads_elsewhere(settings):
    settings.COSTR_UPSTREAM_ANTHROPIC = "http://127.0.0.1:9999/anthropic"
    body = json.dumps(
        {
            "a": {"results_url": "http://127.0.0.1:9999/anthropic/v1/messages/batches/m/results"},
            "b": {"results_url": "https://elsewhere.example/file.jsonl"},
            "c": {"results_url": "?"},
        }
    ).encode()
    out = json.loads(_filtered(body, 5))
    assert out["a"]["results_url"] == f"{BASE}/v1/messages/batches/m/results"
    # Whatever host an answer names, the path is followed through Costr only.
    assert out["b"]["results_url"] == f"{BASE}/file.jsonl"
    assert out["c"]["results_url"] == ""
