"""Writes for accounts: every change a person makes goes through here and leaves an AuditEvent."""

from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts import legal
from apps.accounts.models import (
    AuditEvent,
    DpaAcceptance,
    Invitation,
    Membership,
    Organization,
    Role,
    User,
    retention_choices,
)

INVITATION_SALT = "costr.accounts.invitation"


class AccountsError(Exception):
    """A request that the rules refuse; the message is meant for the person who asked."""


def client_ip(request) -> str | None:
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def audit_event_record(
    *,
    organization: Organization,
    actor: User | None,
    action: str,
    target: str = "",
    ip: str | None = None,
    details: dict | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        organization=organization,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_label=actor.email if actor is not None and actor.is_authenticated else "system",
        action=action,
        target=target,
        ip=ip,
        details=details or {},
    )


def organization_create(
    *, name: str, slug: str, owner: User, ip: str | None = None
) -> Organization:
    with transaction.atomic():
        organization = Organization.objects.create(name=name, slug=slug)
        Membership.objects.create(organization=organization, user=owner, role=Role.OWNER)
        audit_event_record(
            organization=organization,
            actor=owner,
            action="organization.created",
            target=slug,
            ip=ip,
        )
    return organization


def user_signup(
    *,
    email: str,
    password: str | None,
    name: str = "",
    organization_name: str,
    organization_slug: str,
    ip: str | None = None,
) -> tuple[User, Organization]:
    """Create a person, their organization and their owner membership, all or nothing."""
    email = User.objects.normalize_email(email)
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, password=password, name=name)
            organization = organization_create(
                name=organization_name, slug=organization_slug, owner=user, ip=ip
            )
    except IntegrityError as error:
        # Two sign-ups racing for the same address or slug: the form checked, the database
        # decided. Nothing was written.
        if User.objects.filter(email__iexact=email).exists():
            raise AccountsError("An account with this e-mail address already exists.") from error
        raise AccountsError("This organization URL is already taken.") from error
    return user, organization


def user_signup_by_invitation(
    *, token: str, password: str | None, name: str = "", ip: str | None = None
) -> tuple[User, Membership]:
    """Create a person from an invitation link and make them a member of the inviting
    organization, all or nothing. The address is the invitation's, so the new account can
    accept it; no organization of their own is created."""
    invitation = invitation_from_token(token)
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=invitation.email, password=password, name=name)
            membership = invitation_accept(token=token, user=user, ip=ip)
    except IntegrityError as error:
        raise AccountsError(
            "An account with this e-mail address already exists. Log in to accept the invitation."
        ) from error
    return user, membership


def with_full_stop(text: str) -> str:
    """``text`` ending one sentence: a name that ends in a full stop ("Acme Inc.") gets no
    second one."""
    return text if text.endswith((".", "!", "?")) else f"{text}."


def invitation_create(
    *, organization: Organization, email: str, role: str, invited_by: User, ip: str | None = None
) -> Invitation:
    email = User.objects.normalize_email(email)
    if Membership.objects.for_org(organization).filter(user__email__iexact=email).exists():
        raise AccountsError(with_full_stop(f"{email} is already a member of {organization.name}"))
    if role == Role.OWNER and not _is_owner(organization, invited_by):
        raise AccountsError("Only an owner can invite another owner.")
    with transaction.atomic():
        invitation = Invitation.objects.create(
            organization=organization,
            email=email,
            role=role,
            invited_by=invited_by,
            expires_at=timezone.now() + timedelta(days=settings.COSTR_INVITATION_MAX_AGE_DAYS),
        )
        audit_event_record(
            organization=organization,
            actor=invited_by,
            action="invitation.created",
            target=email,
            ip=ip,
            details={"role": role},
        )
    return invitation


def invitation_token(invitation: Invitation) -> str:
    return signing.dumps(invitation.pk, salt=INVITATION_SALT)


