"""``GET /api/v1/events/``: the contract's fields, newest first, a cursor walk that meets every
event exactly once, the filters, and errors for bad parameters. Events are written through the
real writer; prices come from an override ($1 per million input tokens, $2 per million output
tokens for test-* models), so 1,000 input and 100 output tokens cost $0.0012."""

import base64
from datetime import UTC, datetime, timedelta

import pytest

from apps.usage.models import UsageEvent
from apps.usage.tests.factories import store_usage

pytestmark = pytest.mark.django_db

URL = "/api/v1/events/"


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def use(org, when: datetime, **overrides):
    overrides.setdefault("model", "test-small")
    return store_usage(org, timestamp=when.isoformat(), **overrides)


def pk_of(record) -> int:
    events = UsageEvent.objects.unscoped(reason="a test reads back what it stored")
    return events.get(request_id=record["request_id"]).pk


def request_ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [event["request_id"] for event in response.json()["results"]]


def assert_invalid(response, field):
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["details"], error
    return error


def test_an_event_has_exactly_the_contracts_fields(api, priced):
    record = use(
        priced,
        utc(2026, 11, 2, 12, 30, 5, 250),
        customer="acme",
        properties={"feature": "summaries"},
        cache_write_1h_tokens=None,
    )

    body = api.get(URL).json()

    assert body == {
        "next": None,
        "previous": None,
        "results": [
            {
                "id": pk_of(record),
                "request_id": record["request_id"],
                "timestamp": "2026-11-02T12:30:05.000250Z",
                "provider": "openai",
                "endpoint": "chat",
                "model": "test-small",
                "requested_model": "gpt-4o-mini",
                "customer": "acme",
                "properties": {"feature": "summaries"},
                "status": 200,
                "stream": False,
                "outcome": "ok",
                "source": "proxy",
                "input_tokens": 1000,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "cache_write_1h_tokens": None,
                "output_tokens": 100,
                "reasoning_tokens": 0,
                "usage_details": None,
                "service_tier": "",
                "cost_usd": "0.001200000000",
                "price_source": "override",
                "latency_ms": 20,
                "ttfb_ms": 10,
                "overhead_ms": 0.4,
            }
        ],
    }


def test_an_unpriced_event_has_a_null_cost_and_no_customer_is_null(api, priced):
    use(
        priced,
        utc(2026, 11, 2, 12),
        model="nobody-knows-this-model",
        customer=None,
        input_tokens=None,
        output_tokens=None,
        cached_input_tokens=None,
        cache_write_tokens=None,
        reasoning_tokens=None,
        ttfb_ms=None,
        overhead_ms=None,
    )

    (event,) = api.get(URL).json()["results"]

    # A success without usage: its usage is unknown, so its cost is too.
    assert (event["cost_usd"], event["price_source"], event["customer"]) == (
        None,
        "usage_unknown",
        None,
    )
    assert (event["input_tokens"], event["output_tokens"], event["ttfb_ms"]) == (None, None, None)


def test_events_come_newest_first_with_ties_broken_by_id(api, priced):
    older = use(priced, utc(2026, 11, 2, 11))
    first_tie = use(priced, utc(2026, 11, 2, 12))
    second_tie = use(priced, utc(2026, 11, 2, 12))
    newest = use(priced, utc(2026, 11, 3, 9))

    assert request_ids(api.get(URL)) == [
        newest["request_id"],
        second_tie["request_id"],
        first_tie["request_id"],
        older["request_id"],
    ]


def walk(api, url, params):
    """Every page from ``url`` following ``next``; returns the pages' request ids."""
    pages = []
    response = api.get(url, params)
    while True:
        pages.append(request_ids(response))
        following = response.json()["next"]
        if following is None:
            return pages, response
        response = api.get(following)


def test_a_cursor_walk_meets_every_event_once_even_among_equal_timestamps(api, priced):
    # 11 events: three share one timestamp, four share another (a page boundary falls inside).
    times = [utc(2026, 11, 2, h) for h in (1, 2)] + [utc(2026, 11, 2, 5)] * 3
    times += [utc(2026, 11, 2, 7)] * 4 + [utc(2026, 11, 2, 9), utc(2026, 11, 3, 0)]
    records = [use(priced, when) for when in times]
    expected = [
        r["request_id"]
        for r in sorted(records, key=lambda r: (r["timestamp"], pk_of(r)), reverse=True)
    ]

    pages, last = walk(api, URL, {"page_size": 3})

    assert [len(page) for page in pages] == [3, 3, 3, 2]
    assert [rid for page in pages for rid in page] == expected

    # And back: each previous link gives the page before, in the same order.
    back, response = [], last
    while response.json()["previous"] is not None:
        response = api.get(response.json()["previous"])
        back.append(request_ids(response))
    assert back == pages[-2::-1]


