"""Connecting, refusing, disconnecting: the settings page and `connectstripe`."""

import io
import sys

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.billing import services, sync
from apps.billing.models import (
    CustomerMapping,
    RevenueMonth,
    StripeBalanceTransaction,
    StripeConnection,
    StripeCustomer,
    SyncStatus,
)
from apps.keys.keyring import open_secret
from tests.fakes.stripe import READ_ALL

pytestmark = pytest.mark.django_db

SECRET_KEY_LOOKALIKE = "sk_live_51FakeSecretKq7ZrT2mVx9LpW4nB8cY3dH6fJ1sG5aQ0eU"


def post_key(client, org, key, **extra):
    data = {"key": key, "metadata_field": "costr_customer_id", **extra}
    return client.post(reverse("stripe_settings", args=[org.slug]), data)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (SECRET_KEY_LOOKALIKE, "This is a secret key"),
        ("sk_test_51FakeSecretKq7ZrT2mVx9LpW4nB8cY3dH6fJ1sG5aQ0eU", "This is a secret key"),
        ("pk_live_51FakePublishKq7ZrT2mVx9LpW4nB8cY3dH6fJ1sG5", "publishable key"),
        ("rk_live_short", "incomplete"),
        ("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789", "not a Stripe restricted key"),
    ],
)
def test_anything_but_a_restricted_key_is_refused_before_stripe_is_asked(
    client, org, admin, fake_stripe, key, message
):
    client.force_login(admin)

    response = post_key(client, org, key)

    page = response.content.decode()
    assert response.status_code == 400
    assert message in page
    assert "Create restricted key" in page and "Balance" in page and "Invoices" in page
    assert key not in page
    assert not StripeConnection.objects.for_org(org).exists()
    assert fake_stripe.requests == []


def test_connecting_checks_each_resource_with_one_read_and_stores_the_key_sealed(
    client, org, admin, fake_stripe, stripe_account, stripe_key, django_capture_on_commit_callbacks
):
    client.force_login(admin)

    with django_capture_on_commit_callbacks(execute=True):
        response = post_key(client, org, stripe_key)

    assert response.status_code == 302
    connection = StripeConnection.objects.for_org(org).get()
    assert connection.masked == f"rk_test_…{stripe_key[-4:]}"
    assert stripe_key.encode() not in bytes(connection.ciphertext)
    opened = open_secret(
        ciphertext=bytes(connection.ciphertext), context=connection.vault_context()
    )
    assert opened == stripe_key
    assert connection.vault_context().purpose == "stripe"
    assert connection.account_id == "acct_1AcmeRevenue00001"
    assert connection.account_name == "Acme Revenue"
    assert connection.missing_permissions == {}
    checks = fake_stripe.requests[:6]
    assert [(r["method"], r["path"]) for r in checks] == [
        ("GET", "/v1/customers"),
        ("GET", "/v1/charges"),
        ("GET", "/v1/disputes"),
        ("GET", "/v1/balance_transactions"),
        ("GET", "/v1/invoices"),
        ("GET", "/v1/account"),
    ]
    assert all(dict(r["query"]).get("limit") == "1" for r in checks[:5])
    assert fake_stripe.writes() == []
    assert connection.sync_status == SyncStatus.OK  # the first sync ran on commit
    event = AuditEvent.objects.for_org(org).get(action="stripe.connected")
    assert event.actor == admin and event.target == connection.masked
    page = client.get(response["Location"]).content.decode()
    assert "Acme Revenue" in page and "Up to date" in page


def test_missing_permissions_are_named_on_the_page(client, org, admin, fake_stripe, stripe_account):
    key = fake_stripe.restricted_key(
        stripe_account, permissions=READ_ALL - {"rak_charge_read", "rak_invoice_read"}
    )
    client.force_login(admin)

    response = post_key(client, org, key)

    connection = StripeConnection.objects.for_org(org).get()
    # Balance transactions are read with their charges expanded: they need charges too.
    assert connection.missing_permissions == {
        "charges": "rak_charge_read",
        "balance_transactions": "rak_charge_read",
        "invoices": "rak_invoice_read",
    }
    page = client.get(response["Location"]).content.decode()
    assert "rak_charge_read" in page and "Charges: Read" in page
    assert "rak_invoice_read" in page and "Invoices: Read" in page
    assert "missing permissions" in page  # the flash message
    event = AuditEvent.objects.for_org(org).get(action="stripe.connected")
    assert event.details["missing_permissions"] == ["rak_charge_read", "rak_invoice_read"]
    assert fake_stripe.writes() == []


