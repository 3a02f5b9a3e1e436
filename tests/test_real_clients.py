"""Clients nobody at Costr wrote, through Costr, against the fake provider (issue #16).

The official Node SDKs (openai, @anthropic-ai/sdk, @google/genai) and the Vercel AI SDK run from
``tests/clients/node`` (installed by ``make test`` from its lock file); LangChain's ``ChatOpenAI``
and LiteLLM's SDK from ``tests/clients/python_clients.py``. Each scenario is run once directly
against the fake and once through a real Costr, in a process of its own per runner, and must:

- give the client what the provider sent: the same response bytes (as the client's own fetch
  received them) where the client exposes them, the same parsed output and the same usage as
  the client reports it;
- give the provider what the client sent, the credential swapped and ``X-Costr-*`` removed;
- make exactly one usage event with the scenario's customer, endpoint, model and tokens, priced
  as genai-prices prices the usage the fake publishes (``extract_usage`` reads the provider's
  usage object as the catalogue understands it, ``calc_price`` prices it at the event's time).

The one documented difference: a streamed OpenAI chat request without
``stream_options.include_usage`` is sent upstream with it, and the client gets that stream
without its usage chunk (every chunk then carries ``"usage": null``). Such scenarios are marked
``injected`` and checked against exactly that.

The whole module runs each runner once for all its scenarios (Node starts in about a second,
LiteLLM imports in about ten); the database is read once, into memory, before the first test.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import genai_prices
import pytest

from apps.proxy.tests.conftest import (  # noqa: F401 - fixtures, used by name
    committed_db,
    costr_server,
    organization_with_token,
)
from tests.fakes import provider as fake_wire
from tests.outage import ROOT

NODE_DIR = ROOT / "tests" / "clients" / "node"
PYTHON_RUNNER = ROOT / "tests" / "clients" / "python_clients.py"
RUNNER_TIMEOUT = 120

# The data every test reads is committed by the module's fixture (the Costr server answers from
# its own threads) and read into memory before the first test; the tests themselves only need the
# test database to exist, and each rolls back nothing.
pytestmark = pytest.mark.django_db

OPENAI_CHAT = ("openai", "chat", "gpt-4o-mini")
OPENAI_RESPONSES = ("openai", "responses", "gpt-4.1")
OPENAI_EMBEDDINGS = ("openai", "embeddings", "text-embedding-3-small")
ANTHROPIC_MESSAGES = ("anthropic", "messages", "claude-haiku-4-5-20251001")
ANTHROPIC_COUNT = ("anthropic", "count_tokens", "claude-haiku-4-5-20251001")
GEMINI_GENERATE = ("google", "generate", "gemini-2.5-flash")


@dataclass(frozen=True)
class Scenario:
    name: str  # as the runner knows it; also the customer sent through Costr
    runner: str  # "node" | "python"
    call: tuple[str, str, str]  # provider, endpoint, model
    stream: bool
    injected: bool = False  # OpenAI chat streamed without include_usage: Costr asks for it

    @property
    def customer(self) -> str:
        return self.name


SCENARIOS = (
    # The official Node SDKs.
    Scenario("openai.chat", "node", OPENAI_CHAT, False),
    Scenario("openai.chat_stream", "node", OPENAI_CHAT, True, injected=True),
    Scenario("openai.chat_stream_usage", "node", OPENAI_CHAT, True),
    Scenario("openai.responses", "node", OPENAI_RESPONSES, False),
    Scenario("openai.responses_stream", "node", OPENAI_RESPONSES, True),
    Scenario("openai.embeddings", "node", OPENAI_EMBEDDINGS, False),
    Scenario("anthropic.messages", "node", ANTHROPIC_MESSAGES, False),
    Scenario("anthropic.messages_stream", "node", ANTHROPIC_MESSAGES, True),
    Scenario("anthropic.count_tokens", "node", ANTHROPIC_COUNT, False),
    Scenario("google.generate", "node", GEMINI_GENERATE, False),
    Scenario("google.generate_stream", "node", GEMINI_GENERATE, True),
    # The Vercel AI SDK: @ai-sdk/openai's default model is the Responses API, .chat() is chat.
    Scenario("vercel.openai.generate", "node", OPENAI_RESPONSES, False),
    Scenario("vercel.openai.stream", "node", OPENAI_RESPONSES, True),
    Scenario("vercel.openai_chat.generate", "node", OPENAI_CHAT, False),
    Scenario("vercel.openai_chat.stream", "node", OPENAI_CHAT, True),
    Scenario("vercel.anthropic.generate", "node", ANTHROPIC_MESSAGES, False),
    Scenario("vercel.anthropic.stream", "node", ANTHROPIC_MESSAGES, True),
    Scenario("vercel.google.generate", "node", GEMINI_GENERATE, False),
    Scenario("vercel.google.stream", "node", GEMINI_GENERATE, True),
    # LangChain and LiteLLM.
    Scenario("langchain.invoke", "python", OPENAI_CHAT, False),
    Scenario("langchain.stream", "python", OPENAI_CHAT, True, injected=True),
    Scenario("langchain.stream_usage", "python", OPENAI_CHAT, True),
    Scenario("litellm.openai", "python", OPENAI_CHAT, False),
    Scenario("litellm.openai_stream", "python", OPENAI_CHAT, True),
    Scenario("litellm.anthropic", "python", ANTHROPIC_MESSAGES, False),
    Scenario("litellm.anthropic_stream", "python", ANTHROPIC_MESSAGES, True),
    Scenario("litellm.gemini", "python", GEMINI_GENERATE, False),
    Scenario("litellm.gemini_stream", "python", GEMINI_GENERATE, True),
)
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
IDS = [scenario.name for scenario in SCENARIOS]

# The usage object the fake publishes for each endpoint, in the provider's own shape, and the
# genai-prices API flavor that reads it. ``None``: the provider bills nothing for the endpoint.
PUBLISHED_USAGE: dict[tuple[str, str], tuple[dict[str, Any], str] | None] = {
    ("openai", "chat"): ({"usage": fake_wire.OPENAI_CHAT_USAGE}, "chat"),
    ("openai", "responses"): ({"usage": fake_wire.OPENAI_RESPONSES_USAGE}, "responses"),
    ("openai", "embeddings"): ({"usage": fake_wire.OPENAI_EMBEDDINGS_USAGE}, "embeddings"),
    ("anthropic", "messages"): ({"usage": fake_wire.ANTHROPIC_USAGE}, "default"),
    ("anthropic", "count_tokens"): None,
    ("google", "generate"): ({"usageMetadata": fake_wire.GEMINI_USAGE}, "default"),
}

# Request headers that differ between two identical calls (retry bookkeeping, idempotency keys,
# timeouts counted down) or between two connections (host, hop-by-hop), and the length of a
# body Costr rewrote.
VOLATILE_REQUEST_HEADERS = {
    "host",
    "connection",
    "keep-alive",
    "content-length",
    "x-stainless-retry-count",
    "x-stainless-read-timeout",
    "x-stainless-timeout",
    "idempotency-key",
}


def _targets(openai_base: str, anthropic_base: str, google_base: str, keys: dict) -> dict:
    return {
        "openai": {"baseURL": openai_base, "apiKey": keys["openai"]},
        "anthropic": {"baseURL": anthropic_base, "apiKey": keys["anthropic"]},
        "google": {"baseURL": google_base, "apiKey": keys["google"]},
    }


def _run(command: list[str], runs: list[dict], *, cwd, env=None) -> dict:
    completed = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        input=json.dumps({"runs": runs}).encode(),
        capture_output=True,
        timeout=RUNNER_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-4000:]
    return json.loads(completed.stdout)


def _node_command() -> list[str]:
    """Node, with the packages of the lock installed: a machine without them fails here, loudly
    (``make test`` installs them; a skip would hide that nothing ran)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the real-client suite needs Node 20 or later and npm")
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        pytest.fail(f"the Node clients are not installed: `make test` (or `npm ci` in {NODE_DIR})")
    return [node, "run.mjs"]


