"""A request body over ``COSTR_PROXY_INSPECT_BYTES`` (a vision request with a large image) is
forwarded unbuffered and unread, and still metered from the response (DESIGN.md, "Every endpoint
and transport the SDKs use"): the endpoint from the path, the model and usage from the response,
the stream flag from the response's content type. The OpenAI usage injection is impossible
there: such a stream is metered only when the client asked for usage itself.
"""

import base64
import os
from decimal import Decimal

import pytest

from apps.proxy.tests.test_proxy_streaming import FULL_USAGE

# The model the fake reports, as OpenAI reports a dated snapshot for an alias.
SNAPSHOT = "gpt-4o-mini-2024-07-18"
# gpt-4o-mini-2024-07-18 in genai-prices: $0.15 per million input tokens, $0.075 cached, $0.60
# output; the fake's usage is 1200 input (1000 of them cached) and 300 output.
EXPECTED_COST = (200 * Decimal("0.15") + 1000 * Decimal("0.075") + 300 * Decimal("0.60")) / 10**6


@pytest.fixture(scope="module")
def large_image() -> str:
    """A data URL of 5 MiB of random bytes (about 6.7 MiB of base64): past the 4 MiB read."""
    return "data:image/png;base64," + base64.b64encode(os.urandom(5 * 1024 * 1024)).decode()


def _messages(image: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        }
    ]


def _create_raw(client, image: str, **options) -> bytes:
    """The response body as the SDK received it (a stream read to its end)."""
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=_messages(image),
        extra_headers={"x-fake-model": SNAPSHOT},
        **options,
    ) as response:
        assert response.status_code == 200
        return b"".join(response.iter_bytes())


def _direct_then_proxied(sdk, proxy, image: str, **options) -> tuple[bytes, bytes, bytes]:
    """(direct answer, proxied answer, the body the fake received through Costr)."""
    direct = _create_raw(
        sdk.openai(proxy.fake.url + "/v1", proxy.fake.keys["openai"]), image, **options
    )
    sent_direct = proxy.fake.last_request.body
    proxy.fake.clear()
    proxied = _create_raw(sdk.openai(proxy.url("openai"), proxy.token), image, **options)
    [forwarded] = proxy.fake.requests
    assert forwarded.body == sent_direct  # unread, unchanged
    return direct, proxied, forwarded.body


def _assert_metered(event, *, stream: bool) -> None:
    assert (event.endpoint, event.stream, event.status, event.outcome) == (
        "chat",
        stream,
        200,
        "ok",
    )
    # Nothing could be read from the request; the response named the model.
    assert (event.model, event.requested_model) == (SNAPSHOT, "")
    assert (event.input_tokens, event.cached_input_tokens, event.output_tokens) == FULL_USAGE[
        "openai"
    ]
    assert (event.price_source, event.cost_usd) == ("catalog", EXPECTED_COST)


def test_a_large_request_is_metered_from_its_response(sdk, proxy, settings, large_image):
    direct, proxied, forwarded = _direct_then_proxied(sdk, proxy, large_image)

    assert len(forwarded) > settings.COSTR_PROXY_INSPECT_BYTES
    assert proxied == direct
    [event] = proxy.events()
    _assert_metered(event, stream=False)


def test_a_large_streamed_request_that_asks_for_usage_is_metered(sdk, proxy, large_image):
    direct, proxied, _ = _direct_then_proxied(
        sdk, proxy, large_image, stream=True, stream_options={"include_usage": True}
    )

    assert proxied == direct
    assert b'"choices":[]' in proxied  # the client asked for it: it is the client's
    [event] = proxy.events()
    _assert_metered(event, stream=True)


def test_a_large_streamed_request_is_never_rewritten_and_its_usage_is_unknown(
    sdk, proxy, large_image
):
    """Costr would set ``include_usage`` on a small body; a large one goes unread, as sent."""
    direct, proxied, forwarded = _direct_then_proxied(sdk, proxy, large_image, stream=True)

    assert b'"stream_options"' not in forwarded
    assert proxied == direct
    [event] = proxy.events()
    assert (event.endpoint, event.stream, event.model, event.outcome) == (
        "chat",
        True,
        SNAPSHOT,
        "ok",
    )
    assert (event.input_tokens, event.output_tokens) == (None, None)
    assert (event.price_source, event.cost_usd) == ("usage_unknown", None)


def test_a_large_request_with_an_error_answer_is_an_upstream_error(sdk, proxy, large_image):
    import openai

    client = sdk.openai(proxy.url("openai"), proxy.token)

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=_messages(large_image),
            extra_headers={"x-fake-status": "400"},
        )

    [event] = proxy.events()
    assert (event.endpoint, event.status, event.outcome, event.stream) == (
        "chat",
        400,
        "upstream_error",
        False,
    )
