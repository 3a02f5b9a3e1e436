"""The events explorer: ``selectors.events_filtered`` (shared with the reporting API), the page
with its keyset pagination, and the streamed CSV export."""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.reporting import selectors
from apps.reporting.tests.dashboard_data import url
from apps.usage.models import PriceOverride
from apps.usage.tests.factories import store_usage

pytestmark = pytest.mark.django_db


def _utc(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def priced(org):
    PriceOverride.objects.create(
        organization=org,
        model_pattern="test-*",
        valid_from=_utc(2026, 1, 1),
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(2),
    )
    return org


def _use(org, when, **overrides):
    overrides.setdefault("model", "test-small")
    return store_usage(org, timestamp=when.isoformat(), **overrides)


def _ids(queryset):
    return [event.request_id for event in queryset]


def test_events_filtered_applies_every_filter_and_orders_newest_first(priced, other_org):
    a = _use(priced, _utc(2026, 11, 2, 10), customer="acme", properties={"feature": "chat"})
    b = _use(priced, _utc(2026, 11, 2, 11), customer="acme", properties={"feature": "search"})
    c = _use(priced, _utc(2026, 11, 2, 12), customer="globex", provider="anthropic")
    d = _use(priced, _utc(2026, 11, 2, 13), customer="acme", status=429, outcome="upstream_error")
    e = _use(priced, _utc(2026, 11, 2, 14), customer="acme", model="test-large")
    _use(other_org, _utc(2026, 11, 2, 12), customer="acme")

    def ids(**filters):
        return _ids(selectors.events_filtered(organization=priced, **filters))

    everything = [e, d, c, b, a]
    assert ids() == [r["request_id"] for r in everything]
    assert ids(customer="acme") == [r["request_id"] for r in (e, d, b, a)]
    assert ids(customer="nobody") == []
    assert ids(provider="anthropic") == [c["request_id"]]
    assert ids(model="test-large") == [e["request_id"]]
    assert ids(status=429) == [d["request_id"]]
    assert ids(outcome="upstream_error") == [d["request_id"]]
    assert ids(properties={"feature": "chat"}) == [a["request_id"]]
    assert ids(properties={"feature": "chat", "other": "x"}) == []
    # [start, end): the start instant is in, the end instant is out.
    assert ids(start=_utc(2026, 11, 2, 11), end=_utc(2026, 11, 2, 13)) == [
        c["request_id"],
        b["request_id"],
    ]
    # Empty filters do not filter.
    assert ids(customer="", provider="", model="", outcome="", properties={}) == [
        r["request_id"] for r in everything
    ]


def test_events_filtered_reads_property_names_as_one_key_whatever_they_hold(priced):
    odd = _use(priced, _utc(2026, 11, 2, 10), properties={"a__b": "x'y\"z", "ü": "1"})
    _use(priced, _utc(2026, 11, 2, 11), properties={"a": {"b": "x'y\"z"}})

    found = selectors.events_filtered(organization=priced, properties={"a__b": "x'y\"z"})
    assert _ids(found) == [odd["request_id"]]
    assert _ids(selectors.events_filtered(organization=priced, properties={"ü": "1"})) == [
        odd["request_id"]
    ]


def test_events_filtered_breaks_timestamp_ties_by_id(priced):
    same = _utc(2026, 11, 2, 10)
    first, second = _use(priced, same), _use(priced, same)

    assert _ids(selectors.events_filtered(organization=priced)) == [
        second["request_id"],
        first["request_id"],
    ]


# The page ----------------------------------------------------------------------------------


def _page_ids(response) -> list[str]:
    return [event.request_id for event in response.context["events"]]


def _link(html: str, rel: str) -> str | None:
    import re
    from html import unescape

    match = re.search(rf'<a rel="{rel}" href="([^"]+)"', html)
    return unescape(match.group(1)) if match else None


def test_keyset_pages_walk_every_event_once_in_both_directions(client, priced, member):
    # 123 events; many share a timestamp, so only the id breaks ties.
    stored = [_use(priced, _utc(2026, 11, 2, 10, n // 4)) for n in range(123)]
    client.force_login(member)
    page_url = url("events", priced)

    seen, pages, link = [], [], ""
    while link is not None:
        response = client.get(page_url + link)
        assert response.status_code == 200
        pages.append(_page_ids(response))
        seen += pages[-1]
        link = _link(response.content.decode(), "next")
    assert [len(p) for p in pages] == [50, 50, 23]
    expected = [r["request_id"] for r in sorted(stored, key=_store_order, reverse=True)]
    assert seen == expected

    # And back: from the last page, "newer" leads through the same pages in reverse.
    back = _link(response.content.decode(), "prev")
    middle = client.get(page_url + back)
    assert _page_ids(middle) == pages[1]
    first = client.get(page_url + _link(middle.content.decode(), "prev"))
    assert _page_ids(first) == pages[0]
    assert _link(first.content.decode(), "prev") is None


def _store_order(record):
    from apps.usage.models import UsageEvent

    event = UsageEvent.objects.unscoped(reason="test").get(request_id=record["request_id"])
    return (event.timestamp, event.pk)


def test_filters_narrow_the_page_and_keep_across_pages(client, priced, member):
    for n in range(60):
        _use(priced, _utc(2026, 11, 2, 10, n), customer="acme" if n % 2 else "globex")
    client.force_login(member)

    response = client.get(url("events", priced), {"customer": "acme"})
    assert len(response.context["events"]) == 30
    assert {e.customer.external_id for e in response.context["events"]} == {"acme"}
    assert _link(response.content.decode(), "next") is None


def test_times_are_read_and_shown_in_the_org_time_zone(client, priced, member):
    priced.time_zone = "Europe/Paris"  # UTC+1 in November
    priced.save()
    early = _use(priced, _utc(2026, 11, 2, 8, 59))
    late = _use(priced, _utc(2026, 11, 2, 9, 0))
    client.force_login(member)

    response = client.get(url("events", priced), {"start": "2026-11-02T10:00"})
    assert _page_ids(response) == [late["request_id"]]
    assert "Nov 2, 10:00:00" in response.content.decode()
    response = client.get(url("events", priced), {"end": "2026-11-02T10:00"})
    assert _page_ids(response) == [early["request_id"]]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "abc"}, "Enter a whole number"),
        ({"property": "no-equals-sign"}, "Write the property as name=value"),
        ({"start": "2026-11-03T00:00", "end": "2026-11-02T00:00"}, "must be before"),
        ({"outcome": "exploded"}, "Select a valid choice"),
    ],
)
def test_bad_filters_are_explained(client, priced, admin, params, message):
    client.force_login(admin)
    response = client.get(url("events", priced), params)
    assert response.status_code == 400
    assert message in response.content.decode()
    export = client.get(url("events_export", priced), params)
    assert export.status_code == 400


