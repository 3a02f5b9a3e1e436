"""Writes for the Stripe connection: connect, disconnect, request a sync, map customers.

The key is checked against Stripe with read calls only (one ``limit=1`` list per resource), sealed
in the vault, and never returned, logged or shown: only its mode and last four characters are.
The sync itself lives in ``apps.billing.sync``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import timedelta

import stripe
from django.db import transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Organization, User
from apps.accounts.services import audit_event_record
from apps.billing.client import ReadOnlyStripe
from apps.billing.models import (
    DEFAULT_METADATA_FIELD,
    SYNC_TIME_LIMIT_SECONDS,
    CustomerMapping,
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
from apps.keys.keyring import seal
from apps.usage.models import Customer
from costr.tasks import enqueue_on_commit

RESTRICTED_KEY = re.compile(r"^rk_(live|test)_[A-Za-z0-9]{20,}$")
METADATA_FIELD = re.compile(r"^[A-Za-z0-9_\-.]{1,40}$")

# What Costr reads, in the order it checks: resource → (what people call it, the permission to
# give the restricted key in Stripe's dashboard, extra list parameters of the check).
RESOURCES: dict[str, tuple[str, str, dict]] = {
    "customers": ("Customers", "Customers: Read", {}),
    "charges": ("Charges and refunds", "Charges: Read", {}),
    "disputes": ("Disputes", "Disputes: Read", {}),
    "balance_transactions": (
        "Balance transactions",
        "Balance: Read",
        {"expand": ["data.source"]},
    ),
    "invoices": ("Invoices", "Invoices: Read", {}),
}
# The permission Stripe names in a 403 for each resource Costr reads.
STRIPE_PERMISSION_OF = {
    "customers": "rak_customer_read",
    "charges": "rak_charge_read",
    "disputes": "rak_dispute_read",
    "balance_transactions": "rak_balance_read",
    "invoices": "rak_invoice_read",
}
HOW_TO_CREATE = (
    "Create a restricted key instead: in the Stripe Dashboard open Developers → API keys → "
    "“Create restricted key”, set Read for Customers, Charges, Disputes, Invoices and Balance "
    "(balance transactions), leave everything else at None, and paste the key that starts with "
    "rk_live_ or rk_test_."
)
_MISSING = re.compile(r"Having the '([a-z0-9_]+)' permission")
_ACCOUNT = re.compile(r"on account '(acct_[A-Za-z0-9]+)'")
_ANY_KEY = re.compile(r"\b(?:rk|sk|pk)_(?:live|test)_[A-Za-z0-9*]+")


class BillingError(Exception):
    """Refused input or a Stripe answer that stops the action; the message is for people."""


def redact(text: str) -> str:
    """Stripe quotes the key, partly masked, in some error messages: keep none of it."""
    return _ANY_KEY.sub("[the key]", text)


@sensitive_variables("key")
def stripe_key_format_error(key: str) -> str | None:
    """Why ``key`` cannot be stored, or None for a restricted key."""
    key = key.strip()
    if RESTRICTED_KEY.match(key):
        return None
    if key.startswith(("sk_live_", "sk_test_", "sk_")):
        return (
            "This is a secret key: it can do anything in your Stripe account, including "
            "creating charges and refunds, so Costr does not accept it. " + HOW_TO_CREATE
        )
    if key.startswith(("pk_live_", "pk_test_")):
        return "This is a publishable key, which cannot read revenue. " + HOW_TO_CREATE
    if key.startswith("rk_"):
        return "This looks like the start of a restricted key but is incomplete; copy it again."
    return "This is not a Stripe restricted key. " + HOW_TO_CREATE


def missing_permission(error: stripe.StripeError) -> str:
    """The permission a 403 names (``rak_charge_read``), or "" when it names none."""
    found = _MISSING.search(str(error.user_message or ""))
    return found[1] if found else ""


@dataclass
class KeyCheck:
    """What one read per resource showed: True, or the permission Stripe said is missing."""

    permissions: dict[str, bool | str] = field(default_factory=dict)
    account_id: str = ""
    account_name: str = ""

    @property
    def missing(self) -> dict[str, str]:
        return {r: need for r, need in self.permissions.items() if need is not True}


def permissions_probe(api: ReadOnlyStripe) -> tuple[dict[str, bool | str], str]:
    """One ``limit=1`` list per resource Costr reads (reads only: nothing is probed by trying to
    change it). Returns resource → True or the permission Stripe named as missing, and the
    account id when a 403 message gave it away. A key Stripe rejects raises AuthenticationError.
    """
    permissions: dict[str, bool | str] = {}
    account_id = ""
    for resource, (_label, _grant, params) in RESOURCES.items():
        try:
            api.list_page(resource, limit=1, **params)
        except stripe.PermissionError as error:
            permissions[resource] = missing_permission(error) or "unknown"
            found = _ACCOUNT.search(str(error.user_message or ""))
            account_id = account_id or (found[1] if found else "")
        else:
            permissions[resource] = True
    return permissions, account_id


@sensitive_variables()
def stripe_key_check(key: str, *, sleep=time.sleep) -> KeyCheck:
    """What the key may read, and the account's id and name where the key may read them."""
    check = KeyCheck()
    with ReadOnlyStripe(key, sleep=sleep) as api:
        try:
            check.permissions, check.account_id = permissions_probe(api)
        except stripe.AuthenticationError as error:
            raise BillingError(
                "Stripe did not accept this key (it may have been deleted or rolled): "
                + redact(str(error.user_message or ""))
            ) from None
        except stripe.StripeError as error:
            raise BillingError(
                "Stripe could not be asked about this key: " + describe_stripe_error(error)
            ) from None
        try:
            account = api.retrieve_account()
        except stripe.StripeError:
            pass  # reading the account needs a permission Costr does not ask for
        else:
            check.account_id = account.get("id") or check.account_id
            profile = account.get("business_profile") or {}
            dashboard = (account.get("settings") or {}).get("dashboard") or {}
            check.account_name = profile.get("name") or dashboard.get("display_name") or ""
    return check


