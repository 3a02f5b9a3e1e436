"""The demo organization itself: created with its owner's log-in, and destroyed at once by the
account deletion path so that ``costr_demo --reset`` can build it again under the same slug."""

from __future__ import annotations

from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Organization, User
from apps.accounts.services import (
    organization_create,
    organization_deletion_mark,
    user_signup,
)
from apps.keys.services import organization_secrets_destroy
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