def test_an_org_without_events_says_so(client, org, member):
    client.force_login(member)
    assert "No events yet." in client.get(url("events", org)).content.decode()
    assert "No event matches" in client.get(url("events", org), {"model": "x"}).content.decode()


@pytest.mark.parametrize("filters", [{}, {"customer": "acme"}, {"property": "feature=chat"}])
def test_events_page_query_count_does_not_grow(
    client, priced, member, django_assert_num_queries, filters
):
    client.force_login(member)
    _use(priced, _utc(2026, 11, 2), customer="acme", properties={"feature": "chat"})
    with django_assert_num_queries(EVENTS_QUERIES):
        client.get(url("events", priced), filters)
    for n in range(80):
        _use(priced, _utc(2026, 11, 2, 1, n % 60), customer=f"c{n % 7}", properties={"f": "x"})
        _use(priced, _utc(2026, 11, 3, 1, n % 60), customer="acme", properties={"feature": "chat"})
    with django_assert_num_queries(EVENTS_QUERIES):
        response = client.get(url("events", priced), filters)
    assert len(response.context["events"]) == 50


# Session, user, membership, nav (4); one page of events with their customers (1).
EVENTS_QUERIES = 5


# CSV export --------------------------------------------------------------------------------


def _csv(response) -> list[list[str]]:
    import csv
    import io

    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


def test_export_streams_the_filtered_events_as_csv(client, priced, admin):
    from django.http import StreamingHttpResponse

    _use(
        priced,
        _utc(2026, 11, 2, 10),
        customer='=HYPERLINK("x"),"quoted"',
        properties={"feature": 'a,b "c"\nd', "ü": "ñ"},
    )
    _use(priced, _utc(2026, 11, 2, 11), customer="acme", model="mystery-model")
    _use(priced, _utc(2026, 11, 2, 12), customer="other")
    client.force_login(admin)

    response = client.get(url("events_export", priced), {"customer": "acme"})
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment;" in response["Content-Disposition"]
    rows = _csv(response)
    header, (unpriced,) = rows[0], rows[1:]
    assert header[:3] == ["timestamp", "request_id", "provider"]
    line = dict(zip(header, unpriced, strict=True))
    assert line["timestamp"] == "2026-11-02T11:00:00Z"
    assert (line["customer"], line["model"], line["cost_usd"]) == ("acme", "mystery-model", "")
    assert line["price_source"] == "unpriced"

    everything = _csv(client.get(url("events_export", priced)))
    assert len(everything) == 4
    odd = dict(zip(header, everything[-1], strict=True))  # oldest last
    # A formula-looking value is defused with a leading quote; the rest comes back exactly.
    assert odd["customer"] == "'" + '=HYPERLINK("x"),"quoted"'
    assert json.loads(odd["properties"]) == {"feature": 'a,b "c"\nd', "ü": "ñ"}
    assert odd["cost_usd"] == "0.001200000000"  # a decimal string, 12 places
    assert (odd["input_tokens"], odd["output_tokens"], odd["stream"]) == ("1000", "100", "false")


def test_export_is_audited_with_its_filters(client, priced, admin):
    from apps.accounts.models import AuditEvent

    client.force_login(admin)
    response = client.get(
        url("events_export", priced),
        {"customer": "acme", "status": "200", "property": "feature=chat"},
    )
    b"".join(response.streaming_content)

    event = AuditEvent.objects.for_org(priced).get(action="usage.exported")
    assert event.actor == admin
    assert event.details == {
        "filters": {"customer": "acme", "status": 200, "properties": {"feature": "chat"}}
    }


def test_export_reads_events_in_one_query_whatever_their_number(
    client, priced, admin, django_assert_num_queries
):
    client.force_login(admin)
    for n in range(30):
        _use(priced, _utc(2026, 11, 2, 10, n), customer=f"c{n % 4}")
    # Session, user, membership (3); the audit event (1); the events (1).
    with django_assert_num_queries(5):
        rows = _csv(client.get(url("events_export", priced)))
    assert len(rows) == 31
