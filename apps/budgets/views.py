"""The Budgets pages: every budget with its use in the current period and a form to add one, a
budget's own page (its use, an each_customer budget's customers nearest the cap, and the form
to change it), and the confirmation before deleting one.

Members see the pages; admins and owners change budgets (``OrganizationViewMixin``'s roles).
Figures come from ``selectors``; writes go through ``services``, post/redirect/get.
"""

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.views.generic import TemplateView

from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.services import client_ip
from apps.budgets import selectors, services
from apps.budgets.forms import BudgetChangeForm, BudgetCreateForm
from apps.budgets.models import Budget


class BudgetPageMixin(OrganizationViewMixin):
    model = Budget

    def scope_queryset(self, queryset):
        return queryset.select_related("token")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["can_manage"] = self.membership.has_role("admin")
        context["zone_name"] = self.organization.time_zone
        return context

    def budget(self) -> Budget:
        budget = self.get_queryset().filter(public_id=self.kwargs["budget_id"]).first()
        if budget is None:
            raise Http404("No such budget")
        return budget


class BudgetsView(BudgetPageMixin, TemplateView):
    """``/app/<org>/budgets/``: the list and, for admins, the form to create a budget."""

    template_name = "budgets/budgets.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        found = selectors.budget_uses(organization=self.organization, top=1)
        context["uses"] = found.uses
        context["store_available"] = found.store_available
        context["form"] = kwargs.get("form") or BudgetCreateForm(organization=self.organization)
        return context

    def post(self, request, *args, **kwargs):
        form = BudgetCreateForm(request.POST, organization=self.organization)
        if form.is_valid():
            try:
                budget = services.budget_create(
                    organization=self.organization,
                    actor=request.user,
                    ip=client_ip(request),
                    **form.values(),
                )
            except services.BudgetError as error:
                form.add_service_errors(error)
            else:
                messages.success(
                    request,
                    f"Budget created: {selectors.budget_target(budget)}, "
                    f"${budget.limit_usd.normalize():f} per {budget.period}. "
                    "The proxy applies it within seconds.",
                )
                return redirect("budgets", org_slug=self.organization.slug)
        return self.render_to_response(self.get_context_data(form=form), status=400)


class BudgetView(BudgetPageMixin, TemplateView):
    """``/app/<org>/budgets/<id>/``: one budget's use and, for admins, the form to change it."""

    template_name = "budgets/budget_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        budget = kwargs.get("budget") or self.budget()
        found = selectors.budget_use(organization=self.organization, budget=budget)
        context["use"] = found.uses[0]
        context["store_available"] = found.store_available
        context["budget"] = budget
        context["form"] = kwargs.get("form") or BudgetChangeForm(
            initial=BudgetChangeForm.initial_for(budget)
        )
        return context

    def post(self, request, *args, **kwargs):
        budget = self.budget()
        form = BudgetChangeForm(request.POST)
        if form.is_valid():
            try:
                budget = services.budget_update(
                    budget=budget, actor=request.user, ip=client_ip(request), changes=form.values()
                )
            except services.BudgetError as error:
                form.add_service_errors(error)
            else:
                messages.success(request, "Budget saved. The proxy applies it within seconds.")
                return redirect(
                    "budget", org_slug=self.organization.slug, budget_id=budget.public_id
                )
        # Show the budget as it is stored, not as the refused form had it.
        budget.refresh_from_db()
        return self.render_to_response(self.get_context_data(budget=budget, form=form), status=400)


class BudgetDeleteView(BudgetPageMixin, TemplateView):
    """``/app/<org>/budgets/<id>/delete/``: asks first (GET), deletes on POST."""

    template_name = "budgets/budget_delete.html"
    required_role = "admin"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["budget"] = budget = self.budget()
        context["target"] = selectors.budget_target(budget)
        return context

    def post(self, request, *args, **kwargs):
        budget = self.budget()
        target = selectors.budget_target(budget)
        services.budget_delete(budget=budget, actor=request.user, ip=client_ip(request))
        messages.success(
            request, f"Deleted the {budget.period} budget of {target}. The proxy stops applying it."
        )
        return redirect("budgets", org_slug=self.organization.slug)
