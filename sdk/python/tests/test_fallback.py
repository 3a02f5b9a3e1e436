"""Costr stopped and started again around real traffic from the official clients made by
costr_sdk, against the fake provider: through Costr while it is up, straight to the provider
with the fallback key while it is down, and every call one usage event with the right customer,
tokens and cost, read back from the database.

Costs are worked out by hand from genai-prices' rates (USD per million tokens):
gpt-4o-mini input 0.15, cache read 0.075, output 0.60; claude-haiku-4-5 input 1, cache read 0.10,
cache write 1.25 (5 minutes) and 2 (1 hour), output 5; gemini-2.5-flash input 0.30, cache read
0.03, output 2.50. The fake's default usage:
- OpenAI: 1200 input of which 1000 cached, 300 output of which 120 reasoning:
  200 x 0.15 + 1000 x 0.075 + 300 x 0.60 = 285 per million = $0.000285.
- Anthropic: 50 uncached, 1000 cache reads, 150 + 50 cache writes (5 min + 1 h), 300 output:
  50 x 1 + 1000 x 0.10 + 150 x 1.25 + 50 x 2 + 300 x 5 = 1937.5 per million = $0.0019375.
- Gemini: 1200 prompt of which 1000 cached, 180 candidates + 120 thoughts:
  200 x 0.30 + 1000 x 0.03 + 300 x 2.50 = 840 per million = $0.00084.
"""

import asyncio
import json
import subprocess
import sys
from decimal import Decimal

import anthropic
import costr_sdk
import httpx2
import openai
import pytest

from apps.usage.models import UsageEvent
from tests.fakes.provider import fake_text
from tests.outage import ROOT, wait_until

pytest_plugins = ("sdk_harness",)  # the `setup` fixture

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI_COST = Decimal("0.000285")
ANTHROPIC_COST = Decimal("0.0019375")
GEMINI_COST = Decimal("0.00084")
OPENAI_TOKENS = (1200, 1000, 300, 120)
ANTHROPIC_TOKENS = (1250, 1000, 300, None)
GEMINI_TOKENS = (1200, 1000, 300, 120)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
CLAUDE = "claude-haiku-4-5-20251001"
MESSAGE = {"model": CLAUDE, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}


def _events(organization, expected: int) -> list:
    def stored():
        events = list(UsageEvent.objects.for_org(organization).order_by("timestamp", "id"))
        return events if len(events) >= expected else None

    wait_until(stored, timeout=30, message=f"fewer than {expected} events stored")
    return list(UsageEvent.objects.for_org(organization).order_by("timestamp", "id"))


def _summary(event) -> tuple:
    return (
        event.provider,
        event.customer.external_id if event.customer_id else None,
        event.properties,
        event.status,
        (
            event.input_tokens,
            event.cached_input_tokens,
            event.output_tokens,
            event.reasoning_tokens,
        ),
        event.cost_usd,
    )


def _ingested(event) -> bool:
    """A call the SDK made directly and reported: the ingest API's request id, the SDK's source;
    the proxy's events are ``proxy``."""
    ingested = event.request_id.startswith("ing_")
    assert event.source == ("sdk_fallback" if ingested else "proxy"), event.request_id
    return ingested


def _openai_calls(client) -> None:
    client.chat.completions.create(**CHAT)
    with client.chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}
    ) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == fake_text()


def _anthropic_calls(client) -> None:
    message = client.messages.create(**MESSAGE)
    assert message.usage.cache_read_input_tokens == 1000
    with client.messages.stream(**MESSAGE) as stream:
        assert stream.get_final_message().usage.output_tokens == 300


def _google_calls(client) -> None:
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert answer.usage_metadata.prompt_token_count == 1200
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi"))
    assert chunks[-1].usage_metadata.thoughts_token_count == 120


async def _async_calls() -> None:
    async with costr_sdk.customer("async-customer", plan="pro"):
        oa = costr_sdk.AsyncOpenAI(max_retries=0)
        await oa.chat.completions.create(**CHAT)
        an = costr_sdk.AsyncAnthropic(max_retries=0)
        await an.messages.create(**MESSAGE)
        genai = costr_sdk.genai_client()
        await genai.aio.models.generate_content(model="gemini-2.5-flash", contents="Hi")


