"""Delivering a fired alert on each channel: e-mail to the organization's admins and owners, its
Slack incoming webhook, and its signed webhooks.

Each channel of an alert is one ``Delivery`` row, created with the alert and queued once that
commits (``budgets.delivery_send``). An attempt first *claims* the row with one conditional
UPDATE (still pending, and due): the claim moves ``next_attempt_at`` past the longest an attempt
can take, so a second copy of the same message, the minute sweep, or a worker that picks the row
up at the same moment finds it not due and does nothing. If the worker dies mid-attempt, the row
falls due again when that lease runs out and the sweep sends it then.

A failed attempt (no answer, or an answer other than 2xx) is retried with backoff: 30 s, 1, 2,
4, 8 … minutes, at most an hour apart, until 24 hours after the alert; an attempt due after that
marks the delivery failed. Attempts, last status, last error and next attempt are kept on the row
for the delivery log. A channel removed meanwhile (the webhook deleted: its deliveries go with
it; Slack removed; e-mail turned off) ends the delivery as failed, saying why.

**Webhooks** get ``POST`` of ``{"id", "type", "created", "organization", "data"}`` with
``Costr-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``; the body
is the same on every attempt, the signature is made afresh (its ``t`` is the attempt's time, so
a receiver may refuse old signatures to stop replays). ``Costr-Event-Id`` repeats the alert's
id, for receivers that drop repeats (a delivery can arrive twice if an answer is lost).
"""

import hashlib
import hmac
import json
import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Membership, Role
from apps.budgets import outbound
from apps.budgets.models import (
    Alert,
    AlertSettings,
    Channel,
    Delivery,
    DeliveryState,
    EventType,
    SlackWebhook,
    Webhook,
)
from apps.keys.keyring import open_secret
from costr.tasks import enqueue_on_commit

logger = logging.getLogger("costr.budgets.delivery")

SEND_TASK = "budgets.delivery_send"
SWEEP_FALLBACK = "the deliveries sweep (budgets.deliveries_sweep, every minute) sends it"
GIVE_UP_AFTER = timedelta(hours=24)
FIRST_BACKOFF_SECONDS = 30
MAX_BACKOFF_SECONDS = 3600
SIGNATURE_HEADER = "Costr-Signature"


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: 30 s, 1 min, 2, 4 … capped at 1 h."""
    exponent = min(max(attempts - 1, 0), 12)
    return timedelta(seconds=min(FIRST_BACKOFF_SECONDS * 2**exponent, MAX_BACKOFF_SECONDS))


def lease() -> timedelta:
    """How long a claimed attempt holds its row: longer than any attempt can take (connect,
    send and read each bounded by the timeout; the SMTP connection by its own)."""
    return timedelta(seconds=max(120.0, 4 * settings.COSTR_WEBHOOK_TIMEOUT_SECONDS))


# --- Creating deliveries ---------------------------------------------------------------------


def email_recipients(organization_id: int) -> list[str]:
    """The addresses of the organization's admins and owners (members get no alert mail)."""
    return sorted(
        Membership.objects.for_org(organization_id)
        .filter(role__in=[Role.ADMIN, Role.OWNER], user__is_active=True)
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )


def email_enabled(organization_id: int) -> bool:
    found = AlertSettings.objects.for_org(organization_id).first()
    return True if found is None else found.email_admins


def deliveries_create(alert: Alert) -> list[Delivery]:
    """One delivery per channel the organization has set for this alert's type, queued once the
    surrounding transaction commits."""
    organization_id = alert.organization_id
    now = timezone.now()
    rows = []
    if email_enabled(organization_id) and email_recipients(organization_id):
        rows.append(Delivery(channel=Channel.EMAIL))
    if SlackWebhook.objects.for_org(organization_id).exists():
        rows.append(Delivery(channel=Channel.SLACK))
    for webhook in Webhook.objects.for_org(organization_id):
        if alert.type in webhook.events:
            rows.append(Delivery(channel=Channel.WEBHOOK, webhook=webhook))
    for row in rows:
        row.organization_id = organization_id
        row.alert = alert
        row.next_attempt_at = now
    created = Delivery.objects.bulk_create(rows)
    # bulk_create sets primary keys on PostgreSQL and SQLite alike.
    for row in created:
        enqueue_on_commit(SEND_TASK, organization_id, row.pk, fallback=SWEEP_FALLBACK)
    return created


