"""Usage and revenue for the dashboard tests, built through the real writers (usage through
``usage_events_write``, revenue through a Stripe sync against the fake Stripe).

Prices come from an override ($1 per million input tokens, $2 per million output tokens for
models named test-*), so every cost is worked out by hand: the default request (1,000 input and
100 output tokens) costs $0.0012, and 1,000,000 input tokens with no output cost $1.00.

The period the tests look at is October 2026 in UTC (a custom period), compared with the 31
days before it (August 31 to September 30).
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.urls import reverse

from apps.usage.models import PriceOverride
from apps.usage.tests.factories import store_usage

REQUEST_COST = Decimal("0.0012")
OCTOBER = {"period": "custom", "start": "2026-10-01", "end": "2026-10-31"}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def price(org):
    PriceOverride.objects.create(
        organization=org,
        model_pattern="test-*",
        valid_from=utc(2026, 1, 1),
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(2),
    )
    return org


def use(org, when: datetime, **overrides) -> dict:
    overrides.setdefault("model", "test-small")
    return store_usage(org, timestamp=when.isoformat(), **overrides)


def url(name: str, org, *args) -> str:
    return reverse(name, args=[org.slug, *args])


def connect_stripe(org, actor, fake_stripe, capture, charges):
    """Connect the fake Stripe and sync it. ``charges``: (costr external id, amount in minor
    units, currency, fee, created datetime); each external id gets one Stripe customer whose
    metadata maps it."""
    from apps.billing import services

    account = fake_stripe.account("acct_1ReportingTest001", name="Reporting Test")
    stripe_customers = {}
    for external_id, amount, currency, fee, created in charges:
        if external_id not in stripe_customers:
            stripe_customers[external_id] = account.customer(
                email=f"{len(stripe_customers)}@example.com",
                metadata={"costr_customer_id": external_id},
                currency=currency,
                created=int(utc(2026, 1, 1).timestamp()),
            )
        account.charge(
            stripe_customers[external_id],
            amount,
            currency,
            fee=fee,
            created=int(created.timestamp()),
        )
    with capture(execute=True):
        services.stripe_connect(
            organization=org, key=fake_stripe.restricted_key(account), actor=actor
        )


def text_of(html: str, element_id: str) -> str:
    """The text inside the element with ``element_id`` (up to the matching close tag), tags
    dropped and whitespace collapsed: what a reader sees in that card or table."""
    import re
    from html import unescape

    start = html.index(f'id="{element_id}"')
    start = html.rindex("<", 0, start)
    tag = re.match(r"<(\w+)", html[start:]).group(1)
    depth, position = 0, start
    pattern = re.compile(rf"<(/?){tag}\b[^>]*>")
    for match in pattern.finditer(html, start):
        depth += -1 if match.group(1) else 1
        if depth == 0:
            position = match.end()
            break
    fragment = re.sub(r"<[^>]+>", " ", html[start:position])
    return " ".join(unescape(fragment).split())


def chart_data(html: str, element_id: str) -> dict:
    """The JSON a chart is drawn from (``json_script``)."""
    import json
    import re
    from html import unescape

    match = re.search(
        rf'<script id="{element_id}" type="application/json">(.*?)</script>', html, re.S
    )
    return json.loads(unescape(match.group(1)))


def build_october(org):
    """Six requests in October 2026 (UTC), one in September (the previous period):

    acme    Oct 5  three default requests ($0.0012 each), one tagged feature=chat  $0.0036
    globex  Oct 6  1,000,000 input tokens on test-large                           $1.0000
    acme    Oct 7  an unknown model: unpriced, 1,000 in / 100 out
    globex  Oct 8  a 500 (upstream_error), default tokens                         $0.0012
    acme    Sep 15 one default request                                            $0.0012
    Latencies 10, 20, ..., 60 ms in October: p50 30 ms (3rd of 6), p99 60 ms (6th of 6).
    """
    price(org)
    use(org, utc(2026, 10, 5, 9), customer="acme", latency_ms=10, properties={"feature": "chat"})
    use(org, utc(2026, 10, 5, 10), customer="acme", latency_ms=20)
    use(org, utc(2026, 10, 5, 11), customer="acme", latency_ms=30)
    use(
        org,
        utc(2026, 10, 6, 12),
        customer="globex",
        model="test-large",
        input_tokens=1_000_000,
        output_tokens=0,
        raw_usage={"prompt_tokens": 1_000_000, "completion_tokens": 0},
        latency_ms=40,
    )
    use(org, utc(2026, 10, 7, 12), customer="acme", model="mystery-model", latency_ms=50)
    use(
        org,
        utc(2026, 10, 8, 12),
        customer="globex",
        status=500,
        outcome="upstream_error",
        latency_ms=60,
    )
    use(org, utc(2026, 9, 15, 12), customer="acme", latency_ms=5)
    return org


STRIPE_OCTOBER = [
    ("acme", 1000, "usd", 59, utc(2026, 10, 10)),  # net $9.41
    ("globex", 50, "usd", 0, utc(2026, 10, 10)),  # net $0.50, less than its $1.0012 of AI
    ("dave", 5000, "jpy", 180, utc(2026, 10, 10)),  # net ¥4820, never converted
]
