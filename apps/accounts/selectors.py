"""Reads for accounts."""

from django.db.models import QuerySet
from django.utils import timezone

from apps.accounts.models import AuditEvent, Invitation, Membership, Organization, User


def memberships_of_user(*, user: User) -> QuerySet[Membership]:
    return user.memberships.select_related("organization").order_by("organization__name")


def membership_for(*, user: User, organization_slug: str) -> Membership | None:
    if not user.is_authenticated:
        return None
    return (
        user.memberships.select_related("organization")
        .filter(organization__slug=organization_slug)
        .first()
    )


def organization_members(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.for_org(organization).select_related("user").order_by("user__email")


def organization_pending_invitations(*, organization: Organization) -> QuerySet[Invitation]:
    return (
        Invitation.objects.for_org(organization)
        .filter(accepted_at__isnull=True, expires_at__gt=timezone.now())
        .select_related("invited_by")
        .order_by("-created_at")
    )


def organization_audit_events(*, organization: Organization) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.for_org(organization).select_related("actor")


def organization_for_command(slug: str) -> Organization:
    """The organization a management command names, or a CommandError that says so."""
    from django.core.management import CommandError

    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise CommandError(f"No organization with the slug {slug!r}.")
    return organization
