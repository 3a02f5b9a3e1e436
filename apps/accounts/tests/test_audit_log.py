from datetime import UTC, datetime

import pytest
from django.urls import reverse

from apps.accounts import services
from apps.accounts.models import AuditEvent

pytestmark = pytest.mark.django_db


def _event(org, action, *, actor=None, when=None, details=None):
    event = services.audit_event_record(
        organization=org, actor=actor, action=action, target="t", details=details
    )
    if when is not None:
        AuditEvent.objects.for_org(org).filter(pk=event.pk).update(created_at=when)
    return event


def _rows(response):
    return [e.pk for e in response.context["page"].object_list]


def test_admins_see_the_log_newest_first_and_members_do_not(client, org, admin, member):
    old = _event(org, "token.created", actor=admin, when=datetime(2026, 1, 1, tzinfo=UTC))
    new = _event(org, "token.revoked", actor=admin, when=datetime(2026, 2, 1, tzinfo=UTC))

    client.force_login(admin)
    response = client.get(reverse("audit_log", args=[org.slug]))
    client.force_login(member)
    refused = client.get(reverse("audit_log", args=[org.slug]))

    assert _rows(response) == [new.pk, old.pk]
    assert refused.status_code == 403


def test_filters_by_action_person_and_utc_day(client, org, admin, owner):
    keep = _event(org, "token.created", actor=owner, when=datetime(2026, 3, 2, 23, 59, tzinfo=UTC))
    _event(org, "token.created", actor=admin, when=datetime(2026, 3, 2, 12, tzinfo=UTC))
    _event(org, "token.revoked", actor=owner, when=datetime(2026, 3, 2, 12, tzinfo=UTC))
    _event(org, "token.created", actor=owner, when=datetime(2026, 3, 3, 0, 0, tzinfo=UTC))
    client.force_login(admin)

    response = client.get(
        reverse("audit_log", args=[org.slug]),
        {
            "action": "token.created",
            "actor": owner.email.upper(),
            "start": "2026-03-02",
            "end": "2026-03-02",
        },
    )

    assert _rows(response) == [keep.pk]


def test_a_start_after_the_end_says_so_and_shows_everything(client, org, admin):
    event = _event(org, "token.created", actor=admin)
    client.force_login(admin)

    response = client.get(
        reverse("audit_log", args=[org.slug]), {"start": "2026-03-05", "end": "2026-03-01"}
    )

    assert "The start date is after the end date." in response.content.decode()
    assert _rows(response) == [event.pk]


def test_pages_of_fifty_keep_the_filters(client, org, admin):
    for _ in range(51):
        _event(org, "provider_key.created", actor=admin)
    _event(org, "token.created", actor=admin)
    client.force_login(admin)

    first = client.get(reverse("audit_log", args=[org.slug]), {"action": "provider_key.created"})
    second = client.get(
        reverse("audit_log", args=[org.slug]), {"action": "provider_key.created", "page": 2}
    )

    assert len(_rows(first)) == 50 and len(_rows(second)) == 1
    assert "action=provider_key.created&amp;page=2" in first.content.decode()


def test_changes_read_as_old_and_new_values(client, org, admin):
    _event(
        org,
        "organization.settings_changed",
        actor=admin,
        details={"retention_days": {"from": 90, "to": 30}},
    )
    client.force_login(admin)

    html = client.get(reverse("audit_log", args=[org.slug])).content.decode()

    assert "retention_days: 90 → 30" in html


def test_another_organizations_events_never_show(client, org, other_org, admin):
    _event(other_org, "token.created")
    client.force_login(admin)

    response = client.get(reverse("audit_log", args=[org.slug]))

    assert _rows(response) == []
    assert "Nothing has happened in this organization yet." in response.content.decode()
