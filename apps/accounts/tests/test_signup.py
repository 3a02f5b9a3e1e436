import pytest
from django.urls import reverse

from apps.accounts import services
from apps.accounts.models import AuditEvent, Membership, Organization, Role, User
from apps.accounts.tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

GOOD = {
    "email": "Ada@Example.com",
    "name": "Ada",
    "password": "correct horse battery 42",
    "organization_name": "Analytical Engines",
    "organization_slug": "",
}


def _counts():
    return (
        User.objects.count(),
        Organization.objects.count(),
        Membership.objects.unscoped(reason="test counts every row").count(),
    )


def test_signup_creates_user_org_and_owner_membership_then_lands_on_org_home(client):
    response = client.post(reverse("signup"), GOOD)

    organization = Organization.objects.get()
    assert organization.slug == "analytical-engines"
    assert response.status_code == 302
    assert response["Location"] == reverse("org_home", args=[organization.slug])
    user = User.objects.get()
    assert user.email == "ada@example.com"
    assert user.check_password(GOOD["password"])
    membership = Membership.objects.for_org(organization).get()
    assert (membership.user, membership.role) == (user, Role.OWNER)
    assert AuditEvent.objects.for_org(organization).filter(action="organization.created").exists()
    # The person is logged in and the org page answers.
    assert client.get(response["Location"]).status_code == 200


def test_duplicate_email_is_a_form_error_and_creates_nothing(client):
    UserFactory(email="ada@example.com")
    before = _counts()

    response = client.post(reverse("signup"), {**GOOD, "organization_slug": "fresh-org"})

    assert response.status_code == 200
    assert "already exists" in response.context["form"].errors["email"][0]
    assert _counts() == before


def test_duplicate_slug_is_a_form_error_and_creates_nothing(client):
    OrganizationFactory(slug="taken-org")
    before = _counts()

    response = client.post(reverse("signup"), {**GOOD, "organization_slug": "taken-org"})

    assert response.status_code == 200
    assert "already taken" in response.context["form"].errors["organization_slug"][0]
    assert _counts() == before


@pytest.mark.parametrize("slug", ["ab", "-abc", "abc-", "ab!c", "a_b_c", "new", "admin"])
def test_invalid_or_reserved_slug_is_refused(client, slug):
    response = client.post(reverse("signup"), {**GOOD, "organization_slug": slug})

    assert response.status_code == 200
    assert response.context["form"].errors["organization_slug"]
    assert _counts() == (0, 0, 0)


def test_weak_password_is_refused(client):
    response = client.post(reverse("signup"), {**GOOD, "password": "12345678"})

    assert response.context["form"].errors["password"]
    assert _counts() == (0, 0, 0)


def test_signup_is_all_or_nothing_when_the_database_refuses_the_organization():
    """A race the form cannot see (slug taken between check and insert) leaves no user behind."""
    OrganizationFactory(slug="raced-slug")
    before = _counts()

    with pytest.raises(services.AccountsError, match="already taken"):
        services.user_signup(
            email="late@example.com",
            password="correct horse battery 42",
            organization_name="Raced",
            organization_slug="raced-slug",
        )

    assert _counts() == before
    assert not User.objects.filter(email="late@example.com").exists()


def test_login_uses_the_email_case_insensitively(client, password):
    user = UserFactory(email="grace@example.com")

    response = client.post(
        reverse("login"), {"username": "Grace@Example.COM", "password": password}
    )

    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_logout_needs_post_and_ends_the_session(client, member):
    client.force_login(member)

    assert client.get(reverse("logout")).status_code == 405
    client.post(reverse("logout"))

    assert "_auth_user_id" not in client.session


def test_password_reset_sends_a_working_link(client, mailoutbox):
    user = UserFactory(email="reset@example.com")

    client.post(reverse("password_reset"), {"email": "reset@example.com"})

    assert len(mailoutbox) == 1
    link = next(word for word in mailoutbox[0].body.split() if "/reset/" in word)
    path = link.split("://", 1)[1].split("/", 1)[1]
    form_page = client.get("/" + path, follow=True)
    assert form_page.context["validlink"] is True
    client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "brand new secret 77", "new_password2": "brand new secret 77"},
    )
    user.refresh_from_db()
    assert user.check_password("brand new secret 77")


def test_password_change(client, member, password):
    client.force_login(member)

    response = client.post(
        reverse("password_change"),
        {
            "old_password": password,
            "new_password1": "another good secret 5",
            "new_password2": "another good secret 5",
        },
    )

    assert response.status_code == 302
    member.refresh_from_db()
    assert member.check_password("another good secret 5")


def test_landing_page_is_public(client):
    response = client.get("/")

    assert response.status_code == 200
    assert reverse("signup") in response.content.decode()


def test_app_sends_a_person_with_one_org_there_and_with_several_to_a_chooser(
    client, owner, org, other_org
):
    client.force_login(owner)
    assert client.get(reverse("app"))["Location"] == reverse("org_home", args=[org.slug])

    Membership.objects.create(organization=other_org, user=owner, role=Role.MEMBER)
    page = client.get(reverse("app"))
    assert page.status_code == 200
    text = page.content.decode()
    assert org.name in text and other_org.name in text


def test_a_signed_in_person_creates_another_organization(client, member):
    client.force_login(member)

    response = client.post(reverse("org_create"), {"organization_name": "Second Shop"})

    organization = Organization.objects.get(slug="second-shop")
    assert response["Location"] == reverse("org_home", args=["second-shop"])
    assert Membership.objects.for_org(organization).get().user == member


def test_the_landing_page_says_which_change_costr_makes_to_requests(client):
    page = client.get(reverse("landing")).content.decode()

    assert "untouched" not in page
    assert "stream_options.include_usage</code> added" in page
    assert "On by default" in page or "on by default" in page
