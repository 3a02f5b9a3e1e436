"""``manage.py rebuild_rollups``: rollups of events stored before the rollups existed (or lost)
come back exactly as the writer would have written them."""

from datetime import UTC, datetime
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.usage.metering.events import usage_events_write
from apps.usage.models import DailyRollup, OrganizationDailyRollup, PropertyDailyRollup
from apps.usage.tests.test_rollups_by_model_and_property import rollup_rows
from apps.usage.tests.test_writer import _record

pytestmark = pytest.mark.django_db

ROLLUPS = (DailyRollup, OrganizationDailyRollup, PropertyDailyRollup)


def _write(org, prefix):
    usage_events_write(
        [
            _record(org, f"{prefix}1", latency_ms=30),
            _record(org, f"{prefix}2", customer=None, properties={"feature": "search"}),
            _record(org, f"{prefix}3", model="ft:unknown", status=500, latency_ms=5000),
            _record(
                org,
                f"{prefix}4",
                timestamp=datetime(2026, 11, 5, 23, tzinfo=UTC).isoformat(),
                properties={"env": "prod"},
            ),
        ]
    )


def test_every_rollup_is_rebuilt_as_the_writer_wrote_it(org, other_org):
    _write(org, "a")
    _write(other_org, "b")
    written = {model: rollup_rows(model, org) for model in ROLLUPS}
    others = {model: rollup_rows(model, other_org) for model in ROLLUPS}
    for model in ROLLUPS:
        model.objects.for_org(org).delete()
    # A stale row on a day in between, with no events: rebuilt away.
    DailyRollup.objects.create(organization=org, day="2026-11-03", provider="openai", requests=9)

    out = StringIO()
    call_command("rebuild_rollups", org.slug, stdout=out)

    assert {model: rollup_rows(model, org) for model in ROLLUPS} == written
    assert {model: rollup_rows(model, other_org) for model in ROLLUPS} == others
    assert f"{org.slug}: 4 days rebuilt" in out.getvalue()  # 2 to 5 November


def test_since_rebuilds_only_the_days_from_then_and_no_org_means_all(org, other_org):
    _write(org, "a")
    _write(other_org, "b")
    for model in ROLLUPS:
        model.objects.unscoped(reason="test").all().delete()

    call_command("rebuild_rollups", "--since", "2026-11-04", stdout=StringIO())

    for each in (org, other_org):
        assert list(DailyRollup.objects.for_org(each).values_list("day", "requests")) == [
            (datetime(2026, 11, 5).date(), 1)
        ]
        assert OrganizationDailyRollup.objects.for_org(each).get().requests == 1
        assert PropertyDailyRollup.objects.for_org(each).get().name == "env"


def test_a_bad_date_or_organization_is_an_error(org):
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        call_command("rebuild_rollups", org.slug, "--since", "yesterday")
    with pytest.raises(CommandError, match="No organization"):
        call_command("rebuild_rollups", "nobody")
