"""The sync against the fake Stripe: pages, refunds, disputes, two currencies, re-runs, 429s,
missing permissions, mapping."""

import io

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.billing import services, sync, tasks
from apps.billing.models import (
    MappedBy,
    RevenueMonth,
    RevenueSource,
    StripeBalanceTransaction,
    StripeCharge,
    StripeConnection,
    StripeCustomer,
    StripeInvoice,
    SyncStatus,
)
from apps.billing.tests.factories import (
    EXPECTED_MONTHS,
    EXPECTED_TRANSACTIONS,
    FEB,
    JAN,
    at,
)
from tests.fakes.stripe import READ_ALL

pytestmark = pytest.mark.django_db

MIRROR = (StripeCustomer, StripeCharge, StripeBalanceTransaction, StripeInvoice, RevenueMonth)


def snapshot(org):
    return {
        model.__name__: sorted(map(repr, model.objects.for_org(org).values_list()))
        for model in MIRROR
    }


def revenue_rows(org, account):
    name_of = {c["id"]: name for name, c in account.named.items()}
    name_of[""] = ""
    return {
        (name_of[r.stripe_customer_id], r.month, r.currency): (
            r.gross,
            r.fees,
            r.net,
            r.refunds,
            r.disputes,
            r.transactions,
        )
        for r in RevenueMonth.objects.for_org(org).filter(source=RevenueSource.BALANCE)
    }


def test_first_sync_walks_every_page_and_builds_revenue(
    connected, org, stripe_account, fake_stripe
):
    assert connected.sync_status == SyncStatus.OK
    assert connected.last_error == ""
    assert StripeCustomer.objects.for_org(org).count() == 7
    assert StripeBalanceTransaction.objects.for_org(org).count() == EXPECTED_TRANSACTIONS
    assert revenue_rows(org, stripe_account) == EXPECTED_MONTHS
    # 14 balance transactions at 3 a page: 5 pages, each after the last id of the one before.
    walks = [r for r in fake_stripe.requests if r["path"] == "/v1/balance_transactions"]
    pages = [dict(r["query"]) for r in walks if dict(r["query"]).get("limit") == "3"]
    assert len(pages) == 5
    assert "starting_after" not in pages[0]
    assert all(p["starting_after"].startswith("txn_") for p in pages[1:])
    assert all(p["expand[0]"] == "data.source" for p in pages)
    assert fake_stripe.writes() == []


def test_refunds_disputes_and_the_zero_decimal_currency_are_stored_as_stripe_sent_them(
    connected, org, stripe_account
):
    rows = StripeBalanceTransaction.objects.for_org(org)
    alice, dave = stripe_account.named["alice"]["id"], stripe_account.named["dave"]["id"]
    refund = rows.get(type="refund", currency="usd")
    assert (refund.amount, refund.fee, refund.net, refund.stripe_customer_id) == (
        -2500,
        0,
        -2500,
        alice,
    )
    disputes = rows.filter(type="adjustment").order_by("created")
    assert [(d.amount, d.fee, d.reporting_category) for d in disputes] == [
        (-3000, 1500, "dispute"),
        (3000, 0, "dispute_reversal"),
        (-2000, 1500, "dispute"),
    ]
    assert all(d.stripe_customer_id for d in disputes)
    yen = rows.filter(currency="jpy", stripe_customer_id=dave).order_by("created")
    assert [(t.amount, t.net) for t in yen] == [(5000, 4820), (3000, 2892), (-1000, -1000)]
    assert not rows.filter(type="payout").exists()


def test_a_re_run_changes_nothing(connected, org, fake_stripe):
    before = snapshot(org)

    result = sync.stripe_sync(organization_id=org.pk)

    assert result.status == SyncStatus.OK
    assert sum(result.created.values()) == 0 and sum(result.updated.values()) == 0
    assert result.revenue_rows_changed == 0 and result.mappings_changed == 0
    assert snapshot(org) == before
    assert fake_stripe.writes() == []