def invitation_from_token(token: str) -> Invitation:
    """The pending invitation a link names, or AccountsError saying why it cannot be used."""
    max_age = timedelta(days=settings.COSTR_INVITATION_MAX_AGE_DAYS)
    try:
        invitation_id = signing.loads(token, salt=INVITATION_SALT, max_age=max_age)
    except signing.SignatureExpired as error:
        raise AccountsError("This invitation has expired. Ask for a new one.") from error
    except signing.BadSignature as error:
        raise AccountsError("This invitation link is not valid.") from error
    invitation = (
        Invitation.objects.unscoped(reason="an invitation link names its own organization")
        .select_related("organization")
        .filter(pk=invitation_id)
        .first()
    )
    if invitation is None:
        raise AccountsError("This invitation was withdrawn.")
    if invitation.accepted_at is not None:
        raise AccountsError("This invitation has already been used.")
    if invitation.expires_at <= timezone.now():
        raise AccountsError("This invitation has expired. Ask for a new one.")
    return invitation


def invitation_accept(*, token: str, user: User, ip: str | None = None) -> Membership:
    with transaction.atomic():
        invitation = invitation_from_token(token)
        # Lock the row so two clicks on the same link cannot both succeed.
        invitation = (
            Invitation.objects.for_org(invitation.organization)
            .select_for_update()
            .select_related("organization")
            .get(pk=invitation.pk)
        )
        if invitation.accepted_at is not None:
            raise AccountsError("This invitation has already been used.")
        if invitation.email != User.objects.normalize_email(user.email):
            raise AccountsError(
                f"This invitation is for {invitation.email}. Log in with that address to accept."
            )
        organization = invitation.organization
        membership, created = Membership.objects.get_or_create(
            organization=organization, user=user, defaults={"role": invitation.role}
        )
        if not created:
            raise AccountsError(with_full_stop(f"You are already a member of {organization.name}"))
        invitation.accepted_at = timezone.now()
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
        audit_event_record(
            organization=organization,
            actor=user,
            action="invitation.accepted",
            target=user.email,
            ip=ip,
            details={"role": invitation.role},
        )
    return membership


def invitation_revoke(*, invitation: Invitation, actor: User, ip: str | None = None) -> None:
    with transaction.atomic():
        organization = invitation.organization
        email = invitation.email
        invitation.delete()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="invitation.revoked",
            target=email,
            ip=ip,
        )


def _is_owner(organization: Organization, user: User) -> bool:
    return Membership.objects.for_org(organization).filter(user=user, role=Role.OWNER).exists()


def _other_owner_count(organization: Organization, membership: Membership) -> int:
    """Owners besides this one, locked so two owners cannot both step down at once."""
    # PostgreSQL refuses FOR UPDATE with COUNT(*), so the locked rows are counted here.
    return len(
        Membership.objects.for_org(organization)
        .select_for_update()
        .filter(role=Role.OWNER)
        .exclude(pk=membership.pk)
        .values_list("pk", flat=True)
    )


def membership_change_role(
    *, membership: Membership, role: str, actor: User, ip: str | None = None
) -> Membership:
    organization = membership.organization
    if role not in Role.values:
        raise AccountsError("Unknown role.")
    with transaction.atomic():
        actor_is_owner = _is_owner(organization, actor)
        if (role == Role.OWNER or membership.role == Role.OWNER) and not actor_is_owner:
            raise AccountsError("Only an owner can make or unmake owners.")
        stepping_down = membership.role == Role.OWNER and role != Role.OWNER
        if stepping_down and _other_owner_count(organization, membership) == 0:
            raise AccountsError(
                "An organization needs at least one owner. Make someone else owner first."
            )
        previous = membership.role
        membership.role = role
        membership.save(update_fields=["role"])
        audit_event_record(
            organization=organization,
            actor=actor,
            action="membership.role_changed",
            target=membership.user.email,
            ip=ip,
            details={"from": previous, "to": role},
        )
    return membership


def membership_remove(*, membership: Membership, actor: User, ip: str | None = None) -> None:
    """Remove someone from an organization (or leave it, when actor is that someone)."""
    organization = membership.organization
    with transaction.atomic():
        leaving = membership.user_id == actor.pk
        if membership.role == Role.OWNER:
            if not leaving and not _is_owner(organization, actor):
                raise AccountsError("Only an owner can remove an owner.")
            if _other_owner_count(organization, membership) == 0:
                raise AccountsError(
                    "The last owner cannot leave. Make someone else owner first, or delete the "
                    "organization."
                )
        email = membership.user.email
        membership.delete()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="membership.left" if leaving else "membership.removed",
            target=email,
            ip=ip,
        )


