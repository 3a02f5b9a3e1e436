"""The demo organization's Stripe connection (``manage.py costr_demo``) has no account behind it:
the hourly sync and "Sync now" leave it alone instead of failing on its placeholder key."""

from datetime import UTC, datetime

import pytest
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.billing import services, tasks
from apps.billing.models import StripeConnection, SyncStatus
from apps.demo.revenue import demo_revenue_create

END = datetime(2026, 3, 18, 15, 30, tzinfo=UTC)


def _demo_connection(organization) -> StripeConnection:
    demo_revenue_create(organization=organization, end=END, days=30)
    return StripeConnection.objects.for_org(organization).get()


def test_the_hourly_sync_syncs_real_connections_and_leaves_the_demo_alone(
    org, admin, other_org, fake_stripe, django_capture_on_commit_callbacks
):
    account = fake_stripe.account("acct_1RealRevenue000001", name="Real Revenue")
    with django_capture_on_commit_callbacks(execute=True):
        connected = services.stripe_connect(
            organization=org, key=fake_stripe.restricted_key(account), actor=admin
        )
    demo_connection = _demo_connection(other_org)

    assert tasks.stripe_sync_all.delay().get() == 1  # the real one only

    demo_connection.refresh_from_db()
    assert (demo_connection.sync_status, demo_connection.last_error) == (SyncStatus.OK, "")
    assert demo_connection.last_success_at == END
    connected.refresh_from_db()
    assert connected.sync_status == SyncStatus.OK


def test_sync_now_on_the_demo_says_there_is_nothing_to_sync(client, org, admin):
    connection = _demo_connection(org)
    client.force_login(admin)

    response = client.post(reverse("stripe_sync", args=[org.slug]))

    assert response.status_code == 302
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "The demo's Stripe data is made up: there is nothing to sync."
    ]
    connection.refresh_from_db()
    assert (connection.sync_status, connection.last_error) == (SyncStatus.OK, "")
    page = client.get(response["Location"]).content.decode()
    assert 'id="demo-connection"' in page
    assert "Sync now" not in page


def test_syncstripe_on_the_demo_says_there_is_nothing_to_sync(org):
    connection = _demo_connection(org)

    with pytest.raises(CommandError, match="demo: its Stripe data is made up"):
        call_command("syncstripe", org.slug)

    connection.refresh_from_db()
    assert (connection.sync_status, connection.last_error) == (SyncStatus.OK, "")