def test_a_key_stripe_rejects_is_not_stored(client, org, admin, fake_stripe):
    client.force_login(admin)
    unknown = "rk_test_51UnknownToStripeKq7ZrT2mVx9LpW4nB8cY3dH6"

    response = post_key(client, org, unknown)

    assert response.status_code == 400
    assert "Stripe did not accept this key" in response.content.decode()
    assert unknown[-12:] not in response.content.decode()
    assert not StripeConnection.objects.for_org(org).exists()


def test_a_member_reads_the_page_but_cannot_connect(client, org, member, stripe_key, fake_stripe):
    client.force_login(member)

    page = client.get(reverse("stripe_settings", args=[org.slug]))
    refused = post_key(client, org, stripe_key)

    assert page.status_code == 200 and "Only admins and owners" in page.content.decode()
    assert refused.status_code == 403
    assert not StripeConnection.objects.for_org(org).exists()
    assert fake_stripe.requests == []


def test_a_member_cannot_sync_or_disconnect(client, connected, org, member, fake_stripe):
    client.force_login(member)
    fake_stripe.reset_requests()

    assert client.post(reverse("stripe_sync", args=[org.slug])).status_code == 403
    assert client.get(reverse("stripe_disconnect", args=[org.slug])).status_code == 403
    assert client.post(reverse("stripe_disconnect", args=[org.slug])).status_code == 403
    assert StripeConnection.objects.for_org(org).exists()
    assert not AuditEvent.objects.for_org(org).filter(action="stripe.sync_requested").exists()
    assert fake_stripe.requests == []


def test_sync_now_queues_a_sync_and_says_so(
    client, connected, org, admin, stripe_account, django_capture_on_commit_callbacks
):
    stripe_account.charge(stripe_account.named["bob"], 900, fee=56, created=1772000000)
    client.force_login(admin)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("stripe_sync", args=[org.slug]))

    assert response.status_code == 302
    event = AuditEvent.objects.for_org(org).get(action="stripe.sync_requested")
    assert event.actor == admin
    assert StripeBalanceTransaction.objects.for_org(org).filter(amount=900).exists()


def test_the_page_shows_progress_while_a_sync_runs(client, connected, org, member):
    StripeConnection.objects.for_org(org).update(
        sync_status=SyncStatus.RUNNING,
        sync_progress={"stage": "balance_transactions", "pages": 4, "objects": 310},
    )
    client.force_login(member)

    page = client.get(reverse("stripe_settings", args=[org.slug])).content.decode()

    assert '<meta http-equiv="refresh" content="5">' in page
    assert "balance_transactions: 4 page(s), 310 object(s)" in page


def test_disconnect_asks_first_then_deletes_key_and_copies(
    client, connected, org, admin, stripe_account, costr_customers
):
    carol = StripeCustomer.objects.for_org(org).get(stripe_id=stripe_account.named["carol"]["id"])
    services.customer_mapping_set(
        stripe_customer=carol, customer=costr_customers["zed"], actor=admin
    )
    client.force_login(admin)
    url = reverse("stripe_disconnect", args=[org.slug])

    confirm = client.get(url)
    assert confirm.status_code == 200 and "cannot be recovered" in confirm.content.decode()
    assert StripeConnection.objects.for_org(org).exists()

    response = client.post(url)

    assert response.status_code == 302
    assert not StripeConnection.objects.for_org(org).exists()
    assert not StripeCustomer.objects.for_org(org).exists()
    assert not RevenueMonth.objects.for_org(org).exists()
    assert CustomerMapping.objects.for_org(org).count() == 1  # kept for a reconnect
    costr_customers["alice"].refresh_from_db()
    assert costr_customers["alice"].stripe_customer_id == ""
    event = AuditEvent.objects.for_org(org).get(action="stripe.disconnected")
    assert event.actor == admin and event.target == connected.masked