def test_the_next_sync_reads_only_from_the_checkpoint_and_adds_new_revenue(
    connected, org, stripe_account, fake_stripe, settings
):
    checkpoint = connected.checkpoints["balance_transactions"]
    assert checkpoint == at(FEB, 4)  # the newest balance transaction: dave's refund
    alice = stripe_account.named["alice"]
    stripe_account.charge(alice, 4000, fee=146, created=at(FEB, 10))
    fake_stripe.reset_requests()

    sync.stripe_sync(organization_id=org.pk)

    walks = [dict(r["query"]) for r in fake_stripe.requests if r["path"].endswith("transactions")]
    window = settings.STRIPE_SYNC_SAFETY_WINDOW_SECONDS
    assert walks[-1]["created[gte]"] == str(checkpoint - window)
    feb = RevenueMonth.objects.for_org(org).get(
        stripe_customer_id=alice["id"], month="2026-02-01", currency="usd"
    )
    assert (feb.gross, feb.fees, feb.net, feb.transactions) == (9000, 321, 8679, 2)
    connection = StripeConnection.objects.for_org(org).get()
    assert connection.checkpoints["balance_transactions"] == at(FEB, 10)


def test_a_customer_deleted_in_stripe_is_marked_by_the_next_full_walk(
    connected, org, stripe_account, settings
):
    stripe_account.delete_customer(stripe_account.named["erin"]["id"])
    settings.STRIPE_FULL_CUSTOMER_SYNC_HOURS = 0  # every walk is a full one

    sync.stripe_sync(organization_id=org.pk)

    deleted = StripeCustomer.objects.for_org(org).filter(deleted=True)
    assert list(deleted.values_list("stripe_id", flat=True)) == [stripe_account.named["erin"]["id"]]


def test_customers_map_by_metadata_then_stripe_id_and_fill_stripe_customer_id(
    connected, org, stripe_account, costr_customers
):
    named = stripe_account.named
    mapped = {
        sc.stripe_id: (sc.customer.external_id if sc.customer else None, sc.mapped_by)
        for sc in StripeCustomer.objects.for_org(org).select_related("customer")
    }
    assert mapped[named["alice"]["id"]] == ("alice", MappedBy.METADATA)
    assert mapped[named["bob"]["id"]] == ("cus_Bob0001", MappedBy.STRIPE_ID)
    assert mapped[named["dave"]["id"]] == ("dave", MappedBy.METADATA)
    assert mapped[named["carol"]["id"]] == (None, "")  # "carol-co" was never seen by Costr
    for customer in costr_customers.values():
        customer.refresh_from_db()
    assert costr_customers["alice"].stripe_customer_id == named["alice"]["id"]
    assert costr_customers["cus_Bob0001"].stripe_customer_id == "cus_Bob0001"
    assert costr_customers["zed"].stripe_customer_id == ""


def test_a_manual_mapping_wins_and_removing_it_restores_the_automatic_one(
    connected, org, admin, stripe_account, costr_customers
):
    alice_sc = StripeCustomer.objects.for_org(org).get(
        stripe_id=stripe_account.named["alice"]["id"]
    )
    carol_sc = StripeCustomer.objects.for_org(org).get(
        stripe_id=stripe_account.named["carol"]["id"]
    )
    zed = costr_customers["zed"]

    services.customer_mapping_set(stripe_customer=carol_sc, customer=zed, actor=admin)
    services.customer_mapping_set(stripe_customer=alice_sc, customer=zed, actor=admin)

    carol_sc.refresh_from_db()
    alice_sc.refresh_from_db()
    zed.refresh_from_db()
    assert (carol_sc.customer_id, carol_sc.mapped_by) == (zed.pk, MappedBy.MANUAL)
    assert (alice_sc.customer_id, alice_sc.mapped_by) == (zed.pk, MappedBy.MANUAL)
    assert zed.stripe_customer_id == alice_sc.stripe_id  # the older of its two
    costr_customers["alice"].refresh_from_db()
    assert costr_customers["alice"].stripe_customer_id == ""

    services.customer_mapping_set(stripe_customer=alice_sc, customer=None, actor=admin)

    alice_sc.refresh_from_db()
    assert alice_sc.customer.external_id == "alice" and alice_sc.mapped_by == MappedBy.METADATA
    zed.refresh_from_db()
    assert zed.stripe_customer_id == carol_sc.stripe_id