def test_the_cursor_keeps_the_filters_and_the_first_page_has_no_previous(api, priced):
    for hour in range(5):
        use(priced, utc(2026, 11, 2, hour), customer="acme")
        use(priced, utc(2026, 11, 2, hour), customer="globex")

    first = api.get(URL, {"customer": "acme", "page_size": 2})
    pages, _ = walk(api, URL, {"customer": "acme", "page_size": 2})

    assert first.json()["previous"] is None
    assert "customer=acme" in first.json()["next"]
    assert sum(len(page) for page in pages) == 5
    assert [len(page) for page in pages] == [2, 2, 1]


def test_start_and_end_dates_are_whole_utc_days(api, priced):
    before = use(priced, utc(2026, 11, 1, 23, 59, 59))
    first = use(priced, utc(2026, 11, 2, 0))
    last = use(priced, utc(2026, 11, 3, 23, 59, 59))
    after = use(priced, utc(2026, 11, 4, 0))

    in_days = request_ids(api.get(URL, {"start": "2026-11-02", "end": "2026-11-03"}))
    basic_format = request_ids(api.get(URL, {"start": "20261102", "end": "20261103"}))
    from_start = request_ids(api.get(URL, {"start": "2026-11-02"}))
    to_end = request_ids(api.get(URL, {"end": "2026-11-03"}))

    assert in_days == basic_format == [last["request_id"], first["request_id"]]
    assert from_start == [after["request_id"], last["request_id"], first["request_id"]]
    assert to_end == [last["request_id"], first["request_id"], before["request_id"]]


def test_start_and_end_datetimes_bound_the_instants_start_included_end_not(api, priced):
    early = use(priced, utc(2026, 11, 2, 10))
    middle = use(priced, utc(2026, 11, 2, 11))
    at_end = use(priced, utc(2026, 11, 2, 12))

    zoned = request_ids(
        api.get(URL, {"start": "2026-11-02T12:00:00+02:00", "end": "2026-11-02T12:00:00Z"})
    )
    naive = request_ids(api.get(URL, {"start": "2026-11-02T11:00:00", "end": "2026-11-02T12:00"}))
    # "+02:00" written unencoded in a query string arrives as " 02:00".
    unencoded = api.get(URL + "?start=2026-11-02T12:00:00+02:00&end=2026-11-02T13:00:00+01:00")

    assert zoned == [middle["request_id"], early["request_id"]]
    assert naive == [middle["request_id"]]
    assert request_ids(unencoded) == [middle["request_id"], early["request_id"]]
    assert at_end["request_id"] not in zoned


