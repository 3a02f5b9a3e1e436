"""Background Responses through Costr (DESIGN.md, "Every endpoint and transport the SDKs use":
Background and retrieved responses), with the official openai SDK against the fake provider.

A ``background: true`` call answers at once (queued, no usage); the usage appears later, in a
retrieve, a stream retrieve or the creating call's own stream. It must be metered once, by the
first record that carries it, never per poll, and go to the customer and properties of the
request that created the response, even when the later calls name none.

The expected cost is worked out by hand from genai-prices' published gpt-4o-mini rates ($0.15
per million input tokens, $0.075 cached, $0.60 output; checked below) and the fake's default
Responses usage: 1200 input tokens, 1000 of them cached, 300 output.
"""

import hashlib
from decimal import Decimal

import genai_prices
import pytest

from tests.fakes.provider import RESPONSE_ID

pytestmark = pytest.mark.django_db(transaction=True)

EXPECTED_COST = (200 * Decimal("0.15") + 1000 * Decimal("0.075") + 300 * Decimal("0.60")) / 10**6
CREATOR = {"X-Costr-Customer": "acme", "X-Costr-Property-Feature": "report"}


def _ids(organization, response_id: str) -> tuple[str, str]:
    """The request ids of a background response's creating event and of its metered one."""
    digest = hashlib.sha256(response_id.encode()).hexdigest()[:32]
    return f"resp-created:{organization.pk}:{digest}", f"resp:{organization.pk}:{digest}"


def test_gpt_4o_mini_rates_are_the_catalogues():
    price = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1200, cache_read_tokens=1000, output_tokens=300),
        "gpt-4o-mini",
        provider_id="openai",
    )
    assert price.total_price == EXPECTED_COST


