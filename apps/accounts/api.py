"""The DRF base every organization-scoped API view stands on."""

from django.http import Http404
from rest_framework import exceptions
from rest_framework.views import APIView

from apps.accounts.models import Organization, role_at_least
from apps.accounts.selectors import membership_for
from apps.accounts.tenancy import ScopedQuerysetMixin


class OrganizationAPIView(ScopedQuerysetMixin, APIView):
    """Resolves the organization, checks membership and role, and scopes every queryset.

    A session user names the organization in the URL (``org_slug``); someone who is not a member
    gets 404, as if it did not exist. Token authentication (a later layer) supplies the
    organization through ``request.auth.organization``. ``get_queryset`` is final: subclasses
    narrow it in ``scope_queryset``.
    """

    required_role = "member"
    write_role = "admin"

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.organization = self.resolve_organization(request, kwargs)

    def resolve_organization(self, request, kwargs) -> Organization:
        slug = kwargs.get("org_slug")
        token_organization = getattr(request.auth, "organization", None)
        if token_organization is not None:
            if slug is not None and slug != token_organization.slug:
                raise Http404
            return token_organization
        if slug is None:
            raise exceptions.ParseError("Name the organization in the URL.")
        membership = membership_for(user=request.user, organization_slug=slug)
        if membership is None:
            raise Http404
        needed = self.required_role if request.method in ("GET", "HEAD") else self.write_role
        if not role_at_least(membership.role, needed):
            raise exceptions.PermissionDenied(f"This needs the {needed} role.")
        return membership.organization