# --- What is said ----------------------------------------------------------------------------


def alerts_page_url(alert: Alert) -> str:
    return settings.COSTR_BASE_URL + reverse("alerts", args=[alert.organization.slug])


def _scope_words(budget: dict, customer) -> str:
    scope = budget.get("scope")
    if scope == "organization":
        return "the whole organization"
    if scope == "customer":
        return f"customer {budget.get('customer')}"
    if scope == "each_customer":
        return f"customer {customer} (each-customer budget)"
    if scope == "token":
        return f"token {budget.get('token')}…"
    return f"property {budget.get('property_name')}={budget.get('property_value')}"


def _one_line(text: str) -> str:
    """``text`` fit for a mail header: a customer id (any string the ingest API took) may hold
    line breaks, which a header refuses (Django raises BadHeaderError)."""
    return " ".join(text.split())


def describe(alert: Alert) -> tuple[str, str]:
    """(subject, one-paragraph text) of an alert, for e-mail and Slack."""
    data = alert.data
    if alert.type == EventType.ANOMALY:
        subject = f"Spend anomaly: customer {data['customer']}"
        text = (
            f"Customer {data['customer']} has spent ${data['spent_today_usd']} today "
            f"({data['day']}), more than {data['factor']} times its mean of "
            f"${data['trailing_daily_mean_usd']} a day over the previous "
            f"{data['trailing_days']} days."
        )
        return subject, text
    budget = data.get("budget", {})
    scope = _scope_words(budget, data.get("customer"))
    period = "daily" if budget.get("period") == "day" else "monthly"
    figures = (
        f"${data['spent_usd']} of ${data['limit_usd']} ({data['spent_percent']}%) spent in "
        f"the period that began {data['period_start'][:10]}"
    )
    if alert.type == EventType.EXCEEDED:
        subject = f"Budget exceeded: {period} budget for {scope}"
        outcome = (
            "Requests under it are refused until the period ends."
            if budget.get("enforce")
            else "It is alert-only: requests still go through."
        )
        text = (
            f"The {period} budget {budget.get('id')} for {scope} reached "
            f"{data['threshold_percent']}% of its limit: {figures}. {outcome}"
        )
    else:
        subject = f"Budget at {data['threshold_percent']}%: {period} budget for {scope}"
        text = (
            f"The {period} budget {budget.get('id')} for {scope} crossed "
            f"{data['threshold_percent']}% of its limit: {figures}."
        )
    return subject, text