def test_a_background_response_is_metered_once_when_its_usage_appears_for_its_creator(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    created = client.responses.create(
        model="gpt-4o-mini", input="Write a report.", background=True, extra_headers=CREATOR
    )
    assert (created.status, created.background, created.usage) == ("queued", True, None)

    # Polled as the SDK documents it, with no customer named: queued, in_progress, completed.
    statuses = []
    response = created
    while response.status in ("queued", "in_progress"):
        response = client.responses.retrieve(created.id)
        statuses.append(response.status)
    assert statuses == ["queued", "in_progress", "completed"]
    assert response.usage.input_tokens == 1200
    # Retrieved again, plainly and as a stream: the same completed response, the same usage.
    again = client.responses.retrieve(created.id)
    assert again.usage == response.usage
    streamed = list(client.responses.retrieve(created.id, stream=True))
    assert streamed[-1].type == "response.completed"
    assert streamed[-1].response.usage == response.usage

    created_id, metered_id = _ids(proxy.organization, created.id)
    events = proxy.events(4)
    assert len(events) == 4, [e.request_id for e in events]
    by_id = {event.request_id: event for event in events}
    creating = by_id.pop(created_id)
    metered = by_id.pop(metered_id)
    polls = list(by_id.values())

    assert (creating.endpoint, creating.model, creating.status) == ("responses", "gpt-4o-mini", 200)
    assert (creating.cost_usd, creating.price_source) == (0, "no_usage")
    assert creating.customer.external_id == "acme"

    assert len(polls) == 2  # queued and in_progress: each its own event, billed nothing
    for poll in polls:
        assert poll.request_id.startswith("req_")
        assert (poll.endpoint, poll.input_tokens) == ("responses", None)
        assert (poll.cost_usd, poll.price_source) == (0, "no_usage")
        assert (poll.customer.external_id, poll.properties) == ("acme", {"feature": "report"})

    assert metered.endpoint == "responses"
    assert (metered.input_tokens, metered.cached_input_tokens, metered.output_tokens) == (
        1200,
        1000,
        300,
    )
    assert (metered.cost_usd, metered.price_source) == (EXPECTED_COST, "catalog")
    # Attributed to the creating request, though the retrieve named no customer.
    assert metered.customer.external_id == "acme"
    assert metered.properties == {"feature": "report"}
    # Billed once: the organization's whole spend is this one response's.
    assert sum((e.cost_usd or 0) for e in events) == EXPECTED_COST


def test_a_background_response_created_as_a_stream_is_metered_by_that_stream_and_only_once(
    sdk, proxy
):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    events = list(
        client.responses.create(
            model="gpt-4o-mini",
            input="Hi",
            background=True,
            stream=True,
            extra_headers=CREATOR,
        )
    )
    final = events[-1].response
    assert (events[0].response.status, final.status) == ("queued", "completed")
    retrieved = client.responses.retrieve(final.id)  # completed: the same usage again
    assert retrieved.usage == final.usage

    _, metered_id = _ids(proxy.organization, final.id)
    [event] = proxy.events(1)
    assert event.request_id == metered_id
    assert (event.stream, event.cost_usd, event.price_source) == (True, EXPECTED_COST, "catalog")
    assert event.customer.external_id == "acme"


def test_a_stream_retrieve_that_brings_the_usage_first_is_the_metered_event(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    created = client.responses.create(
        model="gpt-4o-mini", input="Hi", background=True, extra_headers=CREATOR
    )
    streamed = list(client.responses.retrieve(created.id, stream=True))
    assert streamed[-1].response.status == "completed"

    created_id, metered_id = _ids(proxy.organization, created.id)
    by_id = {event.request_id: event for event in proxy.events(2)}
    assert by_id.keys() == {created_id, metered_id}
    metered = by_id[metered_id]
    assert (metered.stream, metered.cost_usd) == (True, EXPECTED_COST)
    assert (metered.customer.external_id, metered.properties) == ("acme", {"feature": "report"})


def test_the_same_response_id_in_two_organizations_is_two_responses(sdk, proxy, make_organization):
    """The derived request ids carry the organization: another tenant's response can neither
    take the place of this one's event nor lend it a customer."""
    other, created = make_organization()
    from apps.proxy.tests.conftest import ProxySetup

    other_proxy = ProxySetup(
        organization=other,
        token=created.plaintext,
        base=proxy.base.replace(proxy.organization.slug, other.slug),
        fake=proxy.fake,
    )
    mine = sdk.openai(proxy.url("openai"), proxy.token)
    theirs = sdk.openai(other_proxy.url("openai"), other_proxy.token)
    response = mine.responses.create(
        model="gpt-4o-mini",
        input="Hi",
        background=True,
        extra_headers={**CREATOR, "x-fake-background-polls": "0"},
    )
    # The other organization retrieves the same id (its provider key reaches the same fake).
    theirs.responses.retrieve(response.id)
    mine.responses.retrieve(response.id)

    [theirs_event] = other_proxy.events(1)
    assert theirs_event.request_id == _ids(other, response.id)[1]
    assert theirs_event.customer is None  # the creator was another organization's request
    assert theirs_event.cost_usd == EXPECTED_COST
    mine_events = proxy.events(2)
    assert {e.request_id for e in mine_events} == set(_ids(proxy.organization, response.id))
    assert {e.customer.external_id for e in mine_events} == {"acme"}


def test_retrieving_a_response_made_in_the_foreground_bills_nothing_again(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    made = client.responses.create(model="gpt-4o-mini", input="Hi", extra_headers=CREATOR)
    assert made.id == RESPONSE_ID and made.background is False
    retrieved = client.responses.retrieve(made.id)
    assert retrieved.usage == made.usage

    creating, retrieve = proxy.events(2)
    assert creating.request_id.startswith("req_") and retrieve.request_id.startswith("req_")
    assert (creating.cost_usd, creating.price_source) == (EXPECTED_COST, "catalog")
    assert (retrieve.endpoint, retrieve.input_tokens) == ("responses", None)
    assert (retrieve.cost_usd, retrieve.price_source) == (0, "no_usage")


def test_an_unknown_response_is_a_provider_error_billed_nothing(sdk, proxy):
    import openai

    client = sdk.openai(proxy.url("openai"), proxy.token)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nothing")

    [event] = proxy.events()
    assert (event.endpoint, event.status, event.outcome) == ("responses", 404, "upstream_error")
    assert (event.cost_usd, event.price_source) == (0, "no_usage")


def test_a_cancelled_background_response_is_billed_nothing(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    created = client.responses.create(
        model="gpt-4o-mini", input="Hi", background=True, extra_headers=CREATOR
    )
    cancelled = client.responses.cancel(created.id)
    assert (cancelled.status, cancelled.usage) == ("cancelled", None)

    events = proxy.events(2)
    assert {e.price_source for e in events} == {"no_usage"}
    assert {e.customer.external_id for e in events} == {"acme"}