def test_each_filter_narrows_and_filters_combine(api, priced):
    when = utc(2026, 11, 2, 12)
    plain = use(priced, when, customer="acme", model="test-a")
    other_customer = use(priced, when, customer="globex", model="test-a")
    other_model = use(priced, when, customer="acme", model="test-b")
    anthropic = use(priced, when, customer="acme", model="test-a", provider="anthropic")
    failed = use(
        priced, when, customer="acme", model="test-a", status=429, outcome="upstream_error"
    )
    featured = use(
        priced,
        when,
        customer="acme",
        model="test-a",
        properties={"feature": "chat", "env.name": "prod"},
    )

    def only(params):
        return set(request_ids(api.get(URL, params)))

    assert only({"customer": "globex"}) == {other_customer["request_id"]}
    assert only({"model": "test-b"}) == {other_model["request_id"]}
    assert only({"provider": "anthropic"}) == {anthropic["request_id"]}
    assert only({"status": 429}) == {failed["request_id"]}
    assert only({"outcome": "upstream_error"}) == {failed["request_id"]}
    assert only({"property.feature": "chat"}) == {featured["request_id"]}
    # The name is everything after the first dot.
    assert only({"property.env.name": "prod"}) == {featured["request_id"]}
    assert only({"property.feature": "chat", "property.env.name": "dev"}) == set()
    assert only({"customer": "acme", "model": "test-a", "provider": "openai", "status": 200}) == {
        plain["request_id"],
        featured["request_id"],
    }
    assert only({"customer": "nobody"}) == set()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-01"}, "end"),
        ({"end": "9999-12-31"}, "end"),
        ({"start": "2026-11-03", "end": "2026-11-02"}, "end"),
        ({"start": "2026-11-02T12:00:00Z", "end": "2026-11-02T12:00:00Z"}, "end"),
        ({"status": "abc"}, "status"),
        ({"status": "99"}, "status"),
        ({"provider": "mistral"}, "provider"),
        ({"outcome": "fine"}, "outcome"),
        ({"customer": "x" * 256}, "customer"),
        ({"customer": "a\x00b"}, "customer"),
        ({"property.feature": "x" * 256}, "property"),
        ({"property.": "chat"}, "property"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "cD1bMSwgImEiXQ=="}, "cursor"),  # p=[1, "a"]: valid base64, bad position
        ({"cursor": base64.b64encode(b"p=" + b"[" * 50_000).decode()}, "cursor"),
        ({"cursor": base64.b64encode(b"p=[1e999999, 1]").decode()}, "cursor"),
        ({"cursor": base64.b64encode(b"p=[99999999999999999999999, 1]").decode()}, "cursor"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "501"}, "page_size"),
        ({"page_size": "ten"}, "page_size"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(api, priced, params, field):
    assert_invalid(api.get(URL, params), field)


def test_the_query_count_does_not_grow_with_the_events(api, priced, django_assert_num_queries):
    def fill(count, start):
        for n in range(count):
            use(
                priced,
                start + timedelta(minutes=n),
                customer=f"customer-{n % 7}",
                properties={"feature": f"f{n % 3}"},
            )

    fill(3, utc(2026, 11, 1))
    api.get(URL)  # warms the token cache
    # The token's organization, then the page of events with their customers.
    with django_assert_num_queries(2):
        assert len(api.get(URL, {"page_size": 100}).json()["results"]) == 3
    fill(60, utc(2026, 11, 2))
    with django_assert_num_queries(2):
        assert len(api.get(URL, {"page_size": 100}).json()["results"]) == 63
    with django_assert_num_queries(2):
        response = api.get(URL, {"page_size": 10, "property.feature": "f1"})
    with django_assert_num_queries(2):
        assert len(api.get(response.json()["next"]).json()["results"]) == 10


def test_a_forged_cursor_beyond_any_id_is_read_not_a_server_error(api, priced):
    event = use(priced, utc(2026, 11, 2, 12))
    micros = int((utc(2026, 11, 2, 12) - utc(1970, 1, 1)).total_seconds()) * 1_000_000
    forged = base64.b64encode(f"p=[{micros}, {10**25}]".encode()).decode()

    # At the event's timestamp, with an id beyond any: the event comes after that place.
    assert request_ids(api.get(URL, {"cursor": forged})) == [event["request_id"]]


def test_usage_details_are_returned_and_price_source_filters(api, priced):
    """A whisper-1 transcription (priced by its seconds), a success without usage and a
    rate-limited request without usage: each found by its price source alone."""
    no_tokens = {
        "input_tokens": None,
        "output_tokens": None,
        "cached_input_tokens": None,
        "cache_write_tokens": None,
        "reasoning_tokens": None,
    }
    use(
        priced,
        utc(2026, 11, 2, 12),
        model="whisper-1",
        endpoint="transcriptions",
        usage_details={"audio_seconds": 60},
        request_id="whisper",
        **no_tokens,
    )
    use(priced, utc(2026, 11, 2, 13), request_id="unread", **no_tokens)
    use(priced, utc(2026, 11, 2, 14), request_id="limited", status=429, **no_tokens)

    def found(source):
        body = api.get(URL, {"price_source": source}).json()
        return [(e["request_id"], e["cost_usd"], e["usage_details"]) for e in body["results"]]

    # whisper-1: $0.36 an hour of audio, so a minute is $0.006.
    assert found("catalog") == [("whisper", "0.006000000000", {"audio_seconds": 60})]
    assert found("usage_unknown") == [("unread", None, None)]
    assert found("no_usage") == [("limited", "0.000000000000", None)]
    assert found("unpriced") == []
    refused = api.get(URL, {"price_source": "free"})
    assert refused.status_code == 400
    assert "price_source" in refused.json()["error"]["details"]
