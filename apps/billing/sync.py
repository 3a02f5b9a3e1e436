"""The Stripe sync: read what changed since the last run, store it, rebuild revenue.

Each resource is walked newest first through every page (``has_more``/``starting_after``) from
its checkpoint (the newest ``created`` seen by the last complete walk) minus a safety window, and
upserted by Stripe id, so a walk cut short or run twice stores each object once. Revenue per
customer and month is then rebuilt from the stored transactions rather than added to, so a re-run
never double counts. A resource the key may not read is recorded by name and skipped; the others
still sync.

Only one sync per organization runs at a time: a run claims the connection with one conditional
UPDATE, and a claim older than the task's time limit counts as abandoned.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Organization
from apps.billing import services
from apps.billing.client import ReadOnlyStripe
from apps.billing.models import (
    SYNC_TIME_LIMIT_SECONDS,
    RevenueMonth,
    RevenueSource,
    StripeBalanceTransaction,
    StripeCharge,
    StripeConnection,
    StripeCustomer,
    StripeInvoice,
    SyncStatus,
)
from apps.keys.keyring import open_secret

logger = logging.getLogger(__name__)

CHARGE_TYPES = frozenset({"charge", "payment"})
REFUND_TYPES = frozenset(
    {"refund", "payment_refund", "payment_failure_refund", "refund_failure", "payment_reversal"}
)
DISPUTE_CATEGORIES = frozenset({"dispute", "dispute_reversal"})


@dataclass
class SyncResult:
    status: str
    created: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    updated: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    pages: int = 0
    revenue_rows_changed: int = 0
    mappings_changed: int = 0
    missing: dict[str, str] = field(default_factory=dict)
    error: str = ""

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "created": dict(self.created),
            "updated": dict(self.updated),
            "pages": self.pages,
            "revenue_rows_changed": self.revenue_rows_changed,
            "mappings_changed": self.mappings_changed,
            "missing": self.missing,
            "error": self.error,
        }


def _epoch(value: datetime) -> int:
    return int(value.timestamp())


def _from_epoch(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value is not None else None


def _id(value) -> str:
    """An id, whether Stripe sent the id or the expanded object."""
    if isinstance(value, dict):
        return value.get("id") or ""
    return value or ""


def stripe_sync(*, organization_id: int, sleep=time.sleep) -> SyncResult:
    """Sync one organization now. Never raises for Stripe's or the network's trouble: that is
    recorded on the connection, where the settings page shows it."""
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        return SyncResult(status="no_organization")
    now = timezone.now()
    connections = StripeConnection.objects.for_org(organization)
    if connections.filter(is_demo=True).exists():
        return SyncResult(status="demo")  # made-up data: no Stripe account to read
    claimed = connections.exclude(
        sync_status=SyncStatus.RUNNING,
        sync_started_at__gt=now - timedelta(seconds=SYNC_TIME_LIMIT_SECONDS),
    ).update(
        sync_status=SyncStatus.RUNNING,
        sync_started_at=now,
        sync_progress={"stage": "starting", "pages": 0, "objects": 0},
    )
    if not claimed:
        exists = connections.exists()
        return SyncResult(status="already_running" if exists else "not_connected")
    connection = connections.get()
    result = SyncResult(status=SyncStatus.RUNNING)
    try:
        _sync_connection(connection, result, sleep)
    except Exception as error:
        message = services.describe_stripe_error(error)
        if isinstance(error, stripe.StripeError):
            logger.warning("Stripe sync of %s failed: %s", organization.slug, message)
        else:
            logger.exception("Stripe sync of %s failed", organization.slug)
        connections.update(
            sync_status=SyncStatus.FAILED,
            last_error=message,
            last_error_at=timezone.now(),
            sync_progress={},
        )
        result.status, result.error = SyncStatus.FAILED, message
        return result
    result.status = SyncStatus.OK
    return result


@sensitive_variables()
def _sync_connection(connection: StripeConnection, result: SyncResult, sleep) -> None:
    """Everything below this frame may hold the key: error reports show none of its variables."""
    key = open_secret(ciphertext=bytes(connection.ciphertext), context=connection.vault_context())
    with ReadOnlyStripe(key, sleep=sleep) as api:
        del key
        _Walker(connection, api, result).run()


class _Walker:
    def __init__(self, connection: StripeConnection, api: ReadOnlyStripe, result: SyncResult):
        self.connection = connection
        self.organization = connection.organization
        self.api = api
        self.result = result
        self.permissions = dict(connection.permissions)
        self.checkpoints = dict(connection.checkpoints)
        self.objects = 0
        self.resumed = False

    def _connections(self):
        return StripeConnection.objects.for_org(self.organization).filter(pk=self.connection.pk)

    def run(self) -> None:
        started = timezone.now()
        # Permissions can be edited on a restricted key in Stripe's dashboard: ask again each run.
        self._progress("permissions")
        self.permissions, _ = services.permissions_probe(self.api)
        readable = {r for r, granted in self.permissions.items() if granted is True}
        if "customers" in readable:
            self._stage("customers", self._customers)
        if "charges" in readable:
            self._stage("charges", self._charges)
        if "balance_transactions" in readable:
            self._stage("balance_transactions", self._balance_transactions)
        source = services.revenue_source_for(self.permissions)
        if source == RevenueSource.INVOICES:
            self._stage("invoices", self._invoices)
        source = services.revenue_source_for(self.permissions)
        self._progress("revenue")
        with transaction.atomic():
            self.result.revenue_rows_changed = revenue_rebuild(organization=self.organization)
            self.result.mappings_changed = services.stripe_mappings_resolve(
                organization=self.organization
            )
        self.result.missing = {r: n for r, n in self.permissions.items() if n is not True}
        self._connections().update(
            sync_status=SyncStatus.OK,
            permissions=self.permissions,
            revenue_source=source,
            checkpoints=self.checkpoints,
            last_success_at=started,
            last_error="",
            last_error_at=None,
            sync_progress={},
        )

    def _stage(self, resource: str, walk) -> None:
        """Run one walk; a 403 in it (an expanded source the key may not read) is recorded
        against the resource, and against the permission's own resource when that is known."""
        try:
            walk()
        except stripe.PermissionError as error:
            needed = services.missing_permission(error) or "unknown"
            self.permissions[resource] = needed
            for other, permission in services.STRIPE_PERMISSION_OF.items():
                if permission == needed:
                    self.permissions[other] = needed
            return
        self._connections().update(checkpoints=self.checkpoints)

    def _progress(self, stage: str) -> None:
        self._connections().update(
            sync_progress={"stage": stage, "pages": self.result.pages, "objects": self.objects}
        )

    def _walk(self, resource: str, *, since: int | None, on_page, expand=None) -> int | None:
        """Every page of ``resource`` created at or after ``since``; returns the newest
        ``created`` seen. Each page is stored in its own transaction, and the cursor after it is
        saved: a walk cut short (time limit, Stripe down) resumes there on the next run instead
        of starting again from the newest page. ``self.resumed`` tells whether it did."""
        resume_key = f"{resource}_resume"
        resume = self.checkpoints.get(resume_key)
        self.resumed = bool(resume and resume.get("since") == since)
        starting_after = resume["after"] if self.resumed else None
        newest = resume.get("newest") if self.resumed else None
        self._progress(resource)
        while True:
            page = self.api.list_page(
                resource,
                limit=settings.STRIPE_PAGE_SIZE,
                starting_after=starting_after,
                created_gte=since,
                expand=expand,
            )
            if page.data:
                with transaction.atomic():
                    on_page(page.data)
                newest = max([newest or 0, *(item["created"] for item in page.data)])
            self.result.pages += 1
            self.objects += len(page.data)
            if not page.has_more or not page.data:
                self.checkpoints.pop(resume_key, None)
                self._progress(resource)
                return newest
            starting_after = page.data[-1]["id"]
            self.checkpoints[resume_key] = {
                "since": since,
                "after": starting_after,
                "newest": newest,
            }
            self._connections().update(
                checkpoints=self.checkpoints,
                sync_progress={
                    "stage": resource,
                    "pages": self.result.pages,
                    "objects": self.objects,
                },
            )

    def _since(self, resource: str, window_seconds: int) -> int | None:
        checkpoint = self.checkpoints.get(resource)
        return None if checkpoint is None else max(int(checkpoint) - window_seconds, 0)

    def _advance(self, resource: str, newest: int | None) -> None:
        if newest is not None:
            self.checkpoints[resource] = max(int(self.checkpoints.get(resource) or 0), newest)

    def _upsert(self, model, resource: str, rows: dict[str, dict]) -> None:
        """Create the new, update the changed, leave the identical alone: idempotent by id."""
        if not rows:
            return
        queryset = model.objects.for_org(self.organization)
        existing = {obj.stripe_id: obj for obj in queryset.filter(stripe_id__in=list(rows))}
        new, changed = [], []
        fields = set()
        for stripe_id, values in rows.items():
            obj = existing.get(stripe_id)
            if obj is None:
                new.append(model(organization=self.organization, stripe_id=stripe_id, **values))
                continue
            differs = [name for name, value in values.items() if getattr(obj, name) != value]
            if differs:
                for name in differs:
                    setattr(obj, name, values[name])
                fields.update(differs)
                changed.append(obj)
        queryset.bulk_create(new)
        if changed:
            queryset.bulk_update(changed, sorted(fields))
        self.result.created[resource] += len(new)
        self.result.updated[resource] += len(changed)

    # --- customers -------------------------------------------------------------------------

    def _customers(self) -> None:
        full_every = timedelta(hours=settings.STRIPE_FULL_CUSTOMER_SYNC_HOURS)
        last_full = _from_epoch(self.checkpoints.get("customers_full_at"))
        full = last_full is None or timezone.now() - last_full >= full_every
        started = timezone.now()
        seen: set[str] = set()

        def store(items):
            rows = {}
            for item in items:
                seen.add(item["id"])
                rows[item["id"]] = {
                    "email": (item.get("email") or "")[:512],
                    "name": (item.get("name") or "")[:512],
                    "metadata": dict(item.get("metadata") or {}),
                    "currency": item.get("currency") or "",
                    "created": _from_epoch(item["created"]),
                    "livemode": bool(item.get("livemode")),
                    "deleted": bool(item.get("deleted")),
                }
            self._upsert(StripeCustomer, "customers", rows)

        since = (
            None if full else self._since("customers", settings.STRIPE_SYNC_SAFETY_WINDOW_SECONDS)
        )
        newest = self._walk("customers", since=since, on_page=store)
        self._advance("customers", newest)
        if full and not self.resumed:
            # Stripe's list leaves deleted customers out: whoever a complete walk did not see
            # is gone from Stripe. Their past revenue stays theirs.
            gone = StripeCustomer.objects.for_org(self.organization).filter(deleted=False)
            gone_ids = [pk for pk, sid in gone.values_list("pk", "stripe_id") if sid not in seen]
            for start in range(0, len(gone_ids), 500):
                StripeCustomer.objects.for_org(self.organization).filter(
                    pk__in=gone_ids[start : start + 500]
                ).update(deleted=True)
            self.result.updated["customers"] += len(gone_ids)
            self.checkpoints["customers_full_at"] = _epoch(started)

    # --- charges ---------------------------------------------------------------------------

    @staticmethod
    def _charge_row(item) -> dict:
        return {
            "stripe_customer_id": _id(item.get("customer")),
            "amount": int(item.get("amount") or 0),
            "currency": item.get("currency") or "",
            "created": _from_epoch(item["created"]),
        }

    def _charges(self) -> None:
        def store(items):
            self._upsert(
                StripeCharge, "charges", {item["id"]: self._charge_row(item) for item in items}
            )

        since = self._since("charges", settings.STRIPE_SYNC_SAFETY_WINDOW_SECONDS)
        self._advance("charges", self._walk("charges", since=since, on_page=store))

    def _customers_of_charges(self, charge_ids: set[str]) -> dict[str, str]:
        """Charge id → Stripe customer id, from the mirror, else read from Stripe (and kept)."""
        found = dict(
            StripeCharge.objects.for_org(self.organization)
            .filter(stripe_id__in=list(charge_ids))
            .values_list("stripe_id", "stripe_customer_id")
        )
        unknown = charge_ids - set(found)
        if unknown and self.permissions.get("charges") is True:
            fetched = {}
            for charge_id in sorted(unknown):
                try:
                    item = self.api.retrieve_charge(charge_id)
                except stripe.InvalidRequestError:
                    continue  # gone, or not a charge: the transaction stays without a customer
                fetched[charge_id] = self._charge_row(item)
                found[charge_id] = fetched[charge_id]["stripe_customer_id"]
            self._upsert(StripeCharge, "charges", fetched)
        return found

    # --- balance transactions --------------------------------------------------------------

    def _balance_transactions(self) -> None:
        def store(items):
            relevant, charge_of, customer_of_source = [], {}, {}
            for item in items:
                source = item.get("source")
                kind = source.get("object") if isinstance(source, dict) else ""
                category = item.get("reporting_category") or ""
                if item.get("type") == "adjustment" and not (
                    kind == "dispute" or category in DISPUTE_CATEGORIES
                ):
                    continue  # an adjustment that is not a dispute is nobody's revenue
                if item.get("type") not in CHARGE_TYPES | REFUND_TYPES | {"adjustment"}:
                    continue
                source_id = _id(source)
                if kind == "charge" or (not kind and source_id.startswith(("ch_", "py_"))):
                    charge_id = source_id
                    if isinstance(source, dict):
                        customer_of_source[charge_id] = _id(source.get("customer"))
                else:
                    charge_id = _id(source.get("charge")) if isinstance(source, dict) else ""
                    if isinstance(source, dict) and isinstance(source.get("charge"), dict):
                        customer_of_source[charge_id] = _id(source["charge"].get("customer"))
                charge_of[item["id"]] = charge_id
                relevant.append(item)
            wanted = {c for c in charge_of.values() if c and c not in customer_of_source}
            customers = {**self._customers_of_charges(wanted), **customer_of_source}
            rows = {}
            for item in relevant:
                charge_id = charge_of[item["id"]]
                rows[item["id"]] = {
                    "type": item.get("type") or "",
                    "reporting_category": item.get("reporting_category") or "",
                    "amount": int(item["amount"]),
                    "fee": int(item.get("fee") or 0),
                    "net": int(item["net"]),
                    "currency": item["currency"],
                    "created": _from_epoch(item["created"]),
                    "source_id": _id(item.get("source")),
                    "charge_id": charge_id,
                    "stripe_customer_id": customers.get(charge_id, "") if charge_id else "",
                }
            self._upsert(StripeBalanceTransaction, "balance_transactions", rows)

        since = self._since("balance_transactions", settings.STRIPE_SYNC_SAFETY_WINDOW_SECONDS)
        newest = self._walk(
            "balance_transactions", since=since, on_page=store, expand=["data.source"]
        )
        self._advance("balance_transactions", newest)

    # --- invoices --------------------------------------------------------------------------

    def _invoices(self) -> None:
        def store(items):
            rows = {}
            for item in items:
                paid_at = (item.get("status_transitions") or {}).get("paid_at")
                rows[item["id"]] = {
                    "stripe_customer_id": _id(item.get("customer")),
                    "status": item.get("status") or "",
                    "currency": item.get("currency") or "",
                    "amount_paid": int(item.get("amount_paid") or 0),
                    "created": _from_epoch(item["created"]),
                    "paid_at": _from_epoch(paid_at),
                }
            self._upsert(StripeInvoice, "invoices", rows)

        since = self._since("invoices", settings.STRIPE_INVOICE_LOOKBACK_DAYS * 86400)
        self._advance("invoices", self._walk("invoices", since=since, on_page=store))


