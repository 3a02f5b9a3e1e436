"""Exactness through the real proxy (issue #5): a few hundred requests to the fake provider with
random usage in each provider's own field names; every event's cost is what genai-prices says
for the usage that was sent, the rollups add up to the same, and there is one event per request.
The thousands-of-records version, straight into the writer, is apps/usage/tests/test_exactness.py.
"""

import json
import random
from decimal import Decimal

import pytest

from apps.proxy.tests.conftest import (  # noqa: F401 - fixtures, used by name
    committed_db,
    costr_server,
    http,
    proxy,
    sdk,
)
from apps.usage.models import OrganizationDailyRollup, PropertyDailyRollup
from apps.usage.tests.test_exactness import _rollup_totals, expected_cost

# Through the proxy: real requests to the fake provider, each reporting usage in the provider's
# own field names; the expected price is worked out from what was sent.

PROXY_MODELS = {
    "openai": ["gpt-4o-mini", "gpt-4.1", "o3-mini", "ft:private-model"],
    "anthropic": ["claude-sonnet-4-5", "claude-haiku-4-5"],
    "google": ["gemini-2.5-pro", "gemini-2.5-flash"],
}


def _proxied_request(rng, provider):
    """(path, body, raw usage header, normalised tokens) for one random request."""
    model = rng.choice(PROXY_MODELS[provider])
    output = rng.randint(1, 4_000)
    if provider == "openai":
        prompt = rng.randint(1, 250_000)
        cached = rng.choice([0, rng.randint(0, prompt)])
        reasoning = rng.randint(0, output)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
        return "/chat/completions", body, usage, model, (prompt, cached, 0, 0, output)
    if provider == "anthropic":
        plain = rng.randint(1, 250_000)
        reads = rng.choice([0, rng.randint(1, 20_000)])
        writes_5m, writes_1h = rng.choice([0, rng.randint(1, 9_000)]), rng.choice([0, 700])
        usage = {
            "input_tokens": plain,
            "cache_read_input_tokens": reads,
            "cache_creation_input_tokens": writes_5m + writes_1h,
            "cache_creation": {
                "ephemeral_5m_input_tokens": writes_5m,
                "ephemeral_1h_input_tokens": writes_1h,
            },
            "output_tokens": output,
        }
        body = {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        writes = writes_5m + writes_1h
        tokens = (plain + reads + writes, reads, writes, writes_1h, output)
        return "/v1/messages", body, usage, model, tokens
    prompt = rng.randint(1, 300_000)
    cached = rng.choice([0, rng.randint(0, prompt)])
    thoughts = rng.choice([0, rng.randint(1, 2_000)])
    usage = {
        "promptTokenCount": prompt,
        "cachedContentTokenCount": cached,
        "candidatesTokenCount": output,
        "thoughtsTokenCount": thoughts,
        "totalTokenCount": prompt + output + thoughts,
    }
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    path = f"/v1beta/models/{model}:generateContent"
    return path, body, usage, model, (prompt, cached, 0, 0, output + thoughts)


@pytest.mark.django_db(transaction=True)
def test_hundreds_of_proxied_requests_sum_exactly(http, proxy):  # noqa: F811
    rng = random.Random(5)
    auth = {
        "openai": lambda: {"authorization": f"Bearer {proxy.token}"},
        "anthropic": lambda: {"x-api-key": proxy.token, "anthropic-version": "2023-06-01"},
        "google": lambda: {"x-goog-api-key": proxy.token},
    }
    sent = {}
    for _ in range(300):
        provider = rng.choice(list(PROXY_MODELS))
        path, body, usage, model, tokens = _proxied_request(rng, provider)
        headers = {**auth[provider](), "x-fake-usage": json.dumps(usage)}
        if rng.random() < 0.5:
            headers["x-costr-customer"] = rng.choice(["acme", "globex", "initech"])
        feature = rng.choice(["chat", "search", None])
        if feature:
            headers["x-costr-property-feature"] = feature
        response = http.post(proxy.url(provider) + path, headers=headers, json=body)
        assert response.status_code == 200, response.text
        sent[response.headers["x-costr-request-id"]] = (provider, model, tokens, feature)

    events = {e.request_id: e for e in proxy.events(expected=len(sent))}
    assert events.keys() == sent.keys()
    expected = {
        request_id: expected_cost(provider, model, tokens, events[request_id].timestamp, "")
        for request_id, (provider, model, tokens, _) in sent.items()
    }
    assert {request_id: e.cost_usd for request_id, e in events.items()} == expected
    priced = [cost for cost in expected.values() if cost is not None]
    assert 0 < len(priced) < len(sent)
    for rollup in (None, OrganizationDailyRollup):
        requests, rollup_cost, unpriced = _rollup_totals(
            [proxy.organization], *([rollup] if rollup else [])
        )
        assert rollup_cost == sum(priced, Decimal(0))
        assert requests == len(sent)
        assert unpriced == len(sent) - len(priced)
    for feature in ("chat", "search"):
        costs = [expected[r] for r, sending in sent.items() if sending[3] == feature]
        requests, rollup_cost, unpriced = _rollup_totals(
            [proxy.organization], PropertyDailyRollup, name="feature", value=feature
        )
        assert requests == len(costs) > 0
        assert rollup_cost == sum((c for c in costs if c is not None), Decimal(0))
        assert unpriced == costs.count(None)
