"""Every organization page, walked as a stranger and as nobody.

The URL list comes from the URLconf itself, so pages added later are covered without editing
this file.
"""

import pytest

from apps.accounts.models import Membership, Role
from apps.accounts.services import invitation_create
from apps.accounts.tests.factories import MembershipFactory
from tests.urlconf import org_page_urls

pytestmark = pytest.mark.django_db


def _tenant_models():
    from django.apps import apps

    from apps.accounts.tenancy import TenantModel

    return [m for m in apps.get_models() if issubclass(m, TenantModel)]


@pytest.fixture
def victim(org, owner, admin, member):
    """An organization with a row of every kind its pages can name by id."""
    from apps.keys import services as keys
    from apps.keys.tests.factories import openai_key

    invitation_create(organization=org, email="new@example.com", role=Role.MEMBER, invited_by=owner)
    keys.provider_key_create(organization=org, provider="openai", key=openai_key(), actor=owner)
    keys.provider_key_create(organization=org, provider="openai", key=openai_key(), actor=owner)
    keys.proxy_token_create(organization=org, name="victim", scopes=["proxy"], actor=owner)
    ids = sorted(
        {
            pk
            for model in _tenant_models()
            for pk in model.objects.for_org(org).values_list("pk", flat=True)
        }
    )
    return org, ids


def _snapshot(org):
    """Every tenant row of the org, every field: a refused request must change none of it."""
    return {
        model.__name__: sorted(map(repr, model.objects.for_org(org).values_list()))
        for model in _tenant_models()
    }


@pytest.mark.parametrize("method", ["get", "post"])
def test_a_member_of_another_org_gets_404_on_every_org_page(client, victim, outsider, method):
    org, ids = victim
    client.force_login(outsider)
    before = _snapshot(org)

    for url in org_page_urls(org.slug, ids):
        response = getattr(client, method)(url, {"role": "owner", "email": "x@example.com"})
        assert response.status_code == 404, (method, url, response.status_code)

    assert _snapshot(org) == before


@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_is_sent_to_log_in_on_every_org_page(client, victim, method):
    org, ids = victim
    before = _snapshot(org)

    for url in org_page_urls(org.slug, ids):
        response = getattr(client, method)(url, {"role": "owner"})
        assert response.status_code == 302, (method, url, response.status_code)
        assert response["Location"].startswith("/login/"), url

    assert _snapshot(org) == before


def test_an_unknown_org_is_404_too(client, outsider):
    client.force_login(outsider)

    assert client.get("/app/no-such-org/").status_code == 404


def test_an_id_of_another_org_is_404_inside_ones_own_org(client, org, owner, other_org):
    stranger = MembershipFactory(organization=other_org)
    client.force_login(owner)

    for name in ("member_role", "member_remove"):
        from django.urls import reverse

        url = reverse(name, args=[org.slug, stranger.pk])
        assert client.post(url, {"role": "admin"}).status_code == 404
    stranger.refresh_from_db()
    assert stranger.role == Role.MEMBER
    assert Membership.objects.for_org(other_org).filter(pk=stranger.pk).exists()
