import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent, Invitation, Membership, Role

pytestmark = pytest.mark.django_db


def _role(org, user):
    return Membership.objects.for_org(org).get(user=user).role


def test_members_page_lists_everyone_to_a_member(client, org, owner, admin, member):
    client.force_login(member)

    response = client.get(reverse("members", args=[org.slug]))

    assert response.status_code == 200
    listed = {m.user for m in response.context["members"]}
    assert listed == {owner, admin, member}
    assert response.context["can_manage"] is False


def test_a_member_cannot_invite(client, org, member):
    client.force_login(member)

    response = client.post(reverse("members", args=[org.slug]), {"email": "x@example.com"})

    assert response.status_code == 403
    assert not Invitation.objects.for_org(org).exists()


def test_a_member_cannot_change_roles(client, org, member, admin):
    client.force_login(member)
    target = Membership.objects.for_org(org).get(user=admin)

    response = client.post(reverse("member_role", args=[org.slug, target.pk]), {"role": "member"})

    assert response.status_code == 403
    assert _role(org, admin) == Role.ADMIN


def test_a_member_cannot_remove_someone_else(client, org, member, admin):
    client.force_login(member)
    target = Membership.objects.for_org(org).get(user=admin)
    url = reverse("member_remove", args=[org.slug, target.pk])

    assert client.get(url).status_code == 403
    assert client.post(url).status_code == 403
    assert Membership.objects.for_org(org).filter(pk=target.pk).exists()


def test_an_admin_changes_a_members_role_and_it_is_audited(client, org, admin, member):
    client.force_login(admin)
    target = Membership.objects.for_org(org).get(user=member)

    client.post(reverse("member_role", args=[org.slug, target.pk]), {"role": "admin"})

    assert _role(org, member) == Role.ADMIN
    event = AuditEvent.objects.for_org(org).get(action="membership.role_changed")
    assert event.actor == admin
    assert event.details == {"from": "member", "to": "admin"}


def test_an_admin_cannot_make_an_owner(client, org, admin, member):
    client.force_login(admin)
    target = Membership.objects.for_org(org).get(user=member)

    client.post(reverse("member_role", args=[org.slug, target.pk]), {"role": "owner"})

    assert _role(org, member) == Role.MEMBER


def test_an_admin_cannot_demote_or_remove_an_owner(client, org, admin, owner):
    client.force_login(admin)
    target = Membership.objects.for_org(org).get(user=owner)

    client.post(reverse("member_role", args=[org.slug, target.pk]), {"role": "member"})
    client.post(reverse("member_remove", args=[org.slug, target.pk]))

    assert _role(org, owner) == Role.OWNER


def test_the_last_owner_cannot_leave_or_be_demoted(client, org, owner):
    client.force_login(owner)
    mine = Membership.objects.for_org(org).get(user=owner)

    client.post(reverse("member_role", args=[org.slug, mine.pk]), {"role": "admin"})
    response = client.post(reverse("member_remove", args=[org.slug, mine.pk]), follow=True)

    assert _role(org, owner) == Role.OWNER
    assert "last owner" in response.content.decode()


def test_an_owner_can_step_down_once_there_is_another_owner(client, org, owner, admin):
    client.force_login(owner)
    other = Membership.objects.for_org(org).get(user=admin)
    mine = Membership.objects.for_org(org).get(user=owner)

    client.post(reverse("member_role", args=[org.slug, other.pk]), {"role": "owner"})
    client.post(reverse("member_role", args=[org.slug, mine.pk]), {"role": "member"})

    assert (_role(org, admin), _role(org, owner)) == (Role.OWNER, Role.MEMBER)


def test_a_member_can_leave_after_confirming(client, org, owner, member):
    client.force_login(member)
    mine = Membership.objects.for_org(org).get(user=member)
    url = reverse("member_remove", args=[org.slug, mine.pk])

    assert "Leave" in client.get(url).content.decode()
    assert Membership.objects.for_org(org).filter(pk=mine.pk).exists()  # GET only asks
    response = client.post(url)

    assert response["Location"] == reverse("app")
    assert not Membership.objects.for_org(org).filter(user=member).exists()
    assert client.get(reverse("org_home", args=[org.slug])).status_code == 404


def test_an_admin_removes_a_member(client, org, admin, member):
    client.force_login(admin)
    target = Membership.objects.for_org(org).get(user=member)

    client.post(reverse("member_remove", args=[org.slug, target.pk]))

    assert not Membership.objects.for_org(org).filter(user=member).exists()
    assert (
        AuditEvent.objects.for_org(org)
        .filter(action="membership.removed", target=member.email)
        .exists()
    )