def describe_stripe_error(error: Exception) -> str:
    """One line for the settings page and the logs, without any part of the key."""
    if isinstance(error, stripe.AuthenticationError):
        return (
            "Stripe no longer accepts the stored key (deleted, rolled or expired). Disconnect "
            "and connect a new restricted key."
        )
    if isinstance(error, stripe.RateLimitError):
        return "Stripe kept answering 429 (too many requests); the next sync tries again."
    if isinstance(error, stripe.APIConnectionError):
        return "Stripe could not be reached (network error or timeout); the next sync tries again."
    if isinstance(error, stripe.StripeError):
        status = f"HTTP {error.http_status}: " if error.http_status else ""
        return redact(f"{status}{error.user_message or type(error).__name__}")
    return f"Internal error ({type(error).__name__}); the worker's log has the details."


def revenue_source_for(permissions: dict) -> str:
    if permissions.get("balance_transactions") is True:
        return RevenueSource.BALANCE
    if permissions.get("invoices") is True:
        return RevenueSource.INVOICES
    return ""


def _enqueue_sync_on_commit(organization_id: int) -> None:
    """The connection is left ``QUEUED``; if the task cannot be queued (the broker is down),
    the hourly sync of every connection (``billing.stripe_sync_all``) runs it."""
    enqueue_on_commit(
        "billing.stripe_sync",
        organization_id,
        fallback="the hourly Stripe sync (billing.stripe_sync_all) runs it",
    )


