"""Cases a review of the budgets feature (issue #18) found broken, each held by a test: the API
and services on missing fields, NUL and surrogate strings and malformed ids; estimates for
requests billed beyond their body (several answers, earlier responses, images by URL); webhook
URLs on IPv6 forms of private IPv4 addresses; an alert e-mail for a customer id with a line
break. Real components throughout: the API through Django's test client with real tokens, the
estimate with the real price catalog. (A background response's retrieve under a budget is held
in apps/proxy/tests/test_budgets.py.)

Prices used (genai-prices' gpt-4o-mini, as apps/proxy/tests/test_background_responses.py checks
them): $0.15 per million input tokens, $0.60 per million output tokens.
"""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.budgets.estimate import estimate_cost
from apps.budgets.models import Budget, Webhook
from apps.budgets.tests.budget_data import bearer
from apps.usage.pricing import Overrides

INPUT_PER_TOKEN = Decimal("0.15") / 10**6
OUTPUT_PER_TOKEN = Decimal("0.60") / 10**6


def _post(client, url, body, headers):
    return client.post(url, data=json.dumps(body), content_type="application/json", **headers)


def _invalid(response):
    """A refusal in the API's error shape, never a 500."""
    assert response.status_code == 400, (response.status_code, response.content)
    assert response.json()["error"]["code"] == "invalid"


# --- 1. Budgets API: a required field left out is a 500 ----------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("missing", ["scope", "period", "limit_usd"])
def test_creating_a_budget_without_a_required_field_is_a_400_not_a_500(client, org, missing):
    body = {"scope": "organization", "period": "month", "limit_usd": "10"}
    del body[missing]
    response = _post(client, "/api/v1/budgets/", body, bearer(org, "manage"))
    _invalid(response)
    assert missing in response.json()["error"]["details"]
    assert not Budget.objects.for_org(org).exists()


# --- 2. Budgets API: strings PostgreSQL or UTF-8 cannot hold are 500s --------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "target",
    [
        {"scope": "customer", "customer": "acme\x00"},
        {"scope": "customer", "customer": "\ud800acme"},
        {"scope": "token", "token": "costr\x00"},
        {"scope": "property", "property_name": "feature", "property_value": "chat\x00"},
        {"scope": "property", "property_name": "feature", "property_value": "\udfffchat"},
    ],
    ids=["customer-nul", "customer-surrogate", "token-nul", "value-nul", "value-surrogate"],
)
def test_a_budget_target_with_a_nul_or_a_lone_surrogate_is_a_400_not_a_500(client, org, target):
    body = {**target, "period": "day", "limit_usd": "5"}
    _invalid(_post(client, "/api/v1/budgets/", body, bearer(org, "manage")))
    assert not Budget.objects.for_org(org).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/v1/budgets/bud_%00/"),
        ("patch", "/api/v1/budgets/bud_%00/"),
        ("delete", "/api/v1/budgets/bud_%00/"),
        ("get", "/api/v1/webhooks/wh_%00/"),
        ("delete", "/api/v1/webhooks/wh_%00/"),
    ],
)
def test_an_id_with_a_nul_in_the_path_is_a_404_not_a_500(client, org, method, url):
    extra = {"data": json.dumps({"limit_usd": "1"})} if method == "patch" else {}
    response = getattr(client, method)(
        url, content_type="application/json", **extra, **bearer(org, "read", "manage")
    )
    assert response.status_code == 404, (response.status_code, response.content)
    assert response.json()["error"]["code"] == "not_found"


# --- 3. The reserved "upper estimate" is not one ------------------------------------------------


def _estimate(body: dict, endpoint: str) -> Decimal:
    raw = json.dumps(body).encode()
    return estimate_cost(
        provider="openai",
        endpoint=endpoint,
        model=body["model"],
        body=raw,
        body_size=len(raw),
        overrides=Overrides(),
        now=datetime(2026, 12, 1, tzinfo=UTC),
    )