def test_the_mapping_page_lists_unmapped_customers_and_maps_by_hand(
    client, connected, org, admin, stripe_account, costr_customers
):
    client.force_login(admin)
    url = reverse("stripe_customers", args=[org.slug])
    carol_id = stripe_account.named["carol"]["id"]

    page = client.get(url).content.decode()
    assert carol_id in page and stripe_account.named["alice"]["id"] not in page
    assert '<option value="zed">' in page

    carol = StripeCustomer.objects.for_org(org).get(stripe_id=carol_id)
    unknown = client.post(
        reverse("stripe_customer_map", args=[org.slug, carol.pk]), {"external_id": "nobody"}
    )
    carol.refresh_from_db()
    assert unknown.status_code == 302 and carol.customer_id is None

    client.post(reverse("stripe_customer_map", args=[org.slug, carol.pk]), {"external_id": "zed"})

    carol.refresh_from_db()
    assert carol.customer == costr_customers["zed"]
    assert AuditEvent.objects.for_org(org).get(action="stripe.mapping_set").target == (
        f"{carol_id} → zed"
    )
    assert f"<code>{carol_id}</code>" not in client.get(url).content.decode()
    assert f"<code>{carol_id}</code>" in client.get(url, {"show": "all"}).content.decode()


def test_a_second_key_is_refused_while_connected(client, connected, org, admin, stripe_account):
    with pytest.raises(services.BillingError, match="already connected"):
        services.stripe_connect(organization=org, key="rk_test_" + "A" * 40, actor=admin)


def _connect_by_command(monkeypatch, org, key) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(key + "\n"))
    out = io.StringIO()
    call_command("connectstripe", org.slug, "--key-stdin", stdout=out)
    return out.getvalue()


def test_connectstripe_stores_the_key_and_names_missing_permissions(
    org, fake_stripe, stripe_account, monkeypatch
):
    key = fake_stripe.restricted_key(stripe_account, permissions=READ_ALL - {"rak_invoice_read"})

    output = _connect_by_command(monkeypatch, org, key)

    assert f"rk_test_…{key[-4:]}" in output
    assert "Missing permission for Invoices: rak_invoice_read" in output
    assert key[8:] not in output
    assert StripeConnection.objects.for_org(org).exists()
    assert fake_stripe.writes() == []


def test_connectstripe_refuses_a_secret_key(org, fake_stripe, monkeypatch):
    with pytest.raises(CommandError, match="secret key") as refusal:
        _connect_by_command(monkeypatch, org, SECRET_KEY_LOOKALIKE)

    assert SECRET_KEY_LOOKALIKE[8:] not in str(refusal.value)
    assert not StripeConnection.objects.for_org(org).exists()
    assert fake_stripe.requests == []


def test_the_pages_query_counts_do_not_grow_with_customers(
    client, connected, org, admin, stripe_account
):
    client.force_login(admin)
    urls = [
        reverse("stripe_settings", args=[org.slug]),
        reverse("stripe_customers", args=[org.slug]),
        reverse("stripe_customers", args=[org.slug]) + "?show=all",
    ]
    counts = {url: [] for url in urls}
    for _ in range(2):
        for url in urls:
            with CaptureQueriesContext(connection) as queries:
                assert client.get(url).status_code == 200
            counts[url].append(len(queries))
        for i in range(20):
            stripe_account.customer(email=f"more{i}@example.com")
        sync.stripe_sync(organization_id=org.pk)

    assert all(first == second for first, second in counts.values()), counts


def test_sync_now_is_refused_while_a_sync_runs_but_not_after_one_died(
    client, connected, org, admin
):
    from datetime import timedelta

    from django.utils import timezone

    client.force_login(admin)
    url = reverse("stripe_sync", args=[org.slug])
    StripeConnection.objects.for_org(org).update(
        sync_status=SyncStatus.RUNNING, sync_started_at=timezone.now()
    )

    client.post(url)
    assert not AuditEvent.objects.for_org(org).filter(action="stripe.sync_requested").exists()

    StripeConnection.objects.for_org(org).update(
        sync_started_at=timezone.now() - timedelta(hours=1)
    )
    client.post(url)
    assert AuditEvent.objects.for_org(org).filter(action="stripe.sync_requested").count() == 1
