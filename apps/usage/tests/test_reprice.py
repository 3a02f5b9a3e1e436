"""Re-pricing stored events after a price override changes: event costs, then the rollups of
the days that changed."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from apps.usage.metering.events import usage_events_write
from apps.usage.models import DailyRollup, PriceOverride, UsageEvent
from apps.usage.repricing import usage_reprice
from apps.usage.tasks import reprice
from apps.usage.tests.test_writer import _record

pytestmark = pytest.mark.django_db

M = Decimal(1_000_000)
# gpt-4o-mini from the catalog: 200 uncached at $0.15, 1000 cached at $0.075, 300 out at $0.60.
CATALOG = Decimal("0.000285")
# The override below: 200 uncached at $1, 1000 cached at $0.50, 300 out at $2.
OVERRIDDEN = (200 * Decimal(1) + 1000 * Decimal("0.5") + 300 * Decimal(2)) / M


def _events(org):
    """Two days of gpt-4o-mini for acme, one unknown model, one event of another model."""
    usage_events_write(
        [
            _record(org, "d1a", timestamp="2026-11-01T10:00:00+00:00"),
            _record(org, "d1b", timestamp="2026-11-01T11:00:00+00:00"),
            _record(org, "d2a", timestamp="2026-11-02T10:00:00+00:00"),
            _record(org, "d2u", timestamp="2026-11-02T10:00:00+00:00", model="my-llama"),
            _record(org, "d2o", timestamp="2026-11-02T10:00:00+00:00", model="gpt-4o"),
        ]
    )


def _override(org, pattern="gpt-4o-mini", valid_from=datetime(2026, 1, 1, tzinfo=UTC)):
    return PriceOverride.objects.create(
        organization=org,
        model_pattern=pattern,
        valid_from=valid_from,
        input_per_mtok=Decimal(1),
        cached_input_per_mtok=Decimal("0.5"),
        output_per_mtok=Decimal(2),
    )


def _cost(org, request_id):
    event = UsageEvent.objects.for_org(org).get(request_id=request_id)
    return event.cost_usd, event.price_source


def _rollup_cost(org, day, model="gpt-4o-mini"):
    return DailyRollup.objects.for_org(org).get(day=day, model=model).cost_usd


def test_an_added_override_reprices_events_and_their_rollups(org, other_org):
    _events(org)
    usage_events_write([_record(other_org, "theirs")])
    assert _rollup_cost(org, date(2026, 11, 1)) == 2 * CATALOG
    gpt_4o_before = _rollup_cost(org, date(2026, 11, 2), model="gpt-4o")
    _override(org)

    assert usage_reprice(org) == 5

    assert _cost(org, "d1a") == (OVERRIDDEN, "override")
    assert _cost(org, "d2a") == (OVERRIDDEN, "override")
    assert _cost(org, "d2u") == (None, "unpriced")
    assert _cost(org, "d2o")[1] == "catalog"
    assert _rollup_cost(org, date(2026, 11, 1)) == 2 * OVERRIDDEN
    assert _rollup_cost(org, date(2026, 11, 2)) == OVERRIDDEN
    assert _rollup_cost(org, date(2026, 11, 2), model="gpt-4o") == gpt_4o_before
    rollup = DailyRollup.objects.for_org(org).get(day=date(2026, 11, 1))
    assert (rollup.requests, rollup.input_tokens, rollup.customer) == (2, 2400, "acme")
    assert _cost(other_org, "theirs") == (CATALOG, "catalog")
    assert DailyRollup.objects.for_org(other_org).get().cost_usd == CATALOG


def test_since_limits_the_events_and_days_repriced(org):
    _events(org)
    _override(org)

    assert usage_reprice(org, datetime(2026, 11, 2, tzinfo=UTC)) == 3

    assert _cost(org, "d1a") == (CATALOG, "catalog")
    assert _rollup_cost(org, date(2026, 11, 1)) == 2 * CATALOG
    assert _rollup_cost(org, date(2026, 11, 2)) == OVERRIDDEN


def test_an_override_pricing_an_unknown_model_takes_it_out_of_unpriced(org):
    _events(org)
    _override(org, pattern="my-llama")

    usage_reprice(org)

    # 200 uncached at $1, 1000 cached at $0.50, 300 out at $2.
    assert _cost(org, "d2u") == (OVERRIDDEN, "override")
    rollup = DailyRollup.objects.for_org(org).get(model="my-llama")
    assert (rollup.cost_usd, rollup.unpriced_requests) == (OVERRIDDEN, 0)


def test_a_removed_override_goes_back_to_the_catalog(org):
    override = _override(org)
    _events(org)
    assert _cost(org, "d1a") == (OVERRIDDEN, "override")
    override.delete()

    usage_reprice(org)

    assert _cost(org, "d1a") == (CATALOG, "catalog")
    assert _rollup_cost(org, date(2026, 11, 1)) == 2 * CATALOG


def test_the_reprice_command_prints_how_many_events_it_repriced(org):
    _events(org)
    _override(org)

    out = _call("reprice", org.slug, "--since", "2026-11-02")

    assert out == f"Re-priced 3 events of {org.slug} since 2026-11-02.\n"
    assert _cost(org, "d2a") == (OVERRIDDEN, "override")
    assert _cost(org, "d1a") == (CATALOG, "catalog")
    assert _call("reprice", org.slug) == f"Re-priced 5 events of {org.slug}.\n"
    assert _cost(org, "d1a") == (OVERRIDDEN, "override")


def test_the_reprice_command_refuses_an_unknown_org_or_a_bad_date(org):
    with pytest.raises(CommandError, match="No organization"):
        _call("reprice", "no-such-org")
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        _call("reprice", org.slug, "--since", "yesterday")


def test_the_task_reprices_from_the_moment_given(org):
    _events(org)
    _override(org)

    assert reprice.delay(org.pk, "2026-11-02T00:00:00+00:00").get() == 3

    assert _cost(org, "d2a") == (OVERRIDDEN, "override")
    assert _cost(org, "d1a") == (CATALOG, "catalog")
    assert reprice.delay(org.pk + 10_000, None).get() == 0


def _call(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()
