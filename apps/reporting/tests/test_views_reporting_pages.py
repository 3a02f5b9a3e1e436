"""Issue #19's reporting items: the period kept on every nav link and drill-down, the overview's
cards, one formatting rule for money and durations, the events explorer's presets and the event
page, the models page's provider and cache-write columns, the "(no customer)" page and a
customer's events and properties."""

import re
from datetime import date, timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.utils import timezone

from apps.reporting.templatetags.reporting_format import duration, usd
from apps.reporting.tests.dashboard_data import (
    OCTOBER,
    build_october,
    price,
    text_of,
    url,
    use,
    utc,
)
from apps.usage.models import UsageEvent

pytestmark = pytest.mark.django_db

OCTOBER_QUERY = "period=custom&start=2026-10-01&end=2026-10-31"


@pytest.fixture
def october(org):
    return build_october(org)


def _hrefs(html: str) -> list[str]:
    return [unescape(href) for href in re.findall(r'href="([^"]*)"', html)]


def _nav(html: str) -> str:
    return html[html.index('aria-label="Organization"') : html.index("</nav>")]


# The period sticks --------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["org_home", "customers", "models", "properties", "events"])
def test_every_nav_link_keeps_the_chosen_period(client, october, member, page):
    client.force_login(member)
    html = client.get(url(page, october), OCTOBER).content.decode()
    nav = _hrefs(_nav(html))
    for name in ("org_home", "customers", "models", "properties", "events"):
        assert f"{url(name, october)}?{OCTOBER_QUERY}" in nav, name
    # The Integrate page has no period.
    assert url("integrate", october) in nav


def test_without_a_chosen_period_nav_links_carry_none(client, october, member):
    client.force_login(member)
    nav = _hrefs(_nav(client.get(url("org_home", october)).content.decode()))
    assert url("customers", october) in nav
    assert not any("period=" in href for href in nav)


def test_every_drill_down_on_the_overview_keeps_the_period(client, october, member):
    client.force_login(member)
    hrefs = _hrefs(client.get(url("org_home", october), OCTOBER).content.decode())
    expected = [
        f"{url('customer_detail', october, 'acme')}?{OCTOBER_QUERY}",
        f"{url('customer_detail', october, 'globex')}?{OCTOBER_QUERY}",
        f"{url('events', october)}?{OCTOBER_QUERY}&model=test-large",
        f"{url('events', october)}?{OCTOBER_QUERY}&property=feature%3Dchat",
        f"{url('customers', october)}?{OCTOBER_QUERY}",
        f"{url('models', october)}?{OCTOBER_QUERY}",
        f"{url('properties', october)}?{OCTOBER_QUERY}&name=feature",
    ]
    for href in expected:
        assert href in hrefs, href


def test_a_drill_down_followed_shows_the_same_period(client, october, member):
    client.force_login(member)
    html = client.get(url("models", october), OCTOBER).content.decode()
    link = next(h for h in _hrefs(html) if "model=test-large" in h)
    events = client.get(link)
    assert events.status_code == 200
    # October's test-large request only: the period became the events' time filter.
    assert [e.model for e in events.context["events"]] == ["test-large"]
    back = next(h for h in _hrefs(_nav(events.content.decode())) if "/customers/" in h)
    assert client.get(back).context["period_days"] == (date(2026, 10, 1), date(2026, 10, 31))


def test_events_from_before_moments_carried_back_to_a_report(client, october, member):
    """The events explorer's From/Before (moments, Before exclusive) read as days elsewhere."""
    client.force_login(member)
    params = {"period": "custom", "start": "2026-10-05T00:00", "end": "2026-10-08T00:00"}
    response = client.get(url("customers", october), params)
    assert response.status_code == 200
    assert response.context["period_days"] == (date(2026, 10, 5), date(2026, 10, 7))


def test_the_custom_days_are_marked_to_show_only_for_custom(client, october, member):
    client.force_login(member)
    html = client.get(url("org_home", october), {"period": "7d"}).content.decode()
    picker = html[html.index('class="card filters period-picker"') :]
    picker = picker[: picker.index("</form>")]
    assert re.search(r'class="field custom-only">\s*<label for="id_start">', picker)
    assert re.search(r'class="field custom-only">\s*<label for="id_end">', picker)
    assert '<option value="7d" selected>' in picker


# Overview -----------------------------------------------------------------------------------


def test_overview_cards_lead_with_margin_and_spend(client, october, member):
    client.force_login(member)
    html = client.get(url("org_home", october), OCTOBER).content.decode()
    order = [
        "card-margin-setup",
        "card-spend",
        "card-requests",
        "card-tokens",
        "card-errors",
        "card-latency",
    ]
    positions = [html.index(f'id="{card}"') for card in order]
    assert positions == sorted(positions)
    # Six cards: the two headline ones span two of four columns, so two full rows.
    stats = html[html.index('class="stats overview-stats"') : html.index('id="spend-over-time"')]
    assert stats.count('class="card stat') == 6
    assert stats.count("stat headline") == 2
    assert 'id="card-refused"' not in html
    # No request was refused: the requests card says so.
    assert "0 refused before reaching a provider" in text_of(html, "card-requests")


