"""Writes for the alert channels: signed webhooks, the Slack incoming webhook, e-mail on or off.

Each leaves an AuditEvent naming what changed, never a secret: a webhook's signing secret is
returned once, by ``webhook_create``, and then only its ciphertext exists; a Slack URL (whoever
holds it can post to the channel) is kept encrypted and shown by its last four characters.
"""

import secrets
from dataclasses import dataclass

from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Organization, User
from apps.accounts.services import audit_event_record
from apps.budgets import outbound
from apps.budgets.models import AlertSettings, EventType, SlackWebhook, Webhook
from apps.keys.keyring import seal

MAX_WEBHOOKS = 20
SECRET_PREFIX = "whsec_"  # noqa: S105 -- a prefix, not a secret


class ChannelError(Exception):
    """Refused input about an alert channel: ``errors`` maps each field to what is wrong."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class CreatedWebhook:
    webhook: Webhook
    secret: str  # shown once, never stored in the clear

    def __repr__(self):
        return f"CreatedWebhook({self.webhook.public_id})"


def clean_events(value) -> list[str]:
    if not isinstance(value, list | tuple) or not value:
        names = ", ".join(EventType.values)
        raise ChannelError({"events": f"Choose at least one event type: {names}."})
    chosen = []
    for item in value:
        if item not in EventType.values:
            names = ", ".join(EventType.values)
            raise ChannelError({"events": f"Unknown event type {item!r}; choose from {names}."})
        if item not in chosen:
            chosen.append(item)
    return [event for event in EventType.values if event in chosen]


def clean_webhook_url(value) -> str:
    if not isinstance(value, str):
        raise ChannelError({"url": "Give the URL as a string."})
    try:
        outbound.check_url(value)
    except outbound.UnsafeURL as refusal:
        raise ChannelError({"url": str(refusal)}) from None
    return value.strip()


@sensitive_variables("secret")
def webhook_create(
    *, organization: Organization, actor: User | None, ip: str | None = None, url, events
) -> CreatedWebhook:
    url = clean_webhook_url(url)
    events = clean_events(events)
    with transaction.atomic():
        # Taken under the organization's row lock, so two creations at once cannot both pass
        # the limit.
        Organization.objects.select_for_update().filter(pk=organization.pk).first()
        if Webhook.objects.for_org(organization).count() >= MAX_WEBHOOKS:
            raise ChannelError(
                {"url": f"An organization can have at most {MAX_WEBHOOKS} webhooks."}
            )
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        webhook = Webhook(
            organization=organization,
            url=url,
            events=events,
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        seal(webhook, secret)
        webhook.save()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="webhook.created",
            target=webhook.public_id,
            ip=ip,
            details={"url": url, "events": events},
        )
    return CreatedWebhook(webhook=webhook, secret=secret)


def webhook_delete(*, webhook: Webhook, actor: User | None, ip: str | None = None) -> None:
    """Deletes the webhook with its delivery log (its pending deliveries stop)."""
    with transaction.atomic():
        organization, public_id, url = webhook.organization, webhook.public_id, webhook.url
        webhook.delete()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="webhook.deleted",
            target=public_id,
            ip=ip,
            details={"url": url},
        )


@sensitive_variables("url")
def slack_webhook_set(
    *, organization: Organization, actor: User | None, ip: str | None = None, url
) -> SlackWebhook:
    """Sets or replaces the organization's Slack incoming webhook."""
    if not isinstance(url, str):
        raise ChannelError({"slack_url": "Give the URL as a string."})
    try:
        # Not resolved here: the host is Slack's own (or the deployment allows any), and the
        # addresses are checked when each message is sent.
        outbound.check_url(url, slack=True, resolve=False)
    except outbound.UnsafeURL as refusal:
        raise ChannelError({"slack_url": str(refusal)}) from None
    url = url.strip()
    with transaction.atomic():
        replaced = SlackWebhook.objects.for_org(organization).delete()[0] > 0
        slack = SlackWebhook(organization=organization, last4=url[-4:])
        seal(slack, url)
        slack.save()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="slack_webhook.replaced" if replaced else "slack_webhook.set",
            target=f"…{slack.last4}",
            ip=ip,
        )
    return slack


def slack_webhook_remove(
    *, organization: Organization, actor: User | None, ip: str | None = None
) -> bool:
    with transaction.atomic():
        slack = SlackWebhook.objects.for_org(organization).first()
        if slack is None:
            return False
        last4 = slack.last4
        slack.delete()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="slack_webhook.removed",
            target=f"…{last4}",
            ip=ip,
        )
    return True


def alert_settings_of(organization: Organization) -> AlertSettings:
    """The organization's settings, unsaved defaults when it never changed them."""
    found = AlertSettings.objects.for_org(organization).first()
    return found or AlertSettings(organization=organization)


def alert_email_set(
    *, organization: Organization, actor: User | None, ip: str | None = None, enabled: bool
) -> AlertSettings:
    with transaction.atomic():
        current, _ = AlertSettings.objects.for_org(organization).get_or_create(
            organization=organization
        )
        if current.email_admins == enabled:
            return current
        current.email_admins = enabled
        current.save(update_fields=["email_admins"])
        audit_event_record(
            organization=organization,
            actor=actor,
            action="alerts.email_enabled" if enabled else "alerts.email_disabled",
            target="e-mail to admins",
            ip=ip,
        )
    return current
