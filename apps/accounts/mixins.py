"""The tenancy of views: the organization and membership come from the URL and the signed-in
person, never from the session, and querysets start from the organization's rows and can only
be narrowed. (The model side, ``TenantModel`` and its fail-closed manager, is in ``tenancy``.)
"""

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404

from apps.accounts.selectors import membership_for


class ScopedQuerysetMixin:
    """``get_queryset`` that cannot be widened: the organization's rows of ``model``, narrowed
    further in ``scope_queryset``. Set ``self.organization`` before using it."""

    model = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "get_queryset" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must narrow querysets in scope_queryset()")

    def get_queryset(self):
        return self.scope_queryset(self.model.objects.for_org(self.organization))

    def scope_queryset(self, queryset):
        return queryset


class OrganizationViewMixin(ScopedQuerysetMixin):
    """For dashboard views under ``/app/<org_slug>/``.

    Resolves the organization from the URL, never from the session; requires a membership
    (anyone else gets 404, as if the organization did not exist) and a role: ``required_role`` for
    safe methods, ``write_role`` for the rest. Querysets come from ``get_queryset``, which is
    final: subclasses narrow it in ``scope_queryset`` and cannot widen it.
    """

    required_role = "member"
    write_role = "admin"

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        membership = membership_for(user=request.user, organization_slug=kwargs["org_slug"])
        if membership is None:
            raise Http404("No such organization")
        needed = self.required_role if request.method in ("GET", "HEAD") else self.write_role
        if not membership.has_role(needed):
            raise PermissionDenied(f"This needs the {needed} role.")
        self.membership = membership
        self.organization = membership.organization
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["organization"] = self.organization
        context["membership"] = self.membership
        return context