def test_latency_card_reads_cleanly(client, october, member):
    client.force_login(member)
    html = client.get(url("org_home", october), OCTOBER).content.decode()
    latency = text_of(html, "card-latency")
    assert "≈38 ms p50" in latency and "p99 ≈100 ms" in latency
    assert "—" not in latency
    # A period with none: one dash and a sentence, no "— · p99 —".
    empty = client.get(
        url("org_home", october), {"period": "custom", "start": "2026-06-01", "end": "2026-06-02"}
    ).content.decode()
    assert text_of(empty, "card-latency") == "Latency — No request in this period."


# Formatting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("0", "$0.00"),
        ("0.098", "$0.098"),  # three significant digits: 0.0980, the trailing zero dropped
        ("0.1142", "$0.114"),
        ("0.000225", "$0.000225"),
        ("0.1", "$0.10"),  # never fewer than two decimals
        ("0.0012", "$0.0012"),
        ("0.99951", "$1.00"),  # 0.99951 to three digits is 1.00
        ("1.0048", "$1.00"),
        ("12345.675", "$12,345.68"),
        ("-0.5012", "-$0.501"),
        ("0.0000004", "<$0.000001"),
    ],
)
def test_money_rule(value, written):
    assert usd(Decimal(value)) == written


@pytest.mark.parametrize(
    ("milliseconds", "written"),
    [
        (None, "—"),
        (0.42, "0.42 ms"),
        (0, "0 ms"),
        (842, "842 ms"),
        (12862, "12.9 s"),
        (69114, "69.1 s"),
        (1234567, "1,234.6 s"),
    ],
)
def test_duration_rule(milliseconds, written):
    assert duration(milliseconds) == written


def test_events_and_models_pages_write_durations_by_the_rule(client, org, member):
    price(org)
    use(org, utc(2026, 10, 3), model="test-slow", latency_ms=12862)
    client.force_login(member)
    events = client.get(url("events", org)).content.decode()
    assert "12.9 s" in events and "12862" not in events
    models = client.get(url("models", org), OCTOBER).content.decode()
    assert "12.9 s" in text_of(models, "models-table")


# Events explorer ----------------------------------------------------------------------------


def test_events_period_presets(client, org, member):
    price(org)
    now = timezone.now()
    use(org, now - timedelta(hours=1), customer="recent")
    use(org, now - timedelta(days=40), customer="old")
    client.force_login(member)

    def customers(**params):
        response = client.get(url("events", org), params)
        assert response.status_code == 200
        return [e.customer.external_id for e in response.context["events"]]

    assert customers(period="7d") == ["recent"]
    assert customers() == ["recent", "old"]  # any time
    html = client.get(url("events", org), {"period": "7d"}).content.decode()
    assert '<option value="7d" selected>' in html
    assert re.search(r'class="field custom-only">\s*<label for="id_start">', html)


def test_a_custom_period_carried_as_days_includes_its_last_day(client, october, member):
    client.force_login(member)
    response = client.get(url("events", october), {**OCTOBER, "customer": "globex"})
    # Oct 6 and Oct 8 (the last day shown, Oct 31, is whole; September is out).
    assert [e.timestamp.day for e in response.context["events"]] == [8, 6]
    response = client.get(
        url("events", october), {"period": "custom", "start": "2026-10-01", "end": "2026-10-06"}
    )
    assert [e.timestamp.day for e in response.context["events"]] == [6, 5, 5, 5]


def test_exact_customer_filter(client, org, member):
    price(org)
    use(org, utc(2026, 10, 3), customer="ab")
    use(org, utc(2026, 10, 4), customer="a")
    use(org, utc(2026, 10, 5), customer=None)
    client.force_login(member)

    def found(**params):
        events = client.get(url("events", org), params).context["events"]
        return [e.customer.external_id if e.customer else None for e in events]

    assert found(customer="a") == ["a", "ab"]  # a prefix
    assert found(customer="a", exact="on") == ["a"]
    assert found(exact="on") == [None]  # no customer given: the requests without one


