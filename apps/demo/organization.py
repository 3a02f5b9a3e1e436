"""The demo organization itself: created with its owner's log-in, and destroyed at once by the
account deletion path so that ``costr_demo --reset`` can build it again under the same slug."""

from __future__ import annotations

import secrets

from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Membership, Organization, User
from apps.accounts.services import (
    organization_create,
    organization_deletion_mark,
    user_signup,
)
from apps.keys.models import ProxyToken
from apps.keys.services import (
    organization_secrets_destroy,
    provider_key_create,
    proxy_token_create,
    proxy_token_revoke,
)
from apps.usage.lifecycle import organization_data_delete

DEMO_SLUG = "demo"
DEMO_OWNER_EMAIL = "demo@example.com"


def demo_organization_destroy(*, organization: Organization) -> None:
    """Everything of an earlier demo organization, at once: the account deletion path (marked
    out of reach, secrets destroyed, data deleted in batches, the row last), run here rather
    than queued, so the slug is free when this returns."""
    if organization.deletion_requested_at is None:
        with transaction.atomic():
            organization_deletion_mark(organization=organization, actor=None)
            organization_secrets_destroy(organization=organization)
    while not organization_data_delete(organization_id=organization.pk, max_batches=1000):
        pass


@sensitive_variables("password")
def demo_organization_create(*, slug: str, email: str, password: str) -> Organization:
    """The demo organization, owned by ``email`` with ``password`` (an existing person with that
    address is reused and gets the new password)."""
    with transaction.atomic():
        owner = User.objects.filter(email__iexact=email).first()
        if owner is None:
            _, organization = user_signup(
                email=email,
                password=password,
                name="Demo Owner",
                organization_name="Demo Inc.",
                organization_slug=slug,
            )
            return organization
        # accounts has no service that sets a password: the model method Django's own
        # password-reset form calls.
        owner.set_password(password)
        owner.save(update_fields=["password"])
        return organization_create(name="Demo Inc.", slug=slug, owner=owner)


# Made-up keys in each provider's shape (the key pages show them like real ones); none works at
# a provider, so the demo's tokens forward nothing.
_DEMO_KEY_SHAPES = {
    "openai": lambda: "sk-proj-demo" + secrets.token_hex(20),
    "anthropic": lambda: "sk-ant-api03-demo" + secrets.token_hex(20),
    "google": lambda: "AIzaDemo" + secrets.token_hex(16)[:31],
}


def demo_credentials_create(*, organization: Organization) -> ProxyToken:
    """What a real organization has beside its traffic: a provider key per provider (made up,
    labelled so), a proxy token its traffic came through, a read token for a dashboard script,
    and a revoked proxy token (an old cron job's, which still calls: the refused requests).
    Returns the token the traffic is attributed to."""
    owner = Membership.objects.for_org(organization).select_related("user").get().user
    for provider, make in _DEMO_KEY_SHAPES.items():
        provider_key_create(
            organization=organization,
            provider=provider,
            key=make(),
            label="Demo: not a real key",
            actor=owner,
        )
    production = proxy_token_create(
        organization=organization, name="Production", scopes=["proxy"], actor=owner
    )
    proxy_token_create(
        organization=organization, name="Dashboard script", scopes=["read"], actor=owner
    )
    old = proxy_token_create(
        organization=organization, name="Old cron job", scopes=["proxy"], actor=owner
    )
    proxy_token_revoke(token=old.token, actor=owner)
    return production.token
