"""Reads for accounts."""

from datetime import UTC, date, datetime, time, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from apps.accounts.models import AuditEvent, Invitation, Membership, Organization, User


def memberships_of_user(*, user: User) -> QuerySet[Membership]:
    return (
        user.memberships.select_related("organization")
        .filter(organization__deletion_requested_at__isnull=True)
        .order_by("organization__name")
    )


def membership_for(*, user: User, organization_slug: str) -> Membership | None:
    if not user.is_authenticated:
        return None
    return (
        user.memberships.select_related("organization")
        .filter(organization__slug=organization_slug, organization__deletion_requested_at=None)
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


def organization_audit_events(
    *,
    organization: Organization,
    action: str = "",
    actor: str = "",
    start: date | None = None,
    end: date | None = None,
) -> QuerySet[AuditEvent]:
    """The organization's audit events, newest first; ``start`` and ``end`` are whole UTC days."""
    events = AuditEvent.objects.for_org(organization).select_related("actor")
    if action:
        events = events.filter(action=action)
    if actor:
        events = events.filter(actor_label__icontains=actor)
    if start:
        events = events.filter(created_at__gte=datetime.combine(start, time.min, tzinfo=UTC))
    if end:
        after = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
        events = events.filter(created_at__lt=after)
    return events


def organization_audit_actions(*, organization: Organization) -> list[str]:
    # order_by() first: the model's ordering would otherwise join DISTINCT and repeat actions.
    return list(
        AuditEvent.objects.for_org(organization)
        .order_by("action")
        .values_list("action", flat=True)
        .distinct()
    )


def organization_for_command(slug: str) -> Organization:
    """The organization a management command names, or a CommandError that says so."""
    from django.core.management import CommandError

    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise CommandError(f"No organization with the slug {slug!r}.")
    if organization.deletion_requested_at is not None:
        raise CommandError(f"{slug} is being deleted.")
    return organization