@dataclass
class Runs:
    """Everything the module's tests look at, read before the first of them."""

    direct: dict[str, dict]  # scenario name -> what the client reported, directly
    proxied: dict[str, dict]  # ... and through Costr
    sent_direct: dict[str, list]  # scenario name -> the requests the fake received, directly
    sent_proxied: dict[str, list]
    events: list[dict]  # the organization's usage events, with the customer's id
    outside: list[str]  # addresses outside 127.0.0.1 the Python clients tried to reach
    keys: dict[str, str]


def _split_requests(requests, reports: dict[str, dict], scenarios) -> dict[str, list]:
    """The fake's requests in order, handed to the scenarios that made them: as many as each
    one's report lists (Node), else one each (the Python clients, checked by count)."""
    requests = list(requests)
    split = {}
    for scenario in scenarios:
        exchanges = reports.get(scenario.name, {}).get("exchanges")
        count = len(exchanges) if exchanges is not None else 1
        split[scenario.name], requests = requests[:count], requests[count:]
    assert requests == [], f"{len(requests)} requests more than the scenarios made"
    return split


def _stored_events(organization, expected: int) -> list[dict]:
    from apps.usage.metering import sink
    from apps.usage.models import UsageEvent

    deadline = time.monotonic() + 10
    while True:
        assert sink.flush(timeout=10), "the usage writer did not catch up"
        events = list(
            UsageEvent.objects.for_org(organization)
            .order_by("timestamp", "id")
            .values(
                "request_id",
                "timestamp",
                "provider",
                "endpoint",
                "model",
                "requested_model",
                "customer__external_id",
                "status",
                "stream",
                "outcome",
                "input_tokens",
                "cached_input_tokens",
                "cache_write_tokens",
                "cache_write_1h_tokens",
                "output_tokens",
                "reasoning_tokens",
                "cost_usd",
                "price_source",
            )
        )
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runs(costr_server, fake_provider, committed_db) -> Runs:  # noqa: F811
    organization, created = organization_with_token(fake_provider)
    fake = fake_provider
    costr = f"{costr_server.url}/p/{organization.slug}"
    direct = _targets(f"{fake.url}/v1", fake.url, fake.url, fake.keys)
    through = {provider: created.plaintext for provider in ("openai", "anthropic", "google")}
    proxied = _targets(f"{costr}/openai/v1", f"{costr}/anthropic", f"{costr}/google", through)

    reports: dict[str, dict] = {"direct": {}, "costr": {}}
    sent: dict[str, dict] = {"direct": {}, "costr": {}}
    outside: list[str] = []
    for runner in ("node", "python"):
        scenarios = [s for s in SCENARIOS if s.runner == runner]
        listed = [{"name": s.name, "customer": s.customer} for s in scenarios]
        plan = [
            {"label": "direct", "targets": direct, "scenarios": listed},
            {"label": "costr", "targets": proxied, "scenarios": listed},
        ]
        fake.clear()
        if runner == "node":
            report = _run(_node_command(), plan, cwd=NODE_DIR)
        else:
            # LiteLLM fetches a price map from the internet at import unless told not to.
            env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
            report = _run([sys.executable, str(PYTHON_RUNNER)], plan, cwd=ROOT, env=env)
            outside = report.pop("_outside")
        requests = fake.requests
        made_direct = sum(len(report["direct"][s.name].get("exchanges", [None])) for s in scenarios)
        for label, part in (("direct", requests[:made_direct]), ("costr", requests[made_direct:])):
            reports[label].update(report[label])
            sent[label].update(_split_requests(part, report[label], scenarios))

    events = _stored_events(organization, expected=len(SCENARIOS))
    return Runs(
        direct=reports["direct"],
        proxied=reports["costr"],
        sent_direct=sent["direct"],
        sent_proxied=sent["costr"],
        events=events,
        outside=outside,
        keys={"token": created.plaintext, **fake.keys},
    )


