import io
import sys

import pytest
from django.core.management import CommandError, call_command

from apps.accounts.models import Membership, Organization, Role, User
from apps.accounts.tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db


def _run(*args, stdin=""):
    out = io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        call_command("createorg", *args, stdout=out)
    finally:
        sys.stdin = old_stdin
    return out.getvalue()


def test_without_a_password_the_owner_gets_a_working_set_password_link(client):
    output = _run("acme-labs", "--owner-email", "Boss@Acme.test")

    organization = Organization.objects.get(slug="acme-labs")
    owner = User.objects.get(email="boss@acme.test")
    assert not owner.has_usable_password()
    assert Membership.objects.for_org(organization).get(user=owner).role == Role.OWNER
    link = output.strip().splitlines()[-1].split()[-1]
    page = client.get(link.split("8000", 1)[1], follow=True)
    assert page.context["validlink"] is True


def test_password_from_stdin_lets_the_owner_log_in(client):
    _run(
        "acme-labs",
        "--owner-email",
        "boss@acme.test",
        "--password-stdin",
        stdin="a sturdy passphrase 12\n",
    )

    assert client.login(username="boss@acme.test", password="a sturdy passphrase 12")


def test_an_existing_user_becomes_owner_of_the_new_org():
    user = UserFactory(email="known@acme.test")

    _run("second-org", "--owner-email", "known@acme.test")

    assert (
        Membership.objects.for_org(Organization.objects.get(slug="second-org")).get().user == user
    )


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["taken", "--owner-email", "a@b.test"], "", "already exists"),
        (["Bad Slug", "--owner-email", "a@b.test"], "", "lowercase"),
        (["good-slug", "--owner-email", "not-an-email"], "", "valid e-mail"),
        (["good-slug", "--owner-email", "a@b.test", "--password-stdin"], "", "empty"),
        (["good-slug", "--owner-email", "a@b.test", "--password-stdin"], "123\n", "short"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(args, stdin, message):
    OrganizationFactory(slug="taken")
    before = (Organization.objects.count(), User.objects.count())

    with pytest.raises(CommandError, match=message):
        _run(*args, stdin=stdin)

    assert (Organization.objects.count(), User.objects.count()) == before