def invitation_email_send(*, invitation: Invitation, link: str) -> None:
    inviter = invitation.invited_by.get_full_name() if invitation.invited_by else "A teammate"
    days = settings.COSTR_INVITATION_MAX_AGE_DAYS
    send_mail(
        subject=f"Join {invitation.organization.name} on Costr",
        message=(
            f"{inviter} invited you to join {invitation.organization.name} on Costr as "
            f"{invitation.get_role_display().lower()}.\n\n"
            f"Accept the invitation: {link}\n\n"
            f"The link works once and expires in {days} days."
        ),
        from_email=None,
        recipient_list=[invitation.email],
    )


def organization_update(
    *, organization: Organization, changes: dict, actor: User, ip: str | None = None
) -> Organization:
    """Apply settings changes and record which fields changed (values are not secrets)."""
    changed = {
        field: {"from": getattr(organization, field), "to": value}
        for field, value in changes.items()
        if getattr(organization, field) != value
    }
    if not changed:
        return organization
    with transaction.atomic():
        for field, change in changed.items():
            setattr(organization, field, change["to"])
        organization.save(update_fields=list(changed))
        audit_event_record(
            organization=organization,
            actor=actor,
            action="organization.settings_changed",
            target=organization.slug,
            ip=ip,
            details=changed,
        )
    return organization


def dpa_accept(
    *, organization: Organization, version: str, actor: User, ip: str | None = None
) -> DpaAcceptance:
    """Record that ``actor`` accepted this DPA version for the organization. Accepting a version
    already accepted changes nothing and returns the first acceptance."""
    if legal.dpa_version(version) is None:
        raise AccountsError(f"There is no DPA version {version}.")
    with transaction.atomic():
        existing = DpaAcceptance.objects.for_org(organization).filter(version=version).first()
        if existing is not None:
            return existing
        event = audit_event_record(
            organization=organization,
            actor=actor,
            action="dpa.accepted",
            target=f"DPA {version}",
            ip=ip,
            details={"version": version},
        )
        try:
            with transaction.atomic():
                return DpaAcceptance.objects.create(
                    organization=organization,
                    version=version,
                    accepted_by=actor,
                    accepted_by_label=actor.email,
                    accepted_at=event.created_at,
                    ip=ip,
                    audit_event=event,
                )
        except IntegrityError:
            # Accepted at the same moment by someone else: theirs stands, this audit event goes.
            event.delete()
            return DpaAcceptance.objects.for_org(organization).get(version=version)


def organization_retention_set(
    *, organization: Organization, days: int, actor: User | None, ip: str | None = None
) -> Organization:
    """Set how many days of usage metadata the organization keeps (one of the offered choices).
    Data older than that is purged by the retention task, not here."""
    allowed = [choice for choice, _ in retention_choices()]
    if days not in allowed:
        raise AccountsError(
            f"Retention must be one of {', '.join(map(str, allowed))} days, not {days}."
        )
    previous = organization.retention_days
    if previous == days:
        return organization
    with transaction.atomic():
        organization.retention_days = days
        organization.save(update_fields=["retention_days"])
        audit_event_record(
            organization=organization,
            actor=actor,
            action="retention.changed",
            target=organization.slug,
            ip=ip,
            details={"retention_days": {"from": previous, "to": days}},
        )
    return organization


def organization_deletion_mark(
    *, organization: Organization, actor: User | None, ip: str | None = None
) -> Organization:
    """Take the organization out of reach: no page, API call or command finds it from now on.
    Deleting its secrets and then its data is the caller's next step (see usage.lifecycle)."""
    with transaction.atomic():
        locked = Organization.objects.select_for_update().get(pk=organization.pk)
        if locked.deletion_requested_at is not None:
            raise AccountsError(f"{organization.slug} is already being deleted.")
        locked.deletion_requested_at = timezone.now()
        locked.save(update_fields=["deletion_requested_at"])
        audit_event_record(
            organization=locked,
            actor=actor,
            action="organization.deletion_requested",
            target=locked.slug,
            ip=ip,
        )
    organization.deletion_requested_at = locked.deletion_requested_at
    return organization
