import re
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

    assert "Retention days: 90 → 30" in html


def test_another_organizations_events_never_show(client, org, other_org, admin):
    _event(other_org, "token.created")
    client.force_login(admin)

    response = client.get(reverse("audit_log", args=[org.slug]))

    assert _rows(response) == []
    assert "Nothing has happened in this organization yet." in response.content.decode()


def test_the_action_filter_offers_each_action_once(client, org, admin):
    for day in (1, 2, 3):
        _event(org, "token.created", when=datetime(2026, 3, day, tzinfo=UTC))
    _event(org, "provider_key.created", when=datetime(2026, 3, 4, tzinfo=UTC))
    client.force_login(admin)

    html = client.get(reverse("audit_log", args=[org.slug])).content.decode()

    options = re.findall(r'<option value="([^"]*)"', html)
    assert options == ["", "provider_key.created", "token.created"]


def test_details_read_as_text_with_dashboard_dates_never_as_python(client, org, admin):
    _event(
        org,
        "token.created",
        when=datetime(2026, 3, 2, 9, 5, 7, tzinfo=UTC),
        details={"scopes": ["proxy", "read"], "expires_at": None},
    )
    _event(
        org,
        "usage.exported",
        when=datetime(2026, 3, 3, tzinfo=UTC),
        details={
            "filters": {
                "customer": "acme",
                "start": "2026-03-01T00:00:00+00:00",
                "properties": {"feature": "chat"},
            }
        },
    )
    _event(
        org,
        "organization.settings_changed",
        when=datetime(2026, 3, 4, tzinfo=UTC),
        details={"inject_openai_stream_usage": {"from": True, "to": False}, "day": "2026-03-01"},
    )
    client.force_login(admin)

    html = client.get(reverse("audit_log", args=[org.slug])).content.decode()

    assert "Scopes: proxy, read" in html
    assert "Expires at: none" in html
    # PostgreSQL's jsonb keeps keys in an order of its own: each part, in any order.
    filters = re.search(r"Filters: ([^<]*)<", html)[1].split("; ")
    assert sorted(filters) == [
        "customer acme",
        "properties feature chat",
        "start Mar 1, 2026 00:00 UTC",
    ]
    assert "Inject openai stream usage: yes → no" in html
    assert "Day: Mar 1, 2026" in html
    assert "Mar 2, 2026 09:05:07" in html
    for python in ("{&#x27;", "[&#x27;", "None", "True", "False"):
        assert python not in html
