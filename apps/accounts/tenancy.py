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


# Lookups that name exactly one organization: equality on its key, or on a unique field of it.
# A lookup such as ``organization__isnull=False`` or ``organization__name__contains`` names
# none in particular, so it scopes nothing.
_SCOPING_LOOKUPS = frozenset(
    {
        "organization",
        "organization__exact",
        "organization_id",
        "organization_id__exact",
        "organization__pk",
        "organization__id",
        "organization__slug",
    }
)


def _names_organization(kwargs) -> bool:
    return any(key in _SCOPING_LOOKUPS and value is not None for key, value in kwargs.items())


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
