"""Nothing of one organization's Stripe data reaches another; key rotation includes the Stripe
key."""

import base64
import os
from datetime import date
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.urls import reverse

from apps.accounts.tests.factories import MembershipFactory
from apps.billing import selectors, services, sync
from apps.billing.models import CustomerMapping, StripeConnection, StripeCustomer, SyncStatus
from apps.billing.tests.factories import build_account
from apps.keys import vault
from apps.keys.keyring import open_secret
from apps.usage.models import Customer

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_shops(org, other_org, fake_stripe, settings, django_capture_on_commit_callbacks):
    """``org`` and ``other_org``, each connected to its own Stripe account and synced."""
    settings.STRIPE_PAGE_SIZE = 3
    mine = fake_stripe.account("acct_1MineMineMine00001")
    mine.named = build_account(mine)
    theirs = fake_stripe.account("acct_1TheirsTheirs0001")
    secret_customer = theirs.customer(
        email="secret-customer@theirs.example", name="Their Secret Customer", id="cus_TheirOnly01"
    )
    theirs.charge(secret_customer, 777700, fee=22583)
    for organization in (org, other_org):
        Customer.objects.create(organization=organization, external_id="alice")
    Customer.objects.create(organization=other_org, external_id="cus_TheirOnly01")
    with django_capture_on_commit_callbacks(execute=True):
        services.stripe_connect(organization=org, key=fake_stripe.restricted_key(mine), actor=None)
        services.stripe_connect(
            organization=other_org, key=fake_stripe.restricted_key(theirs), actor=None
        )
    return mine, theirs


def test_one_orgs_pages_never_show_anothers_stripe_data(client, two_shops, org, admin):
    client.force_login(admin)

    pages = [
        client.get(reverse(name, args=[org.slug]), query)
        for name, query in (
            ("stripe_settings", {}),
            ("stripe_customers", {}),
            ("stripe_customers", {"show": "all"}),
        )
    ]

    assert all(page.status_code == 200 for page in pages)
    text = "".join(page.content.decode() for page in pages)
    assert "acct_1MineMineMine00001" in text
    for theirs in ("acct_1TheirsTheirs0001", "cus_TheirOnly01", "secret-customer@theirs"):
        assert theirs not in text


def test_another_orgs_stripe_customer_is_404_inside_ones_own_org(
    client, two_shops, org, other_org, admin
):
    their_row = StripeCustomer.objects.for_org(other_org).get(stripe_id="cus_TheirOnly01")
    client.force_login(admin)

    response = client.post(
        reverse("stripe_customer_map", args=[org.slug, their_row.pk]), {"external_id": "alice"}
    )

    assert response.status_code == 404
    their_row.refresh_from_db()
    assert their_row.customer.external_id == "cus_TheirOnly01"
    assert not CustomerMapping.objects.for_org(org).exists()
    assert not CustomerMapping.objects.for_org(other_org).exists()


def test_a_mapping_cannot_name_another_orgs_customer(two_shops, org, other_org, admin):
    mine = StripeCustomer.objects.for_org(org).first()
    theirs = Customer.objects.for_org(other_org).get(external_id="alice")

    with pytest.raises(services.BillingError):
        services.customer_mapping_set(stripe_customer=mine, customer=theirs, actor=admin)

    assert not CustomerMapping.objects.for_org(org).exists()


def test_revenue_and_syncs_stay_inside_their_org(two_shops, org, other_org):
    before = sorted(
        StripeCustomer.objects.for_org(other_org).values_list("stripe_id", "customer_id")
    )

    sync.stripe_sync(organization_id=org.pk)
    mine = selectors.revenue_by_customer(
        organization=org, start=date(2026, 1, 1), end=date(2027, 1, 1)
    )
    theirs = selectors.revenue_by_customer(
        organization=other_org, start=date(2026, 1, 1), end=date(2027, 1, 1)
    )

    assert (
        sorted(StripeCustomer.objects.for_org(other_org).values_list("stripe_id", "customer_id"))
        == before
    )
    their_customer = Customer.objects.for_org(other_org).get(external_id="cus_TheirOnly01")
    # 7777.00 charged, fee 225.83
    assert [r.net for r in theirs[their_customer.pk]] == [Decimal("7551.17")]
    assert their_customer.pk not in mine
    my_customer_ids = set(Customer.objects.for_org(org).values_list("pk", flat=True))
    assert set(mine) <= my_customer_ids


def _entry(key_id):
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


def test_rotation_rewraps_the_stripe_key_and_syncs_still_work(
    settings, org, fake_stripe, stripe_account, stripe_key, django_capture_on_commit_callbacks
):
    old, new = _entry("k1"), _entry("k2")
    settings.COSTR_ENCRYPTION_KEYS = old
    services.stripe_connect(organization=org, key=stripe_key, actor=None)
    settings.COSTR_ENCRYPTION_KEYS = f"{new},{old}"

    call_command("rotate_encryption_keys")

    connection = StripeConnection.objects.for_org(org).get()
    assert connection.kek_id == "k2"
    assert vault.blob_key_id(bytes(connection.ciphertext)) == "k2"
    settings.COSTR_ENCRYPTION_KEYS = new  # the old key has left the keyring
    assert (
        open_secret(ciphertext=bytes(connection.ciphertext), context=connection.vault_context())
        == stripe_key
    )
    assert sync.stripe_sync(organization_id=org.pk).status == SyncStatus.OK


def test_a_ciphertext_moved_to_another_org_does_not_decrypt(two_shops, org, other_org):
    mine = StripeConnection.objects.for_org(org).get()
    theirs = StripeConnection.objects.for_org(other_org).get()
    StripeConnection.objects.for_org(other_org).update(ciphertext=bytes(mine.ciphertext))

    result = sync.stripe_sync(organization_id=other_org.pk)

    assert result.status == SyncStatus.FAILED
    theirs.refresh_from_db()
    assert theirs.sync_status == SyncStatus.FAILED


def test_an_outsider_is_404_on_every_stripe_page(client, two_shops, org, outsider):
    MembershipFactory(organization=org)  # a bystander member, so the org has people
    client.force_login(outsider)
    row = StripeCustomer.objects.for_org(org).first()

    for url in (
        reverse("stripe_settings", args=[org.slug]),
        reverse("stripe_customers", args=[org.slug]),
        reverse("stripe_disconnect", args=[org.slug]),
    ):
        assert client.get(url).status_code == 404
    for url in (
        reverse("stripe_sync", args=[org.slug]),
        reverse("stripe_disconnect", args=[org.slug]),
        reverse("stripe_customer_map", args=[org.slug, row.pk]),
    ):
        assert client.post(url).status_code == 404
    assert StripeConnection.objects.for_org(org).exists()
