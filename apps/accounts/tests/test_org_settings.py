import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent, Organization

pytestmark = pytest.mark.django_db


def test_an_admin_turns_include_usage_injection_off_and_it_is_audited(client, org, admin):
    client.force_login(admin)

    response = client.post(
        reverse("org_settings", args=[org.slug]), {"name": "Renamed", "time_zone": "UTC"}
    )

    assert response.status_code == 302
    org.refresh_from_db()
    assert (org.name, org.inject_openai_stream_usage) == ("Renamed", False)
    event = AuditEvent.objects.for_org(org).get(action="organization.settings_changed")
    assert event.details["inject_openai_stream_usage"] == {"from": True, "to": False}


def test_a_member_reads_settings_but_cannot_change_them(client, org, member):
    client.force_login(member)

    page = client.get(reverse("org_settings", args=[org.slug]))
    response = client.post(reverse("org_settings", args=[org.slug]), {"name": "Hijacked"})

    assert page.status_code == 200 and "Only admins" in page.content.decode()
    assert response.status_code == 403
    assert Organization.objects.get(pk=org.pk).name == org.name


def test_an_empty_name_is_refused_and_nothing_changes(client, org, admin):
    client.force_login(admin)

    response = client.post(
        reverse("org_settings", args=[org.slug]), {"name": "", "inject_openai_stream_usage": "on"}
    )

    assert response.status_code == 400
    assert response.context["organization"].name == org.name
    assert Organization.objects.get(pk=org.pk).name == org.name
    assert not AuditEvent.objects.for_org(org).exists()


def test_an_admin_sets_the_time_zone_and_an_unknown_one_is_refused(client, org, admin):
    client.force_login(admin)
    url = reverse("org_settings", args=[org.slug])

    refused = client.post(url, {"name": org.name, "time_zone": "Mars/Olympus"})
    accepted = client.post(url, {"name": org.name, "time_zone": "America/Los_Angeles"})

    assert refused.status_code == 400
    assert "Mars/Olympus" in refused.content.decode()
    assert accepted.status_code == 302
    assert Organization.objects.get(pk=org.pk).time_zone == "America/Los_Angeles"


def test_the_time_zone_is_a_searchable_text_box_suggesting_every_name(client, org, admin):
    import re
    import zoneinfo

    client.force_login(admin)

    page = client.get(reverse("org_settings", args=[org.slug])).content.decode()

    box = re.search(r'<input [^>]*name="time_zone"[^>]*>', page)[0]
    assert 'list="time-zone-names"' in box and 'value="UTC"' in box
    suggestions = re.search(r'<datalist id="time-zone-names">(.*?)</datalist>', page)[1]
    names = re.findall(r'<option value="([^"]+)">', suggestions)
    assert names == sorted(zoneinfo.available_timezones())
    assert '<select name="time_zone"' not in page
