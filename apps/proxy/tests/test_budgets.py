"""Budgets enforced by the proxy, through the real server (DESIGN.md "Budgets, limits and
alerts"): a request that would take a budget past its limit is refused 429 in the provider's
shape, before anything is forwarded; other customers and organizations go on; a refusal is
counted, not recorded; the reservation is settled with the request's actual cost.

The fake reports usage no larger than the request's own upper estimate (input tokens at most
the body's bytes, output at most ``max_tokens``), as a real provider does.
"""

import json
import time
from decimal import Decimal

# gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens.
USAGE = {"prompt_tokens": 40, "completion_tokens": 100, "total_tokens": 140}
ACTUAL = Decimal(40) * Decimal("0.15") / 10**6 + Decimal(100) * Decimal("0.60") / 10**6


def _chat(http, proxy, customer: str | None, *, token: str | None = None, base: str | None = None):
    headers = {
        "authorization": f"Bearer {token or proxy.token}",
        "x-fake-usage": json.dumps(USAGE),
    }
    if customer is not None:
        headers["x-costr-customer"] = customer
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello in one short sentence, please."}],
        "max_tokens": 100,
    }
    return http.post(f"{base or proxy.url('openai')}/chat/completions", headers=headers, json=body)


def _budget(organization, **fields):
    from apps.budgets.services import budget_create

    return budget_create(organization=organization, actor=None, **fields)