def test_the_metadata_field_can_be_renamed(connected, org, admin, stripe_account, costr_customers):
    services.stripe_metadata_field_set(connection=connected, metadata_field="tenant", actor=admin)

    alice_sc = StripeCustomer.objects.for_org(org).get(
        stripe_id=stripe_account.named["alice"]["id"]
    )
    assert alice_sc.customer_id is None  # its metadata has costr_customer_id, not tenant


def test_a_429_during_a_sync_is_waited_out(connected, org, fake_stripe, stripe_account):
    stripe_account.charge(stripe_account.named["bob"], 700, fee=50, created=at(FEB, 20))
    fake_stripe.reset_requests()
    fake_stripe.rate_limit(2, retry_after="0")

    result = sync.stripe_sync(organization_id=org.pk)

    assert result.status == SyncStatus.OK
    assert fake_stripe.requests[0]["path"] == fake_stripe.requests[2]["path"]
    assert StripeBalanceTransaction.objects.for_org(org).count() == EXPECTED_TRANSACTIONS + 1


def test_a_sync_that_stays_rate_limited_fails_visibly(
    connected, org, admin, fake_stripe, client, settings
):
    settings.STRIPE_RATE_LIMIT_RETRIES = 2
    fake_stripe.rate_limit(50, retry_after="0")
    before = snapshot(org)

    result = sync.stripe_sync(organization_id=org.pk)

    assert result.status == SyncStatus.FAILED
    connection = StripeConnection.objects.for_org(org).get()
    assert connection.sync_status == SyncStatus.FAILED
    assert "429" in connection.last_error
    assert connection.last_success_at is not None  # the earlier success is still shown
    assert snapshot(org) == before
    client.force_login(admin)
    page = client.get(reverse("stripe_settings", args=[org.slug])).content.decode()
    assert "Last sync failed" in page and "429" in page


def test_a_key_without_balance_access_falls_back_to_paid_invoices(
    org, admin, fake_stripe, stripe_account, costr_customers, django_capture_on_commit_callbacks
):
    alice = stripe_account.named["alice"]
    stripe_account.invoice(alice, 12000, created=at(JAN, 3), paid_at=at(JAN, 4))
    stripe_account.invoice(alice, 9900, created=at(JAN, 28), paid_at=at(FEB, 2))
    stripe_account.invoice(alice, 5000, status="open", created=at(FEB, 5))
    key = fake_stripe.restricted_key(stripe_account, permissions=READ_ALL - {"rak_balance_read"})

    with django_capture_on_commit_callbacks(execute=True):
        services.stripe_connect(organization=org, key=key, actor=admin)

    connection = StripeConnection.objects.for_org(org).get()
    assert connection.permissions["balance_transactions"] == "rak_balance_read"
    assert connection.revenue_source == RevenueSource.INVOICES
    rows = RevenueMonth.objects.for_org(org).filter(source=RevenueSource.INVOICES)
    assert sorted((str(r.month), r.gross, r.net, r.fees) for r in rows) == [
        ("2026-01-01", 12000, 12000, 0),
        ("2026-02-01", 9900, 9900, 0),
    ]
    assert StripeInvoice.objects.for_org(org).count() == 3
    assert not StripeBalanceTransaction.objects.for_org(org).exists()
    assert fake_stripe.writes() == []


def test_a_key_that_cannot_expand_disputes_names_that_permission(
    org, admin, fake_stripe, stripe_account, django_capture_on_commit_callbacks
):
    key = fake_stripe.restricted_key(stripe_account, permissions=READ_ALL - {"rak_dispute_read"})

    with django_capture_on_commit_callbacks(execute=True):
        services.stripe_connect(organization=org, key=key, actor=admin)

    connection = StripeConnection.objects.for_org(org).get()
    assert connection.permissions["disputes"] == "rak_dispute_read"
    assert connection.permissions["balance_transactions"] == "rak_dispute_read"
    assert connection.sync_status == SyncStatus.OK
    assert StripeCustomer.objects.for_org(org).count() == 7  # what it may read is still read


