import pytest
from django.views.generic import TemplateView

from apps.accounts.api import OrganizationAPIView
from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.models import AuditEvent, Membership
from apps.accounts.tenancy import TenantScopeError
from apps.accounts.tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "evaluate",
    [
        list,
        len,
        bool,
        lambda qs: qs.count(),
        lambda qs: qs.exists(),
        lambda qs: qs.first(),
        lambda qs: list(qs.iterator()),
        lambda qs: qs.aggregate(n=__import__("django").db.models.Count("id")),
        lambda qs: qs.update(role="admin"),
        lambda qs: qs.delete(),
        lambda qs: qs.get(pk=1),
        lambda qs: qs.in_bulk(),
        lambda qs: list(qs.filter(role="member").values_list("pk", flat=True)),
    ],
)
def test_the_default_manager_refuses_a_query_with_no_organization(org, member, evaluate):
    with pytest.raises(TenantScopeError):
        evaluate(Membership.objects.all())
    # Nothing was changed by the refused update/delete.
    assert Membership.objects.for_org(org).get(user=member).role == "member"


def test_for_org_returns_only_that_organizations_rows(org, other_org):
    mine = {MembershipFactory(organization=org).pk for _ in range(3)}
    MembershipFactory.create_batch(2, organization=other_org)

    assert set(Membership.objects.for_org(org).values_list("pk", flat=True)) == mine
    assert set(Membership.objects.filter(organization=org).values_list("pk", flat=True)) == mine


def test_unscoped_needs_a_reason_and_then_sees_every_org(org, other_org):
    MembershipFactory(organization=org)
    MembershipFactory(organization=other_org)

    with pytest.raises(ValueError):
        Membership.objects.unscoped(reason=" ")
    assert Membership.objects.unscoped(reason="test of the escape hatch").count() == 2


def test_excluding_an_organization_is_not_a_scope(org, other_org):
    MembershipFactory(organization=org)

    with pytest.raises(TenantScopeError):
        list(Membership.objects.exclude(organization=other_org))


@pytest.mark.parametrize(
    "lookup",
    [
        {"organization__isnull": False},
        {"organization_id__gt": 0},
        {"organization__name__contains": ""},
        {"organization_id__in": []},
        {"organization": None},
    ],
)
def test_a_lookup_that_names_no_one_organization_is_not_a_scope(org, lookup):
    MembershipFactory(organization=org)

    with pytest.raises(TenantScopeError):
        list(Membership.objects.filter(**lookup))


@pytest.mark.parametrize("key", ["organization", "organization_id", "organization__slug"])
def test_equality_on_the_organization_is_a_scope(org, other_org, key):
    mine = MembershipFactory(organization=org)
    MembershipFactory(organization=other_org)
    value = {"organization": org, "organization_id": org.pk, "organization__slug": org.slug}[key]

    assert list(Membership.objects.filter(**{key: value})) == [mine]


def test_a_related_manager_of_a_scoped_row_is_scoped(org, other_org):
    membership = MembershipFactory(organization=org)
    MembershipFactory(organization=other_org, user=membership.user)

    assert membership.user.memberships.count() == 2


def test_every_tenant_model_uses_the_failing_closed_manager():
    from django.apps import apps

    from apps.accounts.tenancy import TenantModel, TenantQuerySet

    tenant_models = [m for m in apps.get_models() if issubclass(m, TenantModel)]
    assert {Membership, AuditEvent} <= set(tenant_models)
    for model in tenant_models:
        assert isinstance(model._default_manager.all(), TenantQuerySet), model


@pytest.mark.parametrize("base", [OrganizationAPIView, OrganizationViewMixin])
def test_scoped_views_cannot_override_the_queryset_hook(base):
    with pytest.raises(TypeError):
        type("Widening", (base, TemplateView), {"get_queryset": lambda self: None})
