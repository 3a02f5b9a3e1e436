import re
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import Invitation, Membership, Organization, Role, User
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


def _signup_path(invite_path, email="new@example.com"):
    return f"{reverse('signup')}?email={email}&next={invite_path}"


def test_an_invitee_signs_up_and_joins_without_an_organization_of_their_own(
    client, org, admin, mailoutbox
):
    org.name = "Acme Inc."
    org.save(update_fields=["name"])
    _invite(client, org, admin, role="admin")
    invite_path = _link_path(mailoutbox[0])
    organizations = Organization.objects.count()

    # The invitation page's "Create an account" button leads to a form without organization
    # fields; the address is the invitation's.
    page = client.get(invite_path).content.decode()
    signup = re.search(r'href="(/signup/\?[^"]+)">Create an account', page)[1].replace("&amp;", "&")
    assert signup == f"/signup/?email=new%40example.com&next={quote(invite_path)}"
    form = client.get(signup).content.decode()
    assert "Join Acme Inc." in form
    assert 'name="organization_name"' not in form
    assert 'name="organization_slug"' not in form
    response = client.post(
        _signup_path(invite_path),
        {"name": "Newcomer", "password": "correct horse battery 42", "next": invite_path},
        follow=True,
    )

    assert response.redirect_chain == [(reverse("org_home", args=[org.slug]), 302)]
    user = User.objects.get(email="new@example.com")
    assert user.check_password("correct horse battery 42")
    assert Membership.objects.for_org(org).get(user=user).role == Role.ADMIN
    assert Organization.objects.count() == organizations
    assert (
        not Membership.objects.unscoped(reason="test")
        .filter(user=user)
        .exclude(organization=org)
        .exists()
    )
    assert Invitation.objects.for_org(org).get().accepted_by == user
    messages = [str(m) for m in response.context["messages"]]
    assert messages == ["Welcome to Costr. You joined Acme Inc."]


def test_the_invited_sign_up_uses_the_invitations_address_whatever_is_posted(
    client, org, admin, mailoutbox
):
    _invite(client, org, admin)
    invite_path = _link_path(mailoutbox[0])

    client.post(
        _signup_path(invite_path, email="intruder@example.com"),
        {
            "email": "intruder@example.com",
            "password": "correct horse battery 42",
            "next": invite_path,
        },
    )

    assert not User.objects.filter(email="intruder@example.com").exists()
    assert Membership.objects.for_org(org).filter(user__email="new@example.com").exists()


def test_an_invited_address_with_an_account_is_told_to_log_in_and_nothing_changes(
    client, org, admin, mailoutbox
):
    _invite(client, org, admin)
    invite_path = _link_path(mailoutbox[0])
    UserFactory(email="new@example.com")

    response = client.post(
        _signup_path(invite_path), {"password": "correct horse battery 42", "next": invite_path}
    )

    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert not Membership.objects.for_org(org).filter(user__email="new@example.com").exists()
    assert Invitation.objects.for_org(org).get().accepted_at is None


def test_a_used_invitation_leads_to_the_ordinary_sign_up(client, org, admin, mailoutbox):
    invitation = _invite(client, org, admin)
    invite_path = _link_path(mailoutbox[0])
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])

    form = client.get(_signup_path(invite_path)).content.decode()

    assert 'name="organization_name"' in form


def test_join_and_leave_messages_end_a_name_with_one_full_stop(client, org, admin, mailoutbox):
    org.name = "Acme Inc."
    org.save(update_fields=["name"])
    _invite(client, org, admin)
    invitee = UserFactory(email="new@example.com")
    client.force_login(invitee)

    joined = client.post(_link_path(mailoutbox[0]), follow=True)
    membership = Membership.objects.for_org(org).get(user=invitee)
    left = client.post(reverse("member_remove", args=[org.slug, membership.pk]), follow=True)

    assert [str(m) for m in joined.context["messages"]] == ["You joined Acme Inc."]
    assert [str(m) for m in left.context["messages"]] == ["You left Acme Inc."]