def test_a_key_stripe_no_longer_accepts_fails_with_a_plain_reason(connected, org, fake_stripe):
    fake_stripe.keys.clear()  # rolled in the Stripe dashboard

    result = sync.stripe_sync(organization_id=org.pk)

    connection = StripeConnection.objects.for_org(org).get()
    assert result.status == connection.sync_status == SyncStatus.FAILED
    assert "no longer accepts the stored key" in connection.last_error
    assert "rk_" not in connection.last_error


def test_a_sync_already_running_is_not_started_twice(connected, org, fake_stripe):
    StripeConnection.objects.for_org(org).update(sync_status=SyncStatus.RUNNING)
    StripeConnection.objects.for_org(org).update(sync_started_at=connected.last_success_at)
    fake_stripe.reset_requests()

    result = sync.stripe_sync(organization_id=org.pk)

    assert result.status == "already_running"
    assert fake_stripe.requests == []


def test_beat_syncs_every_connected_organization(
    connected, org, other_org, fake_stripe, stripe_account
):
    other_account = fake_stripe.account("acct_1OtherShop0000001")
    other_account.charge(other_account.customer(email="x@example.com"), 1234, fee=66)
    services.stripe_connect(
        organization=other_org, key=fake_stripe.restricted_key(other_account), actor=None
    )  # on_commit never fires inside the test's transaction: only beat syncs it

    assert tasks.stripe_sync_all.delay().get() == 2

    assert StripeConnection.objects.for_org(other_org).get().sync_status == SyncStatus.OK
    other_rows = RevenueMonth.objects.for_org(other_org)
    assert [(r.gross, r.net) for r in other_rows] == [(1234, 1168)]


def test_syncstripe_runs_the_sync_and_reports(connected, org, stripe_account):
    stripe_account.charge(stripe_account.named["carol"], 800, fee=53, created=at(FEB, 21))
    out = io.StringIO()

    call_command("syncstripe", org.slug, stdout=out)

    assert "2 new" in out.getvalue()  # the charge and its balance transaction
    assert StripeBalanceTransaction.objects.for_org(org).count() == EXPECTED_TRANSACTIONS + 1


def test_syncstripe_without_a_connection_says_so(org):
    with pytest.raises(CommandError, match="not connected"):
        call_command("syncstripe", org.slug)


def test_a_walk_cut_short_resumes_where_it_stopped(
    org, admin, fake_stripe, stripe_account, stripe_key, costr_customers, settings
):
    settings.STRIPE_RATE_LIMIT_RETRIES = 0
    # 5 permission checks, 3 pages of customers (7), 3 of charges (8), 2 of balance
    # transactions: the third page of balance transactions is the first request refused.
    services.stripe_connect(organization=org, key=stripe_key, actor=admin)
    fake_stripe.rate_limit(1, retry_after="0", after=13)
    fake_stripe.reset_requests()

    cut = sync.stripe_sync(organization_id=org.pk)

    assert cut.status == SyncStatus.FAILED
    # two pages of three, less the payout, which is nobody's revenue
    assert StripeBalanceTransaction.objects.for_org(org).count() == 5
    connection = StripeConnection.objects.for_org(org).get()
    assert "balance_transactions" not in connection.checkpoints
    resume_after = connection.checkpoints["balance_transactions_resume"]["after"]
    fake_stripe.reset_requests()

    resumed = sync.stripe_sync(organization_id=org.pk)

    assert resumed.status == SyncStatus.OK
    walks = [dict(r["query"]) for r in fake_stripe.requests if r["path"].endswith("transactions")]
    pages = [q for q in walks if q["limit"] == "3"]
    assert pages[0]["starting_after"] == resume_after
    assert len(pages) == 3  # pages 3 to 5 only
    assert StripeBalanceTransaction.objects.for_org(org).count() == EXPECTED_TRANSACTIONS
    assert revenue_rows(org, stripe_account) == EXPECTED_MONTHS
    connection.refresh_from_db()
    assert connection.checkpoints["balance_transactions"] == at(FEB, 4)
    assert "balance_transactions_resume" not in connection.checkpoints