def payload(alert: Alert) -> bytes:
    """The webhook body: the same bytes on every attempt."""
    document = {
        "id": alert.public_id,
        "type": alert.type,
        "created": alert.created_at.isoformat().replace("+00:00", "Z"),
        "organization": alert.organization.slug,
        "data": alert.data,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


@sensitive_variables("secret")
def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Costr-Signature`` header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _slack_escape(text: str) -> str:
    """Slack reads &, < and > as markup (<!channel>, links); names of customers are not."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- Sending ---------------------------------------------------------------------------------


def _send_email(delivery: Delivery) -> outbound.Answer:
    organization_id = delivery.organization_id
    if not email_enabled(organization_id):
        return outbound.Answer(None, "gone: e-mail alerts were turned off")
    recipients = email_recipients(organization_id)
    if not recipients:
        return outbound.Answer(None, "gone: the organization has no admin to write to")
    subject, text = describe(delivery.alert)
    body = f"{text}\n\nAlerts and delivery log: {alerts_page_url(delivery.alert)}\n"
    messages = [
        EmailMessage(_one_line(f"[Costr] {subject}"), body, settings.DEFAULT_FROM_EMAIL, [address])
        for address in recipients
    ]
    try:
        get_connection(fail_silently=False).send_messages(messages)
    except Exception as error:
        return outbound.Answer(None, f"mail not sent: {type(error).__name__}")
    return outbound.Answer(250, "")


@sensitive_variables("url")
def _send_slack(delivery: Delivery) -> outbound.Answer:
    slack = SlackWebhook.objects.for_org(delivery.organization_id).first()
    if slack is None:
        return outbound.Answer(None, "gone: the Slack webhook was removed")
    subject, text = describe(delivery.alert)
    link = alerts_page_url(delivery.alert)
    message = f"*{_slack_escape(subject)}*\n{_slack_escape(text)}\n{link}"
    body = json.dumps({"text": message}).encode()
    url = open_secret(ciphertext=bytes(slack.ciphertext), context=slack.vault_context())
    return outbound.post_json(url, body, {}, slack=True)


@sensitive_variables("secret", "headers")
def _send_webhook(delivery: Delivery) -> outbound.Answer:
    webhook = delivery.webhook
    body = payload(delivery.alert)
    secret = open_secret(ciphertext=bytes(webhook.ciphertext), context=webhook.vault_context())
    headers = {
        SIGNATURE_HEADER: signature(secret, int(time.time()), body),
        "Costr-Event-Id": delivery.alert.public_id,
    }
    return outbound.post_json(webhook.url, body, headers)


SENDERS = {Channel.EMAIL: _send_email, Channel.SLACK: _send_slack, Channel.WEBHOOK: _send_webhook}


def _claim(organization_id: int, delivery_id: int, now: datetime) -> bool:
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    return bool(
        Delivery.objects.for_org(organization_id)
        .filter(due, pk=delivery_id, state=DeliveryState.PENDING)
        .update(next_attempt_at=now + lease(), attempts=F("attempts") + 1)
    )


def delivery_attempt(organization_id: int, delivery_id: int, now: datetime | None = None):
    """One attempt at a delivery if it is pending and due (else nothing: another copy of the
    message, or the sweep, has it). Returns the row as it stands afterwards, or None when there
    was nothing to do."""
    now = now or timezone.now()
    if not _claim(organization_id, delivery_id, now):
        return None
    delivery = (
        Delivery.objects.for_org(organization_id)
        .select_related("alert__organization", "webhook")
        .get(pk=delivery_id)
    )
    answer = SENDERS[delivery.channel](delivery)
    deadline = delivery.alert.created_at + GIVE_UP_AFTER
    finished = max(now, timezone.now())
    changes = {"last_status": answer.status, "last_error": answer.error[:300]}
    if answer.ok:
        changes.update(state=DeliveryState.DELIVERED, delivered_at=finished, next_attempt_at=None)
    elif answer.error.startswith("gone:") or finished >= deadline:
        changes.update(state=DeliveryState.FAILED, next_attempt_at=None)
    else:
        changes["next_attempt_at"] = min(finished + backoff(delivery.attempts), deadline)
    with transaction.atomic():
        Delivery.objects.for_org(organization_id).filter(
            pk=delivery_id, state=DeliveryState.PENDING
        ).update(**changes)
    if not answer.ok:
        logger.info(
            "delivery %s of alert %s (%s), attempt %d: %s",
            delivery_id,
            delivery.alert.public_id,
            delivery.channel,
            delivery.attempts,
            answer.error,
        )
    delivery.refresh_from_db()
    return delivery


def deliveries_due(now: datetime, grace: timedelta) -> list[tuple[int, int]]:
    """(organization id, delivery id) of every pending delivery due for longer than ``grace``
    (its own message, queued with a countdown, normally takes it first)."""
    return list(
        Delivery.objects.unscoped(reason="the sweep resends every org's due deliveries")
        .filter(state=DeliveryState.PENDING, next_attempt_at__lte=now - grace)
        .order_by("next_attempt_at")
        .values_list("organization_id", "pk")[:1000]
    )