def test_the_estimate_covers_every_choice_a_chat_request_asks_for():
    """``n`` choices of up to ``max_tokens`` each are billed n times; the estimate reserves one."""
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 1000,
        "n": 8,
    }
    billable_output = 8 * 1000 * OUTPUT_PER_TOKEN  # $0.0048, before any input
    assert _estimate(body, "chat") >= billable_output


def test_the_estimate_covers_the_previous_response_a_responses_call_continues():
    """``previous_response_id`` makes the provider bill the whole earlier conversation as input,
    though the body holds a few bytes of it: here 50,000 tokens of earlier context."""
    body = {
        "model": "gpt-4o-mini",
        "previous_response_id": "resp_0123456789abcdef",
        "input": "And then?",
        "max_output_tokens": 100,
    }
    billable_input = 50_000 * INPUT_PER_TOKEN  # $0.0075
    assert _estimate(body, "responses") >= billable_input


def test_the_estimate_covers_an_image_sent_by_url():
    """An image named by URL is a few dozen bytes of body but is billed as image tokens: for
    gpt-4o-mini a high-detail 1024x1024 image is 2,833 + 4 x 5,667 = 25,501 input tokens
    (OpenAI's vision pricing: gpt-4o-mini bills 2,833 base and 5,667 per 512 px tile)."""
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://e.x/a.png", "detail": "high"},
                    }
                ],
            }
        ],
        "max_tokens": 10,
    }
    billable_input = 25_501 * INPUT_PER_TOKEN
    assert _estimate(body, "chat") >= billable_input


# --- 5. Webhook URLs: IPv6 forms that carry a private IPv4 address pass as public --------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::a00:5]",  # NAT64 (RFC 6052) of 10.0.0.5: a NAT64 gateway connects to it
        "[::ffff:0:a00:5]",  # SIIT IPv4-translated (RFC 2765) of 10.0.0.5
        "[2002:a00:5::1]",  # 6to4 (RFC 3056) of 10.0.0.5
        "[::a00:5]",  # IPv4-compatible (deprecated) 10.0.0.5
    ],
)
def test_a_webhook_on_an_ipv6_form_of_a_private_ipv4_address_is_refused(client, org, host):
    body = {"url": f"https://{host}/hook", "events": ["budget.exceeded"]}
    _invalid(_post(client, "/api/v1/webhooks/", body, bearer(org, "manage")))
    assert not Webhook.objects.for_org(org).exists()


# --- 6. An alert naming a customer whose id holds a line break is never e-mailed ----------------


@pytest.mark.django_db
def test_an_alert_for_a_customer_id_with_a_line_break_is_still_emailed(
    org, admin, django_capture_on_commit_callbacks
):
    """Customer ids reach Costr through the ingest API as any JSON string (line breaks
    included); the alert's e-mail subject names the customer, and Django refuses a header with
    a newline (BadHeaderError), so the e-mail channel fails on every attempt for 24 hours."""
    from django.core import mail

    from apps.budgets import alerts
    from apps.budgets.models import Channel, Delivery, DeliveryState
    from apps.budgets.services import budget_create
    from apps.usage.tests.factories import store_usage

    budget_create(
        organization=org,
        actor=None,
        scope="each_customer",
        period="month",
        limit_usd="0.1",
        alert_thresholds=[100],
    )
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    store_usage(  # gpt-4o-mini: 1,000,000 input tokens cost $0.15
        org,
        customer="acme\nwest",
        input_tokens=1_000_000,
        output_tokens=0,
        raw_usage={"prompt_tokens": 1_000_000, "completion_tokens": 0},
        timestamp=now.isoformat(),
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.thresholds_scan(now) == 1
    email = Delivery.objects.for_org(org).get(channel=Channel.EMAIL)
    assert (email.state, email.last_error) == (DeliveryState.DELIVERED, "")
    assert [m.to for m in mail.outbox] == [[admin.email]]