def _all_calls() -> None:
    with costr_sdk.customer("acme-corp", feature="search"):
        _openai_calls(costr_sdk.OpenAI(max_retries=0))
        _anthropic_calls(costr_sdk.Anthropic(max_retries=0))
        _google_calls(costr_sdk.genai_client())
    asyncio.run(_async_calls())


EXPECTED = sorted(
    [("openai", "acme-corp", {"feature": "search"}, 200, OPENAI_TOKENS, OPENAI_COST)] * 2
    + [("anthropic", "acme-corp", {"feature": "search"}, 200, ANTHROPIC_TOKENS, ANTHROPIC_COST)] * 2
    + [("google", "acme-corp", {"feature": "search"}, 200, GEMINI_TOKENS, GEMINI_COST)] * 2
    + [
        ("openai", "async-customer", {"plan": "pro"}, 200, OPENAI_TOKENS, OPENAI_COST),
        ("anthropic", "async-customer", {"plan": "pro"}, 200, ANTHROPIC_TOKENS, ANTHROPIC_COST),
        ("google", "async-customer", {"plan": "pro"}, 200, GEMINI_TOKENS, GEMINI_COST),
    ],
    key=repr,
)


def test_calls_go_through_costr_while_it_is_up_and_straight_to_the_provider_while_it_is_down(
    setup,
):
    # Costr up: every call through the proxy, none direct.
    _all_calls()
    assert setup.direct.requests == []
    proxied = _events(setup.organization, len(EXPECTED))
    assert sorted(map(_summary, proxied), key=repr) == EXPECTED
    assert not any(_ingested(e) for e in proxied)

    # Costr down: the same calls succeed, straight to the fake with the fallback keys.
    setup.costr.stop()
    setup.fake.clear()
    _all_calls()
    direct = setup.direct.requests
    assert len(direct) == len(EXPECTED)
    assert setup.fake.requests == []
    for request in direct:
        headers = {name.decode().lower() for name, _ in request.headers}
        assert not any(name.startswith("x-costr-") for name in headers)
        credentials = [
            request.header(name) for name in ("authorization", "x-api-key", "x-goog-api-key")
        ]
        assert all("costr_" not in (value or "") for value in credentials)
    assert {r.header("x-api-key") for r in direct if "/messages" in r.path} == {
        setup.fake.keys["anthropic"]
    }
    assert {r.header("x-goog-api-key") for r in direct if "/models/" in r.path} == {
        setup.fake.keys["google"]
    }
    assert {r.header("authorization") for r in direct if "/chat/" in r.path} == {
        f"Bearer {setup.fake.keys['openai']}"
    }

    # Costr back: the direct calls' usage arrives by the ingest API, once each.
    setup.costr.start()
    assert costr_sdk.flush(timeout=30)
    events = _events(setup.organization, 2 * len(EXPECTED))
    backfilled = [e for e in events if _ingested(e)]
    assert sorted(map(_summary, backfilled), key=repr) == EXPECTED
    assert len(events) == 2 * len(EXPECTED)
    # A second flush sends nothing again.
    assert costr_sdk.flush(timeout=5)
    assert UsageEvent.objects.for_org(setup.organization).count() == 2 * len(EXPECTED)


