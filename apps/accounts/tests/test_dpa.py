import pytest
from django.urls import reverse

from apps.accounts import legal, services
from apps.accounts.models import AuditEvent, DpaAcceptance

pytestmark = pytest.mark.django_db


def _accept(client, org, version=None):
    return client.post(
        reverse("dpa_accept", args=[org.slug]),
        {"version": version or legal.CURRENT_DPA.version},
        REMOTE_ADDR="203.0.113.9",
    )


def test_an_admin_accepts_the_current_version_once_with_who_when_and_ip(client, org, admin):
    client.force_login(admin)

    first = _accept(client, org)
    second = _accept(client, org)

    assert first.status_code == second.status_code == 302
    acceptance = DpaAcceptance.objects.for_org(org).get()
    assert (acceptance.version, acceptance.accepted_by, acceptance.ip) == (
        legal.CURRENT_DPA.version,
        admin,
        "203.0.113.9",
    )
    event = AuditEvent.objects.for_org(org).get(action="dpa.accepted")
    assert acceptance.audit_event == event
    assert (event.actor, event.ip, event.details) == (
        admin,
        "203.0.113.9",
        {"version": legal.CURRENT_DPA.version},
    )
    page = client.get(reverse("org_settings", args=[org.slug])).content.decode()
    assert f"Version {legal.CURRENT_DPA.version} was accepted by {admin.email}" in page


def test_a_member_cannot_accept_and_nothing_is_recorded(client, org, member):
    client.force_login(member)

    response = _accept(client, org)

    assert response.status_code == 403
    assert not DpaAcceptance.objects.for_org(org).exists()
    assert not AuditEvent.objects.for_org(org).exists()


def test_accepting_a_version_that_is_no_longer_current_asks_to_read_again(client, org, admin):
    client.force_login(admin)

    response = _accept(client, org, version="0.9")

    assert response.status_code == 302
    assert not DpaAcceptance.objects.for_org(org).exists()


def test_a_new_version_asks_again_and_the_earlier_acceptance_stays(client, org, admin, monkeypatch):
    services.dpa_accept(organization=org, version=legal.CURRENT_DPA.version, actor=admin)
    newer = legal.DpaVersion("2.0", legal.CURRENT_DPA.published, legal.CURRENT_DPA.template)
    monkeypatch.setattr(legal, "DPA_VERSIONS", (*legal.DPA_VERSIONS, newer))
    monkeypatch.setattr(legal, "CURRENT_DPA", newer)
    client.force_login(admin)

    page = client.get(reverse("org_settings", args=[org.slug])).content.decode()
    _accept(client, org, version="2.0")

    assert "has a new version, 2.0" in page and "Accept DPA version 2.0" in page
    assert set(DpaAcceptance.objects.for_org(org).values_list("version", flat=True)) == {
        "1.0",
        "2.0",
    }


def test_acceptance_is_per_organization(client, org, other_org, admin):
    services.dpa_accept(organization=org, version=legal.CURRENT_DPA.version, actor=admin)

    assert not DpaAcceptance.objects.for_org(other_org).exists()
