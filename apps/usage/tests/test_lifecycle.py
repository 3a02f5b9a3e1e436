from datetime import UTC, date, datetime, timedelta

import pytest

from apps.accounts.models import AuditEvent, Organization
from apps.usage import lifecycle
from apps.usage.metering.events import refusals_record
from apps.usage.models import (
    DailyRollup,
    OrganizationDailyRollup,
    PropertyDailyRollup,
    RefusalCount,
    UsageEvent,
)
from apps.usage.tests.factories import store_usage

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 15, 30, tzinfo=UTC)


def _at(day: date, hour=12):
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC).isoformat()


ROLLUPS = (DailyRollup, OrganizationDailyRollup, PropertyDailyRollup)


def _stored_days(org):
    """Days with events, and days with rollups (the same days in every rollup, or a tuple that
    tells which rollup differs)."""
    events = {e.timestamp.date() for e in UsageEvent.objects.for_org(org)}
    per_model = [set(m.objects.for_org(org).values_list("day", flat=True)) for m in ROLLUPS]
    rollups = per_model[0] if all(days == per_model[0] for days in per_model) else per_model
    return events, rollups


def test_purge_deletes_whole_days_before_the_retention_and_keeps_the_rest(org, other_org):
    org.retention_days = 30
    org.save()
    first_kept = date(2026, 10, 24)  # 23 Nov minus 30 days
    for day in (first_kept - timedelta(days=1), first_kept, date(2026, 11, 23)):
        store_usage(org, timestamp=_at(day, hour=0), properties={"feature": "chat"})
        store_usage(org, timestamp=_at(day, hour=23))
    store_usage(other_org, timestamp=_at(date(2026, 1, 1)), properties={"feature": "chat"})

    result = lifecycle.usage_purge_expired(organization=org, now=NOW)

    # The expired day had one row in each of the three rollups.
    assert (result.events, result.rollups, result.done) == (2, 3, True)
    assert _stored_days(org) == ({first_kept, date(2026, 11, 23)},) * 2
    assert UsageEvent.objects.for_org(other_org).count() == 1
    assert [m.objects.for_org(other_org).count() for m in ROLLUPS] == [1, 1, 1]
    event = AuditEvent.objects.for_org(org).get(action="retention.purged")
    assert event.details == {
        "retention_days": 30,
        "events": 2,
        "rollups": 3,
        "refused_request_counts": 0,
    }


def test_a_second_purge_changes_nothing_and_records_nothing(org):
    store_usage(org, timestamp=_at(date(2026, 1, 1)))
    lifecycle.usage_purge_expired(organization=org, now=NOW)

    again = lifecycle.usage_purge_expired(organization=org, now=NOW)

    assert (again.events, again.rollups, again.refusals) == (0, 0, 0)
    assert AuditEvent.objects.for_org(org).filter(action="retention.purged").count() == 1


def test_refused_request_counts_expire_with_the_usage(org):
    refusals_record(
        [
            {"org_slug": org.slug, "day": "2026-01-01", "status": 401, "code": "x", "count": 3},
            {"org_slug": org.slug, "day": "2026-11-20", "status": 401, "code": "x", "count": 1},
        ]
    )

    lifecycle.usage_purge_expired(organization=org, now=NOW)

    assert list(RefusalCount.objects.for_org(org).values_list("day", flat=True)) == [
        date(2026, 11, 20)
    ]


def test_a_purge_cut_short_keeps_rollups_until_their_events_are_gone(org):
    for hour in range(5):
        store_usage(org, timestamp=_at(date(2026, 1, 1), hour=hour))

    partial = lifecycle.usage_purge_expired(organization=org, now=NOW, batch_size=2, max_batches=1)
    rest = lifecycle.usage_purge_expired(organization=org, now=NOW, batch_size=2, max_batches=5)

    assert (partial.events, partial.rollups, partial.done) == (2, 0, False)
    assert (rest.events, rest.rollups, rest.done) == (3, 2, True)
    assert _stored_days(org) == (set(), set())


def test_the_confirmation_counts_what_a_shorter_retention_would_delete(org):
    store_usage(org, timestamp=(datetime.now(UTC) - timedelta(days=20)).isoformat())
    store_usage(org, timestamp=(datetime.now(UTC) - timedelta(days=2)).isoformat())

    counts = lifecycle.usage_expired_counts(organization=org, retention_days=7)

    assert counts["events"] == 1
    assert Organization.objects.get(pk=org.pk).retention_days == 90  # only counted


def test_organization_data_delete_removes_every_row_of_that_organization_only(
    org, other_org, owner
):
    store_usage(org, properties={"feature": "chat"})
    store_usage(other_org, properties={"feature": "chat"})
    Organization.objects.filter(pk=org.pk).update(deletion_requested_at=NOW)

    assert (
        lifecycle.organization_data_delete(organization_id=org.pk, batch_size=1, max_batches=1)
        is False
    )
    assert lifecycle.organization_data_delete(organization_id=org.pk) is True

    assert not Organization.objects.filter(pk=org.pk).exists()
    assert UsageEvent.objects.unscoped(reason="test").filter(organization_id=org.pk).count() == 0
    assert UsageEvent.objects.for_org(other_org).count() == 1
    for model in ROLLUPS:
        assert model.objects.unscoped(reason="test").filter(organization_id=org.pk).count() == 0
        assert model.objects.for_org(other_org).count() == 1
    assert lifecycle.organization_data_delete(organization_id=org.pk) is True


def test_data_of_an_organization_not_marked_for_deletion_is_never_deleted(org):
    store_usage(org)

    assert lifecycle.organization_data_delete(organization_id=org.pk) is True
    assert UsageEvent.objects.for_org(org).count() == 1
