"""Stripe, read-only: the connection (its restricted key sealed in the vault), a mirror of what the
sync reads, and revenue per Stripe customer, month and currency.

Money is kept as Stripe sends it: integers in the currency's minor unit (cents; yen for JPY, a
zero-decimal currency). ``apps.billing.currency`` turns them into major units for people.
Mirrored rows carry Stripe's ids as plain strings rather than foreign keys between each other:
Stripe objects arrive in any order and from different list walks, and a string never dangles.
"""

from django.conf import settings
from django.db import models

from apps.accounts.tenancy import TenantModel
from apps.keys.models import EncryptedSecret

DEFAULT_METADATA_FIELD = "costr_customer_id"


# A sync's hard time limit: a claim (``RUNNING``) older than this is a sync that died without
# saying so.
SYNC_TIME_LIMIT_SECONDS = 30 * 60


class SyncStatus(models.TextChoices):
    NEVER = "never", "Not synced yet"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    OK = "ok", "Up to date"
    FAILED = "failed", "Failed"


class RevenueSource(models.TextChoices):
    BALANCE = "balance", "Balance transactions (net of fees, refunds and disputes)"
    INVOICES = "invoices", "Paid invoices (billed amounts; Stripe fees unknown)"


class StripeConnection(EncryptedSecret):
    """One per organization: the restricted key and what the sync knows about its account.

    ``permissions`` maps each resource Costr reads to True (readable) or the name of the
    permission Stripe said is missing; it is refreshed on connect and by every sync.
    ``checkpoints`` holds, per resource, the ``created`` time (epoch seconds) of the newest object
    seen by the last complete walk.
    """

    VAULT_PURPOSE = "stripe"

    livemode = models.BooleanField(default=False)
    last4 = models.CharField(max_length=4)
    account_id = models.CharField(max_length=64, blank=True)
    account_name = models.CharField(max_length=255, blank=True)
    metadata_field = models.CharField(max_length=40, default=DEFAULT_METADATA_FIELD)
    permissions = models.JSONField(default=dict, blank=True)
    revenue_source = models.CharField(max_length=16, choices=RevenueSource.choices, blank=True)
    sync_status = models.CharField(
        max_length=16, choices=SyncStatus.choices, default=SyncStatus.NEVER
    )
    sync_started_at = models.DateTimeField(null=True, blank=True)
    sync_progress = models.JSONField(default=dict, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    checkpoints = models.JSONField(default=dict, blank=True)
    # The demo organization's made-up Stripe data (``manage.py costr_demo``): there is no account
    # behind it, so it is never synced.
    is_demo = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization"], name="billing_one_stripe_per_org")
        ]

    def __str__(self):
        return f"Stripe key {self.masked}"

    @property
    def masked(self) -> str:
        return f"rk_{'live' if self.livemode else 'test'}_…{self.last4}"

    @property
    def missing_permissions(self) -> dict[str, str]:
        return {name: need for name, need in self.permissions.items() if need is not True}


class MappedBy(models.TextChoices):
    MANUAL = "manual", "Set by hand"
    METADATA = "metadata", "Stripe metadata"
    STRIPE_ID = "stripe_id", "Stripe id sent as X-Costr-Customer"


class StripeCustomer(TenantModel):
    """A Stripe customer as the last sync saw it, and the Costr customer it maps to."""

    stripe_id = models.CharField(max_length=255)
    email = models.CharField(max_length=512, blank=True)
    name = models.CharField(max_length=512, blank=True)
    # Stripe's metadata as read: the mapping reads the connection's configured key from it, so
    # changing that key needs no new walk of every customer.
    metadata = models.JSONField(default=dict, blank=True)
    currency = models.CharField(max_length=8, blank=True)
    created = models.DateTimeField()
    livemode = models.BooleanField(default=False)
    deleted = models.BooleanField(default=False)
    customer = models.ForeignKey(
        "usage.Customer", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    mapped_by = models.CharField(max_length=16, choices=MappedBy.choices, blank=True)

    class Meta:
        ordering = ["-created", "stripe_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "stripe_id"], name="billing_stripecustomer_unique"
            )
        ]
        indexes = [models.Index(fields=["organization", "customer"], name="billing_scust_org_cust")]

    def __str__(self):
        return self.name or self.email or self.stripe_id