@sensitive_variables("key", "check")
def stripe_connect(
    *,
    organization: Organization,
    key: str,
    metadata_field: str = DEFAULT_METADATA_FIELD,
    actor: User | None,
    ip: str | None = None,
    sleep=time.sleep,
) -> StripeConnection:
    """Check the key with reads, store it sealed, and queue the first sync."""
    key = key.strip()
    problem = stripe_key_format_error(key)
    if problem:
        raise BillingError(problem)
    metadata_field = (metadata_field or DEFAULT_METADATA_FIELD).strip()
    if not METADATA_FIELD.match(metadata_field):
        raise BillingError("The metadata field name may hold letters, digits, “_”, “-” and “.”.")
    if StripeConnection.objects.for_org(organization).exists():
        raise BillingError("Stripe is already connected. Disconnect it first to use another key.")
    check = stripe_key_check(key, sleep=sleep)
    with transaction.atomic():
        connection = StripeConnection(
            organization=organization,
            livemode=key.startswith("rk_live_"),
            last4=key[-4:],
            account_id=check.account_id,
            account_name=check.account_name,
            metadata_field=metadata_field,
            permissions=check.permissions,
            revenue_source=revenue_source_for(check.permissions),
            sync_status=SyncStatus.QUEUED,
            created_by=actor,
        )
        seal(connection, key)
        connection.save()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="stripe.connected",
            target=connection.masked,
            ip=ip,
            details={
                "livemode": connection.livemode,
                "account_id": connection.account_id,
                "missing_permissions": sorted(set(check.missing.values())),
            },
        )
        _enqueue_sync_on_commit(organization.pk)
    return connection


def stripe_disconnect(
    *, connection: StripeConnection, actor: User | None, ip: str | None = None
) -> None:
    """Delete the key and everything copied from Stripe. Manual mappings stay: they name Stripe
    ids, and apply again if the same account is connected later."""
    organization = connection.organization
    with transaction.atomic():
        masked = connection.masked
        # Only ids this mirror set are cleared; one set through another way stays.
        mirrored = set(
            StripeCustomer.objects.for_org(organization).values_list("stripe_id", flat=True)
        )
        customers = Customer.objects.for_org(organization)
        stale = [
            pk
            for pk, stripe_id in customers.exclude(stripe_customer_id="").values_list(
                "pk", "stripe_customer_id"
            )
            if stripe_id in mirrored
        ]
        for start in range(0, len(stale), 500):
            customers.filter(pk__in=stale[start : start + 500]).update(stripe_customer_id="")
        for model in (
            RevenueMonth,
            StripeBalanceTransaction,
            StripeInvoice,
            StripeCharge,
            StripeCustomer,
        ):
            model.objects.for_org(organization).delete()
        connection.delete()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="stripe.disconnected",
            target=masked,
            ip=ip,
        )


def stripe_sync_request(
    *, connection: StripeConnection, actor: User | None, ip: str | None = None
) -> bool:
    """Queue a sync now. False while one is running (a run older than the task's time limit
    died and does not count). Queuing again while queued is allowed: a lost message must not
    leave the button dead, and a second run finds the first one's work done."""
    organization = connection.organization
    running_since = timezone.now() - timedelta(seconds=SYNC_TIME_LIMIT_SECONDS)
    with transaction.atomic():
        queued = (
            StripeConnection.objects.for_org(organization)
            .filter(pk=connection.pk)
            .exclude(sync_status=SyncStatus.RUNNING, sync_started_at__gt=running_since)
            .update(sync_status=SyncStatus.QUEUED)
        )
        if not queued:
            return False
        audit_event_record(
            organization=organization,
            actor=actor,
            action="stripe.sync_requested",
            target=connection.masked,
            ip=ip,
        )
        _enqueue_sync_on_commit(organization.pk)
    return True


def stripe_metadata_field_set(
    *, connection: StripeConnection, metadata_field: str, actor: User | None, ip: str | None = None
) -> None:
    metadata_field = metadata_field.strip()
    if not METADATA_FIELD.match(metadata_field):
        raise BillingError("The metadata field name may hold letters, digits, “_”, “-” and “.”.")
    previous = connection.metadata_field
    if previous == metadata_field:
        return
    with transaction.atomic():
        connection.metadata_field = metadata_field
        connection.save(update_fields=["metadata_field"])
        audit_event_record(
            organization=connection.organization,
            actor=actor,
            action="stripe.metadata_field_changed",
            target=connection.masked,
            ip=ip,
            details={"from": previous, "to": metadata_field},
        )
        stripe_mappings_resolve(organization=connection.organization)


