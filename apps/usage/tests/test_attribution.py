"""``attribution_from`` in the events writer (``contract.UsageRecord``): a record that names no
customer or properties takes them from an earlier event of its organization, found in the same
batch or among the stored events, with one query for the whole batch, before customers are
named and rollups added. A background response's usage, which appears in a later retrieve,
goes to the customer of the request that created it this way."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.usage.metering.events import usage_events_write
from apps.usage.models import DailyRollup, PropertyDailyRollup, UsageEvent
from apps.usage.tests.test_writer import _record

pytestmark = pytest.mark.django_db


def _creating(org, request_id="resp-created:1", **overrides):
    """A background create's event: no usage, billed nothing, the customer named."""
    return _record(
        org,
        request_id,
        endpoint="responses",
        customer="acme",
        properties={"feature": "report"},
        input_tokens=None,
        cached_input_tokens=None,
        cache_write_tokens=None,
        output_tokens=None,
        reasoning_tokens=None,
        raw_usage=None,
        billable=False,
        **overrides,
    )


def _later(org, request_id="resp:1", attribution_from="resp-created:1", **overrides):
    """The retrieve that brought the usage, naming no customer."""
    fields = {"customer": None, "properties": {}, "attribution_from": attribution_from}
    return _record(org, request_id, endpoint="responses", **{**fields, **overrides})


def _event(org, request_id):
    return UsageEvent.objects.for_org(org).select_related("customer").get(request_id=request_id)


def test_a_record_takes_customer_and_properties_from_a_stored_event(org):
    usage_events_write([_creating(org)])
    usage_events_write([_later(org)])

    event = _event(org, "resp:1")
    assert (event.customer.external_id, event.properties) == ("acme", {"feature": "report"})
    # The rollups count the usage under the customer and the property, as for any request.
    rollup = DailyRollup.objects.for_org(org).get(customer="acme")
    assert (rollup.requests, rollup.input_tokens) == (2, 1200)
    by_property = PropertyDailyRollup.objects.for_org(org).get(name="feature", value="report")
    assert (by_property.requests, by_property.output_tokens) == (2, 300)
    assert not DailyRollup.objects.for_org(org).filter(customer="").exists()


def test_a_record_takes_them_from_the_same_batch_whatever_the_order(org):
    usage_events_write([_later(org), _creating(org)])

    assert _event(org, "resp:1").customer.external_id == "acme"
    assert _event(org, "resp:1").properties == {"feature": "report"}


def test_what_the_record_names_itself_is_kept(org):
    usage_events_write([_creating(org)])
    usage_events_write(
        [
            _later(org, "resp:a", customer="globex"),
            _later(org, "resp:b", properties={"team": "ops"}),
        ]
    )

    named_customer = _event(org, "resp:a")
    assert (named_customer.customer.external_id, named_customer.properties) == (
        "globex",
        {"feature": "report"},
    )
    named_properties = _event(org, "resp:b")
    assert (named_properties.customer.external_id, named_properties.properties) == (
        "acme",
        {"team": "ops"},
    )


def test_an_event_of_another_organization_lends_nothing(org, other_org):
    """Request ids are unique across organizations; the look-up is scoped all the same, so a
    record can never reach another tenant's customer by naming its event."""
    usage_events_write([_creating(other_org, "theirs")])
    usage_events_write([_later(org, attribution_from="theirs"), _creating(other_org, "x")])

    event = _event(org, "resp:1")
    assert (event.customer, event.properties) == (None, {})
    assert _event(other_org, "theirs").customer.external_id == "acme"


def test_an_earlier_event_not_yet_stored_changes_nothing(org):
    assert usage_events_write([_later(org, attribution_from="resp-created:never")]) == 1

    event = _event(org, "resp:1")
    assert (event.customer, event.properties) == (None, {})


def test_the_look_up_is_one_query_for_the_whole_batch(org, other_org):
    usage_events_write([_creating(org, f"c{i}") for i in range(5)] + [_creating(other_org, "o")])

    def queries(records) -> int:
        with CaptureQueriesContext(connection) as captured:
            usage_events_write(records)
        return len(captured)

    # The same batch with the customer and properties named in the records themselves.
    named = {"attribution_from": "", "customer": "acme", "properties": {"feature": "report"}}
    plain = queries(
        [_later(org, f"plain{i}", **named) for i in range(5)]
        + [_later(other_org, "plain-o", **named)]
    )
    attributed = queries(
        [_later(org, f"later{i}", attribution_from=f"c{i}") for i in range(5)]
        + [_later(other_org, "later-o", attribution_from="o")]
    )
    assert attributed == plain + 1
    assert {
        e.customer.external_id
        for e in UsageEvent.objects.unscoped(reason="test").filter(request_id__startswith="later")
    } == {"acme"}


def test_a_replayed_batch_is_attributed_alike_and_stored_once(org):
    batch = [_creating(org), _later(org)]
    usage_events_write(batch)
    assert usage_events_write(batch) == 0
    # The records handed in were not changed in place.
    assert batch[1]["customer"] is None
    assert _event(org, "resp:1").customer.external_id == "acme"