def _month(value) -> date:
    if isinstance(value, datetime):
        value = value.astimezone(UTC) if timezone.is_aware(value) else value
        return date(value.year, value.month, 1)
    return date(value.year, value.month, 1)


def revenue_rebuild(*, organization: Organization) -> int:
    """Recompute every RevenueMonth row of the organization from the stored transactions and
    invoices; write only what differs. Returns rows created, changed or deleted."""
    sums: dict[tuple, dict[str, int]] = {}
    transactions = (
        StripeBalanceTransaction.objects.for_org(organization)
        .annotate(month=TruncMonth("created", tzinfo=UTC))
        .values("stripe_customer_id", "month", "currency")
        .annotate(
            gross=Sum("amount"),
            fees=Sum("fee"),
            net=Sum("net"),
            refunds=Sum("amount", filter=Q(type__in=REFUND_TYPES)),
            disputes=Sum("amount", filter=Q(type="adjustment")),
            transactions=Count("id"),
        )
    )
    for row in transactions:
        key = (
            RevenueSource.BALANCE,
            row["stripe_customer_id"],
            _month(row["month"]),
            row["currency"],
        )
        sums[key] = {
            "gross": row["gross"] or 0,
            "fees": row["fees"] or 0,
            "net": row["net"] or 0,
            "refunds": row["refunds"] or 0,
            "disputes": row["disputes"] or 0,
            "transactions": row["transactions"],
        }
    invoices = (
        StripeInvoice.objects.for_org(organization)
        .filter(status="paid", paid_at__isnull=False)
        .annotate(month=TruncMonth("paid_at", tzinfo=UTC))
        .values("stripe_customer_id", "month", "currency")
        .annotate(paid=Sum("amount_paid"), transactions=Count("id"))
    )
    for row in invoices:
        key = (
            RevenueSource.INVOICES,
            row["stripe_customer_id"],
            _month(row["month"]),
            row["currency"],
        )
        paid = row["paid"] or 0
        sums[key] = {
            "gross": paid,
            "fees": 0,
            "net": paid,
            "refunds": 0,
            "disputes": 0,
            "transactions": row["transactions"],
        }
    queryset = RevenueMonth.objects.for_org(organization)
    existing = {(r.source, r.stripe_customer_id, r.month, r.currency): r for r in queryset.all()}
    new, changed = [], []
    for key, values in sums.items():
        row = existing.pop(key, None)
        if row is None:
            source, customer, month, currency = key
            new.append(
                RevenueMonth(
                    organization=organization,
                    source=source,
                    stripe_customer_id=customer,
                    month=month,
                    currency=currency,
                    **values,
                )
            )
        elif any(getattr(row, name) != value for name, value in values.items()):
            for name, value in values.items():
                setattr(row, name, value)
            changed.append(row)
    queryset.bulk_create(new)
    queryset.bulk_update(changed, ["gross", "fees", "net", "refunds", "disputes", "transactions"])
    stale = [row.pk for row in existing.values()]
    if stale:
        queryset.filter(pk__in=stale).delete()
    return len(new) + len(changed) + len(stale)
