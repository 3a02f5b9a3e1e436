from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.usage.metering.events import usage_events_write
from apps.usage.models import Customer, PriceOverride, UsageEvent

pytestmark = pytest.mark.django_db

WHEN = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def _record(org, request_id, **overrides):
    return {
        "request_id": request_id,
        "organization_id": org.pk,
        "token_id": None,
        "timestamp": WHEN.isoformat(),
        "provider": "openai",
        "endpoint": "chat",
        "model": "gpt-4o-mini",
        "requested_model": "gpt-4o-mini",
        "customer": "acme",
        "properties": {"feature": "chat"},
        "status": 200,
        "stream": False,
        "outcome": "ok",
        "input_tokens": 1200,
        "cached_input_tokens": 1000,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": None,
        "output_tokens": 300,
        "reasoning_tokens": 0,
        "service_tier": "",
        "raw_usage": {"prompt_tokens": 1200},
        "latency_ms": 20,
        "ttfb_ms": 10,
        "overhead_ms": 0.4,
        **overrides,
    }


def test_a_batch_is_priced_stored_and_its_customers_created(org, other_org):
    stored = usage_events_write(
        [
            _record(org, "req_1"),
            _record(org, "req_2", customer="globex", model="ft:unknown-model"),
            _record(other_org, "req_3"),
        ]
    )

    assert stored == 3
    first = UsageEvent.objects.for_org(org).get(request_id="req_1")
    # gpt-4o-mini: 200 uncached at $0.15, 1000 cached at $0.075, 300 out at $0.60 per million.
    assert first.cost_usd == Decimal("0.000285")
    assert first.price_source == "catalog"
    unknown = UsageEvent.objects.for_org(org).get(request_id="req_2")
    assert (unknown.cost_usd, unknown.price_source) == (None, "unpriced")
    assert set(Customer.objects.for_org(org).values_list("external_id", flat=True)) == {
        "acme",
        "globex",
    }
    assert UsageEvent.objects.for_org(other_org).get().customer.organization_id == other_org.pk


def test_writing_the_same_batch_twice_stores_it_once(org):
    batch = [_record(org, "req_a"), _record(org, "req_b")]

    usage_events_write(batch)
    usage_events_write(batch)

    assert UsageEvent.objects.for_org(org).count() == 2
    assert Customer.objects.for_org(org).count() == 1


def test_an_override_of_this_org_only_prices_its_events(org, other_org):
    PriceOverride.objects.create(
        organization=org,
        model_pattern="gpt-4o-mini",
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        input_per_mtok=Decimal("1"),
        output_per_mtok=Decimal("2"),
    )

    usage_events_write([_record(org, "req_o"), _record(other_org, "req_x")])

    mine = UsageEvent.objects.for_org(org).get()
    theirs = UsageEvent.objects.for_org(other_org).get()
    assert (mine.cost_usd, mine.price_source) == (
        (1200 * Decimal(1) + 300 * Decimal(2)) / Decimal(1_000_000),
        "override",
    )
    assert (theirs.cost_usd, theirs.price_source) == (Decimal("0.000285"), "catalog")


def test_records_of_a_vanished_org_are_dropped_and_the_rest_stored(org):
    from apps.accounts.tests.factories import OrganizationFactory

    gone = OrganizationFactory()
    record = _record(gone, "req_gone")
    gone.delete()

    assert usage_events_write([record, _record(org, "req_kept")]) == 1

    assert list(UsageEvent.objects.for_org(org).values_list("request_id", flat=True)) == [
        "req_kept"
    ]
    assert not UsageEvent.objects.unscoped(reason="test").filter(request_id="req_gone").exists()


def test_a_deleted_token_is_stored_as_null_and_a_live_one_kept(org):
    from apps.keys.services import proxy_token_create

    live = proxy_token_create(organization=org, name="live", scopes=["proxy"], actor=None).token
    dead = proxy_token_create(organization=org, name="dead", scopes=["proxy"], actor=None).token
    dead_id = dead.pk
    dead.delete()

    usage_events_write([_record(org, "t1", token_id=live.pk), _record(org, "t2", token_id=dead_id)])

    tokens = dict(UsageEvent.objects.for_org(org).values_list("request_id", "token_id"))
    assert tokens == {"t1": live.pk, "t2": None}


def test_timestamps_as_datetimes_naive_or_in_any_zone_are_stored_in_utc(org):
    usage_events_write(
        [
            _record(org, "z1", timestamp=datetime(2026, 11, 2, 12, 0)),  # naive: UTC
            _record(org, "z2", timestamp="2026-11-02T07:00:00-05:00"),
            _record(org, "z3", timestamp=WHEN),
        ]
    )

    stamps = set(UsageEvent.objects.for_org(org).values_list("timestamp", flat=True))
    assert stamps == {WHEN}


def test_over_long_text_is_cut_to_the_column_instead_of_failing_the_batch(org):
    long_model = "m" * 400

    assert usage_events_write([_record(org, "long", model=long_model, customer="c" * 300)]) == 1

    event = UsageEvent.objects.for_org(org).get()
    assert event.model == "m" * 255
    assert event.customer.external_id == "c" * 255


def test_a_record_may_leave_optional_fields_out(org):
    minimal = {
        "request_id": "minimal",
        "organization_id": org.pk,
        "timestamp": WHEN.isoformat(),
        "provider": "openai",
        "endpoint": "chat",
        "model": "gpt-4o-mini",
        "status": 200,
        "outcome": "ok",
        "input_tokens": 1200,
        "cached_input_tokens": 1000,
        "output_tokens": 300,
        "latency_ms": 12,
    }

    assert usage_events_write([minimal]) == 1

    event = UsageEvent.objects.for_org(org).get()
    assert (event.cost_usd, event.customer, event.token_id) == (Decimal("0.000285"), None, None)
    assert (event.properties, event.raw_usage, event.ttfb_ms, event.stream) == (
        {},
        None,
        None,
        False,
    )