def _ok(report: dict) -> dict:
    assert "error" not in report, report["error"]
    return report


def _body(exchange: dict) -> bytes:
    return base64.b64decode(exchange["body"])


def _without_usage_chunk(sse: bytes) -> bytes:
    """An OpenAI chat stream without its final usage chunk (the one with ``"choices": []``),
    as Costr hands it to a client that did not ask for usage."""
    events = sse.split(b"\n\n")
    kept = [
        event
        for event in events
        if not (event.startswith(b"data: {") and json.loads(event[6:])["choices"] == [])
    ]
    assert len(kept) == len(events) - 1, "the stream had no usage chunk"
    return b"\n\n".join(kept)


def _with_null_usage(chunks: list[dict]) -> list[dict]:
    return [{**chunk, "usage": None} for chunk in chunks]


# ---------------------------------------------------------------------------------------------
# What the client gets


@pytest.mark.parametrize("name", IDS)
def test_the_client_gets_what_the_provider_sent(runs, name):
    scenario = BY_NAME[name]
    direct, proxied = _ok(runs.direct[name]), _ok(runs.proxied[name])

    if scenario.runner == "node":
        assert len(proxied["exchanges"]) == len(direct["exchanges"]) == 1
        [got], [sent] = proxied["exchanges"], direct["exchanges"]
        assert (got["method"], got["status"], got["contentType"]) == (
            sent["method"],
            sent["status"],
            sent["contentType"],
        )
        assert got["status"] == 200
        # The same path under each base URL.
        assert got["url"].split("/p/", 1)[1].split("/", 2)[2] == sent["url"].split("/", 3)[3]
        if scenario.injected:
            # The bytes of the stream the provider sent for the request Costr forwarded (with
            # include_usage), minus the usage chunk; the client's chunks are its own but for
            # the `"usage": null` OpenAI then puts on each.
            asked = _ok(runs.direct["openai.chat_stream_usage"])
            assert _body(got) == _without_usage_chunk(_body(asked["exchanges"][0]))
            assert proxied["result"] == _with_null_usage(direct["result"])
        else:
            assert _body(got) == _body(sent)
            assert proxied["result"] == direct["result"]
    else:
        assert proxied["result"] == direct["result"]
    assert proxied["usage"] == direct["usage"]


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS if s.runner == "node"])
def test_the_sdk_reads_the_usage_the_provider_published(runs, name):
    """The Node SDKs' own reading of the usage, through Costr, is the fake's published object
    (the Vercel SDK reports its own normalised fields, checked by hand)."""
    scenario = BY_NAME[name]
    usage = _ok(runs.proxied[name])["usage"]
    provider, endpoint, _ = scenario.call
    if name == "anthropic.count_tokens":
        assert usage == fake_wire.ANTHROPIC_COUNT_TOKENS
    elif name == "openai.chat_stream":
        assert usage is None  # the client did not ask for usage, and Costr keeps it so
    elif name.startswith("vercel."):
        assert (usage["inputTokens"], usage["outputTokens"]) == {
            "openai": (1200, 300),
            "anthropic": (50 + 200 + 1000, 300),
            "google": (1200, 180 + 120),
        }[provider]
    else:
        published = PUBLISHED_USAGE[(provider, endpoint)][0]
        expected = published.get("usage") or published["usageMetadata"]
        assert usage == expected


