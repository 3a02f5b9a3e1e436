"""``paging``: the one keyset paginator behind the dashboard's events page (``after``/``before``
in its URLs) and the API's cursor pagination (DRF's opaque ``cursor``): the same position for a
row on both, the same walk, and a malformed or tampered position answered as each surface
promises (the dashboard shows the newest page, the API answers 400)."""

import base64
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pytest

from apps.reporting import paging, selectors
from apps.reporting.api import CustomerPagination, EventPagination
from apps.reporting.tests.dashboard_data import url, use, utc
from apps.usage.models import UsageEvent

pytestmark = pytest.mark.django_db


def _events(org):
    return selectors.events_filtered(organization=org)


def test_a_position_is_exact_to_the_microsecond_and_reads_back():
    when = datetime(2026, 11, 2, 10, 0, 0, 123_457, tzinfo=UTC)
    event = UsageEvent(pk=42, timestamp=when)

    values = paging.EVENTS.position_of(event)
    text = paging.EVENTS.position_text(event)

    assert values == [1_793_613_600_123_457, 42]
    assert text == "1793613600123457.42"
    assert paging.EVENTS.position_from(values) == (when, 42)
    assert paging.EVENTS.position_from_text(text) == (when, 42)


@pytest.mark.parametrize(
    "values",
    [[1, "2"], ["1", 2], [1.0, 2], [True, 2], [1], [1, 2, 3], 7, {"a": 1, "b": 2}, [10**30, 1]],
)
def test_values_that_are_not_a_position_are_refused(values):
    with pytest.raises((ValueError, TypeError)):
        paging.EVENTS.position_from(values)


@pytest.mark.parametrize("text", ["", "abc", "12", "12.", ".5", "1.x", "9" * 30 + ".1"])
def test_text_that_is_not_a_position_is_refused(text):
    with pytest.raises(ValueError):
        paging.EVENTS.position_from_text(text)


def test_both_surfaces_page_with_the_same_keysets():
    assert EventPagination.keyset is paging.EVENTS
    assert isinstance(CustomerPagination.keyset, paging.Keyset)
    assert paging.EVENTS.ordering() == ["-timestamp", "-id"]
    assert paging.EVENTS.ordering(forward=False) == ["timestamp", "id"]


def test_pages_forward_and_back_among_equal_timestamps(priced, django_assert_num_queries):
    # Seven events, three sharing one timestamp: a page boundary falls among them.
    for when in (
        [utc(2026, 11, 2, h) for h in (1, 2)]
        + [utc(2026, 11, 2, 5)] * 3
        + [utc(2026, 11, 2, 7)] * 2
    ):
        use(priced, when)
    everything = list(_events(priced))

    with django_assert_num_queries(1):
        first = paging.EVENTS.page(_events(priced), size=3)
    position = tuple(paging.EVENTS.position_from(paging.EVENTS.position_of(first.rows[-1])))
    with django_assert_num_queries(1):
        second = paging.EVENTS.page(_events(priced), position=position, size=3)
    back_from = paging.EVENTS.position_from(paging.EVENTS.position_of(second.rows[0]))
    with django_assert_num_queries(1):
        back = paging.EVENTS.page(_events(priced), position=back_from, forward=False, size=3)

    assert first.rows == everything[:3]
    assert (first.has_previous, first.has_next) == (False, True)
    assert second.rows == everything[3:6]
    assert (second.has_previous, second.has_next) == (True, True)
    assert back.rows == first.rows
    assert (back.has_previous, back.has_next) == (False, True)


def test_the_dashboard_and_the_api_carry_the_same_position(client, api, priced, member):
    for minute in range(4):
        use(priced, utc(2026, 11, 2, 10, minute))
    oldest = _events(priced).last()

    # The API's link after its page of three, and the dashboard's "older" link after its page.
    cursor = parse_qs(urlparse(api.get("/api/v1/events/", {"page_size": 3}).json()["next"]).query)
    api_position = json.loads(parse_qs(base64.b64decode(cursor["cursor"][0]).decode())["p"][0])
    client.force_login(member)
    response = client.get(url("events", priced))

    assert api_position == paging.EVENTS.position_of(_events(priced)[2])
    assert response.context["older"] == paging.EVENTS.position_text(oldest)


@pytest.mark.parametrize(
    "params",
    [
        {"after": "not-a-cursor"},
        {"before": "12"},
        {"after": "1e9.5"},
        {"before": "9" * 30 + ".1"},  # beyond any datetime
        {"after": "-" + "9" * 25 + ".1"},
        {"before": "x.y", "after": ""},
    ],
)
def test_a_malformed_dashboard_position_shows_the_newest_page(
    client, priced, member, params, django_assert_num_queries
):
    for minute in range(3):
        use(priced, utc(2026, 11, 2, 10, minute))
    client.force_login(member)
    newest = client.get(url("events", priced))

    # Session, user, membership, nav (4); one page of events (1): as without a position.
    with django_assert_num_queries(5):
        response = client.get(url("events", priced), params)

    assert response.status_code == 200
    assert list(response.context["events"]) == list(newest.context["events"])
    assert (response.context["has_newer"], response.context["has_older"]) == (False, False)


def test_a_dashboard_position_past_the_newest_event_shows_nothing_newer(client, priced, member):
    event = use(priced, utc(2026, 11, 2, 10))
    stored = _events(priced).get(request_id=event["request_id"])
    later = UsageEvent(pk=stored.pk, timestamp=stored.timestamp + timedelta(hours=1))
    client.force_login(member)

    response = client.get(url("events", priced), {"after": paging.EVENTS.position_text(later)})

    assert [e.request_id for e in response.context["events"]] == [event["request_id"]]
    assert (response.context["has_newer"], response.context["has_older"]) == (True, False)
