from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import Invitation, Membership, Role
from apps.accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _invite(client, org, inviter, email="new@example.com", role="member"):
    client.force_login(inviter)
    client.post(reverse("members", args=[org.slug]), {"email": email, "role": role})
    client.logout()
    return Invitation.objects.for_org(org).get(email=email)


def _link_path(mail):
    link = next(word for word in mail.body.split() if "/invite/" in word)
    return "/" + link.split("://", 1)[1].split("/", 1)[1]


def test_an_admin_invites_by_email_and_the_invitee_joins(client, org, admin, mailoutbox):
    invitation = _invite(client, org, admin, role="admin")
    path = _link_path(mailoutbox[0])
    assert mailoutbox[0].to == ["new@example.com"]
    invitee = UserFactory(email="new@example.com")
    client.force_login(invitee)

    assert org.name in client.get(path).content.decode()
    response = client.post(path)

    assert response["Location"] == reverse("org_home", args=[org.slug])
    membership = Membership.objects.for_org(org).get(user=invitee)
    assert membership.role == Role.ADMIN
    invitation.refresh_from_db()
    assert invitation.accepted_by == invitee


def test_an_invitation_link_cannot_be_used_twice(client, org, admin, mailoutbox):
    _invite(client, org, admin)
    path = _link_path(mailoutbox[0])
    invitee = UserFactory(email="new@example.com")
    client.force_login(invitee)
    client.post(path)
    Membership.objects.for_org(org).filter(user=invitee).delete()  # even after leaving

    response = client.post(path)

    assert response.status_code == 400
    assert "already been used" in response.content.decode()
    assert not Membership.objects.for_org(org).filter(user=invitee).exists()


def test_an_expired_invitation_is_refused(client, org, admin, mailoutbox):
    invitation = _invite(client, org, admin)
    path = _link_path(mailoutbox[0])
    Invitation.objects.for_org(org).filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    client.force_login(UserFactory(email="new@example.com"))

    assert client.get(path).status_code == 410
    assert client.post(path).status_code == 400
    assert Membership.objects.for_org(org).count() == 1


def test_an_expired_signature_is_refused(client, org, admin, mailoutbox, settings):
    _invite(client, org, admin)
    path = _link_path(mailoutbox[0])
    settings.COSTR_INVITATION_MAX_AGE_DAYS = -1
    client.force_login(UserFactory(email="new@example.com"))

    response = client.post(path)

    assert "expired" in response.content.decode()
    assert Membership.objects.for_org(org).count() == 1


def test_a_forged_or_mangled_link_is_refused(client, org, admin, mailoutbox):
    invitation = _invite(client, org, admin)
    client.force_login(UserFactory(email="new@example.com"))
    forged = services.invitation_token(invitation)[:-2] + "xx"

    response = client.post(reverse("invitation_accept", args=[forged]))

    assert "not valid" in response.content.decode()
    assert Membership.objects.for_org(org).count() == 1


def test_an_invitation_for_someone_else_is_refused(client, org, admin, mailoutbox):
    _invite(client, org, admin)
    path = _link_path(mailoutbox[0])
    intruder = UserFactory(email="intruder@example.com")
    client.force_login(intruder)

    response = client.post(path)

    assert response.status_code == 400
    assert not Membership.objects.for_org(org).filter(user=intruder).exists()


def test_a_withdrawn_invitation_is_refused(client, org, admin, mailoutbox):
    invitation = _invite(client, org, admin)
    path = _link_path(mailoutbox[0])
    client.force_login(admin)
    client.post(reverse("invitation_revoke", args=[org.slug, invitation.pk]))
    client.force_login(UserFactory(email="new@example.com"))

    assert "withdrawn" in client.post(path).content.decode()
    assert Membership.objects.for_org(org).count() == 1


def test_inviting_an_existing_member_is_a_form_error(client, org, admin, member):
    client.force_login(admin)

    response = client.post(
        reverse("members", args=[org.slug]), {"email": member.email, "role": "member"}
    )

    assert response.status_code == 400
    assert "already a member" in response.content.decode()
    assert not Invitation.objects.for_org(org).exists()


def test_an_anonymous_visitor_is_offered_signup_with_the_address(client, org, admin, mailoutbox):
    _invite(client, org, admin)
    path = _link_path(mailoutbox[0])

    page = client.get(path).content.decode()

    assert "email=new%40example.com" in page
    assert client.post(path)["Location"].startswith(reverse("login"))