def customer_mapping_set(
    *,
    stripe_customer: StripeCustomer,
    customer: Customer | None,
    actor: User | None,
    ip: str | None = None,
) -> None:
    """Map a Stripe customer to a Costr customer by hand, or (``customer=None``) drop the manual
    mapping so the automatic rules apply again."""
    organization = stripe_customer.organization
    if customer is not None and customer.organization_id != organization.pk:
        raise BillingError("No such customer.")
    with transaction.atomic():
        mappings = CustomerMapping.objects.for_org(organization)
        if customer is None:
            deleted, _ = mappings.filter(stripe_customer_id=stripe_customer.stripe_id).delete()
            if not deleted:
                return
            action, target = "stripe.mapping_removed", stripe_customer.stripe_id
        else:
            mappings.update_or_create(
                organization=organization,
                stripe_customer_id=stripe_customer.stripe_id,
                defaults={"customer": customer, "created_by": actor},
            )
            action = "stripe.mapping_set"
            target = f"{stripe_customer.stripe_id} → {customer.external_id}"
        audit_event_record(
            organization=organization, actor=actor, action=action, target=target, ip=ip
        )
        stripe_mappings_resolve(organization=organization)


def stripe_mappings_resolve(*, organization: Organization) -> int:
    """Point every mirrored Stripe customer at its Costr customer, first rule that finds one:
    a manual mapping; the connection's metadata field naming an X-Costr-Customer value; the
    Stripe id itself used as the X-Costr-Customer value. Returns how many mappings changed.

    Then each mapped Costr customer's ``stripe_customer_id`` names its oldest mapped Stripe
    customer; an id this mirror set earlier and that no longer maps is cleared."""
    connection = StripeConnection.objects.for_org(organization).first()
    metadata_field = connection.metadata_field if connection else DEFAULT_METADATA_FIELD
    manual = dict(
        CustomerMapping.objects.for_org(organization).values_list(
            "stripe_customer_id", "customer_id"
        )
    )
    stripe_customers = list(
        StripeCustomer.objects.for_org(organization).only(
            "stripe_id", "metadata", "customer_id", "mapped_by", "created", "deleted"
        )
    )
    wanted_ids = set()
    for row in stripe_customers:
        wanted_ids.add(row.stripe_id)
        value = (row.metadata or {}).get(metadata_field)
        if isinstance(value, str) and value:
            wanted_ids.add(value)
    by_external_id = dict(
        Customer.objects.for_org(organization)
        .filter(external_id__in=wanted_ids)
        .values_list("external_id", "pk")
    )
    changed = []
    for row in stripe_customers:
        value = (row.metadata or {}).get(metadata_field)
        if row.stripe_id in manual:
            target = (manual[row.stripe_id], MappedBy.MANUAL)
        elif isinstance(value, str) and value in by_external_id:
            target = (by_external_id[value], MappedBy.METADATA)
        elif row.stripe_id in by_external_id:
            target = (by_external_id[row.stripe_id], MappedBy.STRIPE_ID)
        else:
            target = (None, "")
        if (row.customer_id, row.mapped_by) != target:
            row.customer_id, row.mapped_by = target
            changed.append(row)
    StripeCustomer.objects.for_org(organization).bulk_update(
        changed, ["customer", "mapped_by"], batch_size=500
    )
    _customer_stripe_ids_apply(organization, stripe_customers)
    return len(changed)


def _customer_stripe_ids_apply(organization, stripe_customers) -> None:
    """Customer.stripe_customer_id: the oldest live Stripe customer mapped to it."""
    best: dict[int, StripeCustomer] = {}
    for row in stripe_customers:
        if row.customer_id is None:
            continue
        current = best.get(row.customer_id)
        if current is None or (row.deleted, row.created, row.stripe_id) < (
            current.deleted,
            current.created,
            current.stripe_id,
        ):
            best[row.customer_id] = row
    wanted = {customer_id: row.stripe_id for customer_id, row in best.items()}
    mirrored = {row.stripe_id for row in stripe_customers}
    customers = Customer.objects.for_org(organization)
    current = dict(customers.exclude(stripe_customer_id="").values_list("pk", "stripe_customer_id"))
    for customer_id, stripe_id in current.items():
        if stripe_id in mirrored and customer_id not in wanted:
            customers.filter(pk=customer_id).update(stripe_customer_id="")
    for customer_id, stripe_id in wanted.items():
        if current.get(customer_id) != stripe_id:
            customers.filter(pk=customer_id).update(stripe_customer_id=stripe_id)
