"""Dashboards tell unpriced requests from usage-unknown ones, and count requests the provider
bills nothing for (``no_usage``) as neither (DESIGN.md, "Usage event"); the events explorer
filters by price source and its CSV carries the usage details.

Prices: the override of ``dashboard_data.price`` ($1 per million input tokens, $2 per million
output tokens for test-* models), so a request of 1,000 in and 100 out costs $0.0012.
"""

import csv
import io
import json

import pytest

from apps.reporting.tests.dashboard_data import price, text_of, url, use, utc
from apps.usage.tests.factories import NO_TOKENS

pytestmark = pytest.mark.django_db

NOVEMBER = {"period": "custom", "start": "2026-11-01", "end": "2026-11-30"}


@pytest.fixture
def mixed(org):
    """On Nov 2: one priced request, one of a model without a price, two successes whose usage
    could not be read, three rate-limited requests without usage, and a whisper-1 transcription
    priced by its seconds (60 s at $0.36 an hour: $0.006)."""
    price(org)
    when = utc(2026, 11, 2, 12)
    use(org, when, request_id="priced")
    use(org, when, request_id="mystery", model="mystery-model")
    for n in range(2):
        use(org, when, request_id=f"unread-{n}", **NO_TOKENS)
    for n in range(3):
        use(org, when, request_id=f"limited-{n}", status=429, outcome="upstream_error", **NO_TOKENS)
    use(
        org,
        when,
        request_id="whisper",
        model="whisper-1",
        endpoint="transcriptions",
        usage_details={"audio_seconds": 60},
        **NO_TOKENS,
    )
    return org


def test_the_overview_flags_unpriced_and_usage_unknown_apart(client, mixed, member):
    client.force_login(member)
    html = client.get(url("org_home", mixed), NOVEMBER).content.decode()

    # $0.0012 + $0.006; the three rate-limited requests are in neither flag.
    spend = text_of(html, "card-spend")
    assert "$0.0072" in spend
    assert "1 unpriced" in spend and "2 usage unknown" in spend
    models = text_of(html, "top-models")
    # test-small: 6 requests, $0.0012, 2 usage unknown; mystery-model: cost unknown.
    assert "2 usage unknown" in models
    assert "mystery-model 1 1,100 unknown 1 unpriced" in models
    # The day's row: requests, spend, unpriced, usage unknown.
    assert "Mon Nov 2 8 $0.0072 1 2" in text_of(html, "spend-over-time")


def test_a_period_of_only_usage_unknown_has_an_unknown_spend(client, org, member):
    use(org, utc(2026, 11, 2, 12), **NO_TOKENS)
    client.force_login(member)

    spend = text_of(client.get(url("org_home", org), NOVEMBER).content.decode(), "card-spend")

    assert "Unknown" in spend and "1 usage unknown" in spend
    assert "$0.00" not in spend


def test_the_models_page_and_a_customer_page_show_the_split(client, mixed, member):
    client.force_login(member)

    models = client.get(url("models", mixed), NOVEMBER).content.decode()
    customer = client.get(url("customer_detail", mixed, "acme"), NOVEMBER).content.decode()

    assert "2 usage unknown" in models and "1 unpriced" in models
    card = text_of(customer, "card-spend")
    assert "$0.0072" in card and "1 unpriced" in card and "2 usage unknown" in card


def test_the_events_explorer_filters_and_marks_each_price_source(client, mixed, member):
    client.force_login(member)

    def page(source):
        return client.get(url("events", mixed), {"price_source": source}).content.decode()

    unread = page("usage_unknown")
    assert unread.count("usage unknown</span>") == 2
    assert "unread-0" in unread and "limited-0" not in unread and "mystery" not in unread
    limited = page("no_usage")
    assert all(f"limited-{n}" in limited for n in range(3)) and "unread-0" not in limited
    assert limited.count("no usage</span>") == 3
    unpriced = page("unpriced")
    assert "mystery" in unpriced and "unread-0" not in unpriced
    assert "unpriced</span>" in unpriced
    assert "Select a valid choice" in page("free")


def test_the_csv_export_carries_usage_details_and_price_sources(client, mixed, admin):
    client.force_login(admin)

    response = client.get(url("events_export", mixed))

    body = b"".join(response.streaming_content).decode()
    lines = [dict(zip(*pair, strict=True)) for pair in _with_header(body)]
    by_id = {line["request_id"]: line for line in lines}
    whisper = by_id["whisper"]
    assert json.loads(whisper["usage_details"]) == {"audio_seconds": 60}
    assert (whisper["cost_usd"], whisper["price_source"]) == ("0.006000000000", "catalog")
    assert (by_id["unread-0"]["cost_usd"], by_id["unread-0"]["price_source"]) == (
        "",
        "usage_unknown",
    )
    assert (by_id["limited-0"]["cost_usd"], by_id["limited-0"]["price_source"]) == (
        "0.000000000000",
        "no_usage",
    )
    assert by_id["priced"]["usage_details"] == ""


def _with_header(body: str):
    header, *rows = list(csv.reader(io.StringIO(body)))
    return [(header, row) for row in rows]
