"""Every dashboard page: a member sees it (the events CSV is for admins:
``test_events_csv_access``), a stranger gets 404 as if the organization did not
exist, and someone signed out is sent to log in."""

import pytest

from apps.reporting.tests.dashboard_data import price, url, use, utc

pytestmark = pytest.mark.django_db

PAGES = [
    ("org_home", ()),
    ("customers", ()),
    ("customer_detail", ("acme",)),
    ("models", ()),
    ("properties", ()),
    ("events", ()),
    ("events_export", ()),
]


@pytest.fixture
def used(org):
    price(org)
    use(org, utc(2026, 10, 5, 12), customer="acme", properties={"feature": "chat"})
    return org


@pytest.mark.parametrize(("name", "args"), [page for page in PAGES if page[0] != "events_export"])
def test_a_member_sees_each_page(client, used, member, name, args):
    client.force_login(member)
    response = client.get(url(name, used, *args))
    assert response.status_code == 200, name


@pytest.mark.parametrize(("name", "args"), PAGES)
def test_a_member_of_another_org_gets_404(client, used, outsider, name, args):
    from apps.accounts.models import AuditEvent

    client.force_login(outsider)
    response = client.get(url(name, used, *args))
    assert response.status_code == 404, name
    assert not AuditEvent.objects.for_org(used).filter(action="usage.exported").exists()


@pytest.mark.parametrize(("name", "args"), PAGES)
def test_anonymous_is_sent_to_log_in(client, used, name, args):
    response = client.get(url(name, used, *args))
    assert response.status_code == 302, name
    assert response["Location"].startswith("/login/")


def test_org_home_keeps_its_url_name(used):
    assert url("org_home", used) == f"/app/{used.slug}/"
