"""Tenancy that cannot be forgotten.

Every model owned by an organization inherits ``TenantModel``. Its default manager fails closed:
a queryset that was never scoped to an organization raises ``TenantScopeError`` when it is
evaluated, instead of quietly returning every tenant's rows. The ways to scope are explicit and
greppable: ``.for_org(org)``, a filter on ``organization``, a related manager reached from a row
that was itself scoped, or ``.unscoped(reason="…")`` for the rare cross-tenant job.
"""

from django.db import models


class TenantScopeError(RuntimeError):
    """A query over tenant-owned rows ran without naming an organization."""


_SCOPING_LOOKUPS = ("organization", "organization_id")


def _names_organization(kwargs) -> bool:
    return any(key.split("__", 1)[0] in _SCOPING_LOOKUPS for key in kwargs)


class TenantQuerySet(models.QuerySet):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tenant_scoped = False

    def _clone(self):
        clone = super()._clone()
        clone._tenant_scoped = self._tenant_scoped
        return clone

    def _scoped(self):
        clone = self._chain()
        clone._tenant_scoped = True
        return clone

    def for_org(self, organization):
        """Rows of one organization: the normal way in."""
        return self.filter(organization=organization)

    def unscoped(self, *, reason: str):
        """Rows of every organization, for jobs that truly span tenants. Say why."""
        if not reason or not reason.strip():
            raise ValueError("unscoped() needs a reason")
        return self._scoped()

    def _filter_or_exclude(self, negate, args, kwargs):
        clone = super()._filter_or_exclude(negate, args, kwargs)
        if not negate and _names_organization(kwargs):
            clone._tenant_scoped = True
        return clone

    def _check_scope(self):
        if not self._tenant_scoped:
            raise TenantScopeError(
                f"Query on {self.model.__name__} has no organization in scope: use "
                f".for_org(org), filter(organization=…) or .unscoped(reason=…)."
            )

    def _fetch_all(self):
        if self._result_cache is None:
            self._check_scope()
        super()._fetch_all()

    def iterator(self, *args, **kwargs):
        self._check_scope()
        return super().iterator(*args, **kwargs)

    def count(self):
        self._check_scope()
        return super().count()

    def exists(self):
        self._check_scope()
        return super().exists()

    def aggregate(self, *args, **kwargs):
        self._check_scope()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs):
        self._check_scope()
        return super().update(**kwargs)

    def delete(self):
        self._check_scope()
        return super().delete()

    def in_bulk(self, *args, **kwargs):
        self._check_scope()
        return super().in_bulk(*args, **kwargs)


class TenantManager(models.Manager.from_queryset(TenantQuerySet)):
    def get_queryset(self):
        queryset = super().get_queryset()
        # A related manager (``user.memberships``) is already narrowed to rows of a parent that
        # was itself reached through a scoped query.
        if hasattr(self, "core_filters"):
            queryset._tenant_scoped = True
        return queryset


class TenantModel(models.Model):
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="+"
    )

    objects = TenantManager()

    class Meta:
        abstract = True


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
        from django.contrib.auth.views import redirect_to_login
        from django.core.exceptions import PermissionDenied
        from django.http import Http404

        from apps.accounts.selectors import membership_for

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