class CustomerMapping(TenantModel):
    """A person's choice: this Stripe customer is that Costr customer. It wins over the automatic
    rules and is kept across disconnects, keyed by the Stripe id."""

    stripe_customer_id = models.CharField(max_length=255)
    customer = models.ForeignKey("usage.Customer", on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "stripe_customer_id"], name="billing_mapping_unique"
            )
        ]

    def __str__(self):
        return f"{self.stripe_customer_id} → {self.customer_id}"


class StripeCharge(TenantModel):
    """Enough of a charge to know whose it was: refunds and disputes name only their charge."""

    stripe_id = models.CharField(max_length=255)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=8)
    created = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "stripe_id"], name="billing_stripecharge_unique"
            )
        ]

    def __str__(self):
        return self.stripe_id


class StripeBalanceTransaction(TenantModel):
    """A movement of the Stripe balance that is a customer's revenue: a charge or payment, a
    refund, a dispute withdrawal or reinstatement. ``amount``/``fee``/``net`` are in the
    settlement currency's minor unit; a refund or dispute has a negative amount."""

    stripe_id = models.CharField(max_length=255)
    type = models.CharField(max_length=40)
    reporting_category = models.CharField(max_length=40, blank=True)
    amount = models.BigIntegerField()
    fee = models.BigIntegerField()
    net = models.BigIntegerField()
    currency = models.CharField(max_length=8)
    created = models.DateTimeField()
    source_id = models.CharField(max_length=255, blank=True)
    charge_id = models.CharField(max_length=255, blank=True)
    stripe_customer_id = models.CharField(max_length=255, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "stripe_id"], name="billing_stripebt_unique"
            )
        ]
        indexes = [
            models.Index(fields=["organization", "created"], name="billing_bt_org_created"),
            models.Index(
                fields=["organization", "stripe_customer_id", "created"], name="billing_bt_org_cust"
            ),
        ]

    def __str__(self):
        return f"{self.stripe_id} {self.type} {self.amount} {self.currency}"


class StripeInvoice(TenantModel):
    """An invoice, read only when balance transactions are not: the billed view of revenue."""

    stripe_id = models.CharField(max_length=255)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=24)
    currency = models.CharField(max_length=8)
    amount_paid = models.BigIntegerField()
    created = models.DateTimeField()
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "stripe_id"], name="billing_stripeinvoice_unique"
            )
        ]
        indexes = [models.Index(fields=["organization", "paid_at"], name="billing_inv_org_paid")]

    def __str__(self):
        return f"{self.stripe_id} {self.status}"


class RevenueMonth(TenantModel):
    """Revenue of one Stripe customer ("" for charges without one) in one UTC month and one
    currency, from one source, in minor units. Rebuilt from the stored transactions after every
    sync, so running a sync twice never counts anything twice.

    ``gross`` is the sum of amounts (charges minus refunds and dispute withdrawals) before Stripe's
    fees; ``net`` is what reached the balance. ``refunds`` and ``disputes`` are the (negative)
    parts of ``gross`` that came from refunds and disputes. For invoices, ``gross`` = ``net`` =
    amount paid and ``fees`` is 0: the fees are not known there.
    """

    source = models.CharField(max_length=16, choices=RevenueSource.choices)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    month = models.DateField()
    currency = models.CharField(max_length=8)
    gross = models.BigIntegerField(default=0)
    fees = models.BigIntegerField(default=0)
    net = models.BigIntegerField(default=0)
    refunds = models.BigIntegerField(default=0)
    disputes = models.BigIntegerField(default=0)
    transactions = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "source", "stripe_customer_id", "month", "currency"],
                name="billing_revenuemonth_unique",
            )
        ]
        indexes = [models.Index(fields=["organization", "month"], name="billing_rev_org_month")]

    def __str__(self):
        return f"{self.month:%Y-%m} {self.stripe_customer_id or '-'} {self.net} {self.currency}"