def test_a_customer_budget_refuses_past_its_limit_and_nothing_else(http, proxy, make_organization):
    from apps.usage.models import RefusalCount

    budget = _budget(
        proxy.organization, scope="customer", customer="acme", period="day", limit_usd="0.0005"
    )
    answers = []
    for _ in range(12):
        answers.append(_chat(http, proxy, "acme"))
        time.sleep(0.05)  # each one settled (settlements go out within milliseconds)
    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(admitted) + len(refused) == 12
    assert refused, "the budget never refused"
    # Once refused, always refused: each request is settled before the next, and spend only
    # grows within the period.
    first_refusal = next(i for i, a in enumerate(answers) if a.status_code == 429)
    assert all(a.status_code == 429 for a in answers[first_refusal:])
    assert len(admitted) * ACTUAL <= Decimal("0.0005")
    refusal = refused[0]
    assert refusal.headers["x-costr-error"] == "budget_exceeded"
    assert refusal.headers["x-costr-budget-id"] == budget.public_id
    assert 0 < int(refusal.headers["retry-after"]) <= 86_400
    assert refusal.json()["error"]["code"] == "budget_exceeded"  # OpenAI's error shape
    # Nothing refused reached the provider; every admitted request did.
    chats = [r for r in proxy.fake.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == len(admitted)

    # Another customer, a request without one, and another organization are untouched.
    assert _chat(http, proxy, "globex").status_code == 200
    assert _chat(http, proxy, None).status_code == 200
    other, created = make_organization()
    _budget(other, scope="customer", customer="acme", period="day", limit_usd="100")
    other_base = proxy.base.replace(proxy.organization.slug, other.slug) + "/openai/v1"
    assert _chat(http, proxy, "acme", token=created.plaintext, base=other_base).status_code == 200

    events = proxy.events(expected=len(admitted) + 2)
    assert len(events) == len(admitted) + 2
    counted = RefusalCount.objects.for_org(proxy.organization).filter(
        status=429, code="budget_exceeded"
    )
    assert sum(row.count for row in counted) == len(refused)


def test_a_realtime_session_counts_each_response_and_the_next_session_is_refused(proxy):
    import asyncio

    import openai
    import websockets
    from websockets.exceptions import InvalidStatus

    budget = _budget(
        proxy.organization, scope="customer", customer="acme-rt", period="month", limit_usd="0.01"
    )
    headers = {"X-Costr-Customer": "acme-rt"}

    async def session() -> int:
        client = openai.AsyncOpenAI(
            base_url=proxy.url("openai"), api_key=proxy.token, max_retries=0
        )
        done = 0
        async with client.realtime.connect(model="gpt-realtime", extra_headers=headers) as conn:
            await conn.recv()  # session.created
            for _ in range(2):
                await conn.response.create(response={"output_modalities": ["text"]})
                async for event in conn:
                    if event.type == "response.done":
                        done += 1
                        break
        await client.close()
        return done

    # Admitted with room left; its two responses (about $0.04 each) take the budget past $0.01.
    assert asyncio.run(session()) == 2
    events = proxy.events(expected=2)
    assert sum(event.cost_usd for event in events) > Decimal("0.01")

    async def refused():
        """The handshake's refusal, or None when the session was admitted."""
        url = proxy.url("openai").replace("http://", "ws://") + "/realtime?model=gpt-realtime"
        try:
            async with websockets.connect(
                url, additional_headers={"authorization": f"Bearer {proxy.token}", **headers}
            ):
                return None
        except InvalidStatus as refusal:
            return refusal.response

    # The responses are counted just after their events are handed over: allow a moment.
    for _ in range(50):
        response = asyncio.run(refused())
        if response is not None:
            break
        time.sleep(0.05)
    assert response is not None, "the session was admitted past its budget"
    assert response.status_code == 429
    assert response.headers["x-costr-error"] == "budget_exceeded"
    assert response.headers["x-costr-budget-id"] == budget.public_id


def test_a_new_budget_applies_at_once_and_a_deleted_one_stops_applying(http, proxy):
    from apps.budgets.services import budget_delete

    assert _chat(http, proxy, "acme").status_code == 200  # the token is now cached
    budget = _budget(proxy.organization, scope="organization", period="month", limit_usd="0.000001")
    refused = _chat(http, proxy, "acme")
    assert refused.status_code == 429
    assert refused.headers["x-costr-budget-id"] == budget.public_id
    budget_delete(budget=budget, actor=None)
    assert _chat(http, proxy, "acme").status_code == 200


def test_requests_that_bill_nothing_pass_a_spent_budget(http, proxy):
    _budget(proxy.organization, scope="organization", period="day", limit_usd="0.000001")
    assert _chat(http, proxy, "acme").status_code == 429
    models = http.get(
        f"{proxy.url('openai')}/models", headers={"authorization": f"Bearer {proxy.token}"}
    )
    assert models.status_code == 200


def test_retrieving_and_cancelling_a_background_response_pass_a_budget_with_room(sdk, proxy):
    """Reads and cancels reserve nothing: a retrieve has an empty body and names no model, and
    was once reserved as the largest body Costr takes, at the provider's highest prices
    (thousands of dollars), so the poll the SDK documents was refused under a $100 budget."""
    client = sdk.openai(proxy.url("openai"), proxy.token)
    created = client.responses.create(model="gpt-4o-mini", input="Write a report.", background=True)
    _budget(proxy.organization, scope="organization", period="month", limit_usd="100")
    retrieved = client.responses.with_raw_response.retrieve(created.id)
    assert retrieved.http_response.status_code == 200
    cancelled = client.responses.with_raw_response.cancel(created.id)
    assert cancelled.http_response.status_code != 429


def test_adapters_hand_the_budget_estimate_the_body_they_parsed():
    from apps.proxy.providers import get_adapter

    chat = {"model": "gpt-4o-mini", "messages": [], "max_tokens": 7}
    message = {"model": "claude-sonnet-4-5", "messages": [], "max_tokens": 7}
    create = {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 7, "background": True}
    for provider, path, body in (
        ("openai", "v1/chat/completions", chat),
        ("openai", "v1/responses", create),
        ("anthropic", "v1/messages", message),
    ):
        info = get_adapter(provider).inspect_request("POST", path, json.dumps(body).encode())
        assert info.document == body, provider
    assert (
        get_adapter("openai").inspect_request("POST", "v1/chat/completions", b"{bad").document
        is None
    )