def test_event_rows_link_to_the_event_page_with_every_field(client, org, member):
    price(org)
    use(
        org,
        utc(2026, 10, 3, 9, 30),
        request_id="req_detail_1",
        customer="acme",
        model="test-cache",
        properties={"feature": "chat", "env": "prod"},
        cache_write_tokens=4321,
        cached_input_tokens=1200,
        cache_write_1h_tokens=321,
        ttfb_ms=12862,
        overhead_ms=0.42,
        latency_ms=14000,
        usage_details={"audio_seconds": 12.5, "input_audio_tokens": 2048},
        source="sdk_fallback",
    )
    event = UsageEvent.objects.for_org(org).get(request_id="req_detail_1")
    client.force_login(member)
    listing = client.get(url("events", org), OCTOBER).content.decode()
    detail_url = url("event_detail", org, event.pk)
    assert f"{detail_url}?{OCTOBER_QUERY}" in _hrefs(listing)

    response = client.get(detail_url, OCTOBER)
    assert response.status_code == 200
    html = response.content.decode()
    request = text_of(html, "event-request")
    assert "Request id req_detail_1" in request
    assert "Customer acme" in request and "Source sdk_fallback" in request
    assert "Model test-cache" in request
    cost = text_of(html, "event-cost")
    # The test-* override names no cache-write price: the event is unpriced, never $0.
    assert "Cost unpriced" in cost
    assert "Price source Unpriced (unpriced)" in cost
    assert "Latency 14.0 s" in cost
    assert "Time to first byte 12.9 s" in cost
    assert "Costr overhead 0.42 ms" in cost
    tokens = text_of(html, "event-tokens")
    assert "Cache reads 1,200" in tokens
    assert "Cache writes 4,321" in tokens and "Cache writes (1 h) 321" in tokens
    details = text_of(html, "event-details")
    assert "feature chat" in details and "env prod" in details
    assert "audio_seconds 12.5" in details and "input_audio_tokens 2,048" in details
    # The nav keeps the period here too.
    assert f"{url('customers', org)}?{OCTOBER_QUERY}" in _hrefs(_nav(html))


def test_another_organizations_event_is_a_404(client, org, other_org, member):
    price(other_org)
    use(other_org, utc(2026, 10, 3), request_id="req_theirs")
    theirs = UsageEvent.objects.for_org(other_org).get(request_id="req_theirs")
    client.force_login(member)
    assert client.get(url("event_detail", org, theirs.pk)).status_code == 404
    assert client.get(url("event_detail", org, 10**9)).status_code == 404


# Models -------------------------------------------------------------------------------------


def test_models_page_shows_provider_and_cache_writes(client, org, member):
    price(org)
    use(org, utc(2026, 10, 3), model="test-a", provider="anthropic", cache_write_tokens=700)
    use(org, utc(2026, 10, 4), model="test-a", provider="anthropic", cache_write_tokens=300)
    use(org, utc(2026, 10, 4), model="test-b", provider="openai")
    client.force_login(member)
    table = text_of(client.get(url("models", org), OCTOBER).content.decode(), "models-table")
    assert "Provider" in table and "Cache writes" in table
    # model, provider, requests, input 2 x 1,000, cache reads 0, cache writes 700 + 300,
    # output 2 x 100
    assert "test-a anthropic 2 2,000 0 1,000 200" in table
    assert "test-b openai 1 1,000 0 0 100" in table


# Customers ----------------------------------------------------------------------------------


def test_the_requests_without_a_customer_open_as_a_page(client, october, member):
    price(october)
    use(october, utc(2026, 10, 9), customer=None, latency_ms=10)
    use(october, utc(2026, 10, 10), customer=None, latency_ms=10)
    client.force_login(member)
    listing = client.get(url("customers", october), OCTOBER).content.decode()
    link = f"{url('no_customer', october)}?{OCTOBER_QUERY}"
    assert link in _hrefs(listing)

    page = client.get(link)
    assert page.status_code == 200
    html = page.content.decode()
    assert "(no customer)" in html
    # Two requests of 1,000 in / 100 out at $1/$2 per million: 2 x $0.0012.
    assert "$0.0024" in text_of(html, "card-spend")
    assert "2" in text_of(html, "card-requests")
    # Its events: exactly the requests without a customer, the period kept.
    events = next(h for h in _hrefs(html) if "exact=on" in h)
    found = client.get(events).context["events"]
    assert [e.customer for e in found] == [None, None]


def test_customer_page_links_its_events_and_breaks_down_a_property(client, october, member):
    use(october, utc(2026, 10, 9), customer="acme-two")  # begins like acme: not acme's
    client.force_login(member)
    html = client.get(url("customer_detail", october, "acme"), OCTOBER).content.decode()
    link = unescape(re.search(r'id="customer-events" href="([^"]*)"', html).group(1))
    assert link.startswith(f"{url('events', october)}?{OCTOBER_QUERY}")
    events = client.get(link).context["events"]
    # acme's four October requests (three on Oct 5, Oct 7's unknown model), no acme-two, no
    # September.
    assert {e.customer.external_id for e in events} == {"acme"}
    assert sorted(e.timestamp.day for e in events) == [5, 5, 5, 7]

    # By property: feature=chat on one request ($0.0012), the other three without it
    # ($0.0024 priced, the unknown model counted apart).
    table = text_of(html, "by-property")
    assert "chat 1 1,100 $0.0012" in table
    assert "(not set) 3 3,300 $0.0024 1 unpriced" in table
    chat = next(h for h in _hrefs(html) if "property=feature%3Dchat" in h)
    assert "exact=on" in chat and "customer=acme" in chat
