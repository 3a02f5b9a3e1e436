"""The DRF base class, exercised through a small view of memberships mounted only for this test."""

import pytest
from django.urls import path
from rest_framework.response import Response

from apps.accounts.api import OrganizationAPIView
from apps.accounts.models import Membership
from apps.accounts.tests.factories import MembershipFactory

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


class MembershipIds(OrganizationAPIView):
    model = Membership

    def get(self, request, org_slug):
        return Response(sorted(self.get_queryset().values_list("pk", flat=True)))

    def post(self, request, org_slug):
        return Response({"changed": True})


urlpatterns = [path("api/test/<slug:org_slug>/memberships/", MembershipIds.as_view())]


def test_a_member_sees_only_rows_of_the_org_in_the_url(client, org, other_org, member):
    MembershipFactory(organization=other_org)
    client.force_login(member)

    response = client.get(f"/api/test/{org.slug}/memberships/")

    assert response.status_code == 200
    assert response.json() == sorted(Membership.objects.for_org(org).values_list("pk", flat=True))


def test_a_member_of_another_org_gets_404(client, org, member, outsider):
    client.force_login(outsider)

    assert client.get(f"/api/test/{org.slug}/memberships/").status_code == 404


def test_anonymous_is_refused(client, org, member):
    assert client.get(f"/api/test/{org.slug}/memberships/").status_code in (401, 403)


def test_writes_need_the_write_role(client, org, member, admin):
    client.force_login(member)
    assert client.post(f"/api/test/{org.slug}/memberships/").status_code == 403

    client.force_login(admin)
    assert client.post(f"/api/test/{org.slug}/memberships/").json() == {"changed": True}