# ---------------------------------------------------------------------------------------------
# What the provider gets


def _comparable(request, keys: dict[str, str]) -> tuple:
    headers = sorted(
        (k.decode(), v.decode("latin-1"))
        for k, v in request.headers
        if k.decode() not in VOLATILE_REQUEST_HEADERS and not k.startswith(b"x-costr-")
    )
    return request.method, request.raw_path, request.query_string, headers


@pytest.mark.parametrize("name", IDS)
def test_the_provider_gets_what_the_client_sent(runs, name):
    scenario = BY_NAME[name]
    [got], [sent] = runs.sent_proxied[name], runs.sent_direct[name]

    assert _comparable(got, runs.keys) == _comparable(sent, runs.keys)
    if scenario.injected:
        asked = json.loads(sent.body)
        assert "include_usage" not in json.dumps(asked.get("stream_options"))
        stream_options = {**(asked.get("stream_options") or {}), "include_usage": True}
        assert json.loads(got.body) == {**asked, "stream_options": stream_options}
    else:
        assert got.body == sent.body
    # The provider key went upstream, the token and the attribution header did not.
    token = runs.keys["token"].encode()
    assert all(token not in value for _, value in got.headers)
    assert token not in got.body and token not in got.query_string
    assert got.header("x-costr-customer") is None
    assert sent.header("x-costr-customer") == scenario.customer  # each client sent it


# ---------------------------------------------------------------------------------------------
# What Costr records


def _events_of(runs: Runs, customer: str) -> list[dict]:
    return [event for event in runs.events if event["customer__external_id"] == customer]


def test_every_call_through_costr_makes_exactly_one_event(runs):
    assert sorted(event["customer__external_id"] for event in runs.events) == sorted(
        scenario.customer for scenario in SCENARIOS
    )


@pytest.mark.parametrize("name", IDS)
def test_the_event_is_the_call_priced_by_genai_prices(runs, name):
    scenario = BY_NAME[name]
    provider, endpoint, model = scenario.call
    [event] = _events_of(runs, scenario.customer)

    assert (event["provider"], event["endpoint"], event["stream"]) == (
        provider,
        endpoint,
        scenario.stream,
    )
    assert (event["model"], event["requested_model"]) == (model, model)
    assert (event["status"], event["outcome"]) == (200, "ok")

    published = PUBLISHED_USAGE[(provider, endpoint)]
    tokens = (
        event["input_tokens"],
        event["cached_input_tokens"],
        event["cache_write_tokens"],
        event["cache_write_1h_tokens"],
        event["output_tokens"],
        event["reasoning_tokens"],
    )
    if published is None:
        # count_tokens: billed nothing, read for nothing.
        assert tokens == (None,) * 6
        return
    body, flavor = published
    usage = genai_prices.extract_usage(body, provider_id=provider, api_flavor=flavor).usage
    # A count the provider did not report is null on the event and 0 in genai-prices.
    assert tuple(count or 0 for count in tokens) == (
        usage.input_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.cache_write_1h_tokens,
        usage.output_tokens,
        usage.output_reasoning_tokens,
    )
    price = genai_prices.calc_price(
        usage, model, provider_id=provider, genai_request_timestamp=event["timestamp"]
    )
    assert event["price_source"] == "catalog"
    assert event["cost_usd"] == price.total_price
    assert event["cost_usd"] > Decimal(0)


def test_the_python_clients_reach_nothing_outside_this_machine(runs):
    """LiteLLM fetches its price map from GitHub at import unless
    ``LITELLM_LOCAL_MODEL_COST_MAP`` is set; nothing else may reach out either."""
    assert runs.outside == []
