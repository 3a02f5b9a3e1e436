"""Who may export the events explorer's CSV: admins and owners, as for the full export. A member
gets 403 and no export link; another organization's member 404; someone signed out is sent to
log in. A refused export is not audited and hands over no row."""

import pytest

from apps.accounts.models import AuditEvent
from apps.reporting.tests.dashboard_data import price, url, use, utc

pytestmark = pytest.mark.django_db

EXPORT_LINK = b'id="export-csv"'


@pytest.fixture
def used(org):
    price(org)
    use(org, utc(2026, 10, 5, 12), customer="acme-secret-customer")
    return org


def _exports(org) -> int:
    return AuditEvent.objects.for_org(org).filter(action="usage.exported").count()


@pytest.mark.parametrize("role", ["admin", "owner"])
def test_admins_and_owners_export_the_csv_and_see_its_link(client, used, request, role):
    client.force_login(request.getfixturevalue(role))
    page = client.get(url("events", used))
    assert EXPORT_LINK in page.content

    response = client.get(url("events_export", used))
    assert response.status_code == 200
    assert b"acme-secret-customer" in b"".join(response.streaming_content)
    assert _exports(used) == 1


def test_a_member_gets_403_and_no_link(client, used, member):
    client.force_login(member)
    page = client.get(url("events", used))
    assert page.status_code == 200
    assert b"acme-secret-customer" in page.content  # the explorer itself stays open to members
    assert EXPORT_LINK not in page.content

    response = client.get(url("events_export", used))
    assert response.status_code == 403
    assert b"acme-secret-customer" not in response.content
    assert _exports(used) == 0


def test_a_member_of_another_org_gets_404(client, used, outsider):
    client.force_login(outsider)
    response = client.get(url("events_export", used))
    assert response.status_code == 404
    assert _exports(used) == 0


def test_anonymous_is_sent_to_log_in(client, used):
    response = client.get(url("events_export", used))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert _exports(used) == 0