class ConnectCounter(httpx2.HTTPTransport):
    """The real transport to Costr, counting the TCP connects it starts (httpcore's trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.connects = 0

    def handle_request(self, request):
        def trace(event, info):
            if event == "connection.connect_tcp.started":
                self.connects += 1

        request.extensions = {**request.extensions, "trace": trace}
        return super().handle_request(request)


def test_an_outage_costs_one_connect_attempt_not_one_per_call(setup):
    counter = ConnectCounter()
    transport = costr_sdk.FallbackTransport(
        "openai", costr_sdk.runtime(), http=httpx2, costr=counter
    )
    client = costr_sdk.OpenAI(max_retries=0, http_client=httpx2.Client(transport=transport))
    client.chat.completions.create(**CHAT)
    assert counter.connects == 1  # Costr up: one connection, kept alive

    setup.costr.stop()
    for _ in range(10):
        client.chat.completions.create(**CHAT)
    # The first call met the refused connect; the nine after it went direct at once.
    assert counter.connects == 2
    assert len(setup.direct.requests) == 10

    setup.costr.start()
    assert costr_sdk.flush(timeout=30)
    events = _events(setup.organization, 11)
    assert [_ingested(e) for e in events] == [False] + [True] * 10
    # Delivery proved Costr is back: the breaker is closed, calls go through Costr again.
    client.chat.completions.create(**CHAT)
    assert counter.connects == 3
    assert len(setup.direct.requests) == 10


def test_a_refusal_by_costr_is_never_a_fallback(setup):
    client = costr_sdk.OpenAI(api_key="costr_" + "x" * 40, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(**CHAT)
    assert refused.value.response.headers.get("x-costr-error")
    assert setup.fake.requests == setup.direct.requests == []
    assert not costr_sdk.runtime().breaker.open
    assert costr_sdk.flush(timeout=5)
    assert UsageEvent.objects.for_org(setup.organization).count() == 0


def test_a_provider_error_is_never_a_fallback(setup):
    client = costr_sdk.Anthropic(max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(**MESSAGE, extra_headers={"x-fake-status": "429"})
    # One request reached the provider, through Costr; none went direct.
    assert [r.path for r in setup.fake.requests] == ["/v1/messages"]
    assert setup.direct.requests == []
    assert not costr_sdk.runtime().breaker.open
    (event,) = _events(setup.organization, 1)
    assert (event.status, event.outcome, _ingested(event)) == (429, "upstream_error", False)


def test_without_a_fallback_key_the_call_fails_as_against_an_unreachable_host(setup):
    costr_sdk.configure(**setup.sdk_settings(fallback_keys={}))
    setup.costr.stop()
    client = costr_sdk.OpenAI(max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(**CHAT)
    assert setup.fake.requests == setup.direct.requests == []


CHILD = """
import costr_sdk
client = costr_sdk.OpenAI(max_retries=0)
for index in range(3):
    with costr_sdk.customer(f"child-{index}"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
print("done")
"""


def test_a_process_that_exits_during_the_outage_is_delivered_by_the_next(setup):
    setup.costr.stop()
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        env=setup.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "done"
    assert len(setup.direct.requests) == 3
    spooled = [
        json.loads(line)
        for path in setup.spool_dir.iterdir()
        for line in path.read_text().splitlines()
    ]
    assert sorted(r["customer"] for r in spooled) == ["child-0", "child-1", "child-2"]

    setup.costr.start()
    # The next process: this one, configured on the same spool.
    costr_sdk.configure(**setup.sdk_settings())
    assert costr_sdk.flush(timeout=30)
    events = _events(setup.organization, 3)
    assert sorted(map(_summary, events), key=repr) == [
        ("openai", f"child-{i}", {}, 200, OPENAI_TOKENS, OPENAI_COST) for i in range(3)
    ]
    assert all(_ingested(e) for e in events)
    assert list(setup.spool_dir.iterdir()) == []


def test_nothing_sent_holds_a_credential(setup):
    openai_key = "sk-proj-" + "A1b2C3d4" * 6
    google_key = "AIza" + "SyD-abcdefghijklmnopqrstuvwxyz0123"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"

    def before_send(record):
        record["properties"] = {**record.get("properties", {}), "debug": f"key={google_key}"}
        return record

    costr_sdk.configure(**setup.sdk_settings(before_send=before_send))
    setup.costr.stop()
    with costr_sdk.customer(f"Bearer {jwt}", note=f"leaked {openai_key} here"):
        costr_sdk.OpenAI(max_retries=0).chat.completions.create(**CHAT)
    setup.costr.start()
    assert costr_sdk.flush(timeout=30)
    (event,) = _events(setup.organization, 1)
    assert event.properties == {"note": "leaked [REDACTED] here", "debug": "key=[REDACTED]"}
    assert event.customer.external_id == "[REDACTED]"
    stored = json.dumps(
        [event.properties, event.customer.external_id, event.raw_usage], default=str
    )
    for secret in (openai_key, google_key, jwt, setup.token):
        assert secret not in stored


def test_before_send_can_drop_a_record(setup):
    costr_sdk.configure(**setup.sdk_settings(before_send=lambda record: None))
    setup.costr.stop()
    costr_sdk.OpenAI(max_retries=0).chat.completions.create(**CHAT)
    setup.costr.start()
    assert costr_sdk.flush(timeout=30)
    assert len(setup.direct.requests) == 1
    assert UsageEvent.objects.for_org(setup.organization).count() == 0
