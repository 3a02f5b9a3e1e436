"""The Stripe settings pages: connect, status and permissions, sync, disconnect, mapping.

Members read; admins and owners change. The key is posted once, checked, sealed, and never sent
back: a refused form is rendered with the key field empty.
"""

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.generic import TemplateView

from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.services import client_ip
from apps.billing import selectors, services
from apps.billing.forms import CustomerMappingForm, MetadataFieldForm, StripeConnectForm
from apps.billing.models import StripeCustomer, SyncStatus


class StripePageMixin(OrganizationViewMixin):
    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["can_manage"] = self.membership.has_role("admin")
        return context

    def connection_or_404(self):
        connection = selectors.stripe_connection_for(organization=self.organization)
        if connection is None:
            raise Http404("Stripe is not connected")
        return connection


def _permission_rows(connection) -> list[dict]:
    rows = []
    for resource, (label, grant, _params) in services.RESOURCES.items():
        state = connection.permissions.get(resource)
        rows.append(
            {
                "label": label,
                "grant": grant,
                "ok": state is True,
                "unknown": state is None,
                "missing": state if isinstance(state, str) else "",
            }
        )
    return rows


@method_decorator(sensitive_post_parameters("key"), name="dispatch")
class StripeSettingsView(StripePageMixin, TemplateView):
    template_name = "billing/stripe.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        connection = selectors.stripe_connection_for(organization=self.organization)
        context["connection"] = connection
        context["resources"] = services.RESOURCES.values()
        if connection is None:
            context["form"] = kwargs.get("form") or StripeConnectForm()
            return context
        context["permissions"] = _permission_rows(connection)
        context["counts"] = selectors.stripe_mirror_counts(organization=self.organization)
        context["in_progress"] = connection.sync_status in (SyncStatus.QUEUED, SyncStatus.RUNNING)
        context["metadata_form"] = MetadataFieldForm(
            initial={"metadata_field": connection.metadata_field}
        )
        return context

    @sensitive_variables("form")
    def post(self, request, *args, **kwargs):
        form = StripeConnectForm(request.POST)
        if form.is_valid():
            try:
                connection = services.stripe_connect(
                    organization=self.organization,
                    key=form.cleaned_data["key"],
                    metadata_field=form.cleaned_data["metadata_field"],
                    actor=request.user,
                    ip=client_ip(request),
                )
            except services.BillingError as error:
                form.add_error("key", str(error))
            else:
                missing = connection.missing_permissions
                if missing:
                    messages.warning(
                        request,
                        f"Connected {connection}, but it may not read everything Costr needs: "
                        "see the missing permissions below.",
                    )
                else:
                    messages.success(request, f"Connected {connection}. It is stored encrypted.")
                return redirect("stripe_settings", org_slug=self.organization.slug)
        # Never send the typed key back to the browser.
        form.data = form.data.copy()
        form.data["key"] = ""
        return self.render_to_response(self.get_context_data(form=form), status=400)


class StripeSyncView(StripePageMixin, View):
    def post(self, request, org_slug):
        connection = self.connection_or_404()
        if connection.is_demo:
            messages.info(request, "The demo's Stripe data is made up: there is nothing to sync.")
        elif services.stripe_sync_request(
            connection=connection, actor=request.user, ip=client_ip(request)
        ):
            messages.success(request, "Sync requested; this page shows its progress.")
        else:
            messages.info(request, "A sync is running; this page shows its progress.")
        return redirect("stripe_settings", org_slug=org_slug)


class StripeMetadataFieldView(StripePageMixin, View):
    def post(self, request, org_slug):
        connection = self.connection_or_404()
        form = MetadataFieldForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Enter a metadata field name.")
            return redirect("stripe_settings", org_slug=org_slug)
        try:
            services.stripe_metadata_field_set(
                connection=connection,
                metadata_field=form.cleaned_data["metadata_field"],
                actor=request.user,
                ip=client_ip(request),
            )
        except services.BillingError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, "Saved; customers were mapped again with the new field.")
        return redirect("stripe_settings", org_slug=org_slug)


class StripeDisconnectView(StripePageMixin, TemplateView):
    template_name = "billing/stripe_disconnect.html"
    required_role = "admin"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["connection"] = self.connection_or_404()
        return context

    def post(self, request, org_slug):
        connection = self.connection_or_404()
        description = str(connection)
        services.stripe_disconnect(connection=connection, actor=request.user, ip=client_ip(request))
        messages.success(
            request, f"Disconnected {description}. The key and the copied data are gone."
        )
        return redirect("stripe_settings", org_slug=org_slug)


class StripeCustomersView(StripePageMixin, TemplateView):
    template_name = "billing/stripe_customers.html"
    page_size = 50

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["connection"] = self.connection_or_404()
        show_all = self.request.GET.get("show") == "all"
        rows = selectors.stripe_customers_for_mapping(
            organization=self.organization, unmapped_only=not show_all
        )
        context["show_all"] = show_all
        context["page"] = Paginator(rows, self.page_size).get_page(self.request.GET.get("page"))
        if context["can_manage"]:
            context["costr_customers"] = selectors.costr_customers_for_mapping(
                organization=self.organization
            )
        return context


class StripeCustomerMapView(StripePageMixin, View):
    def post(self, request, org_slug, pk):
        stripe_customer = get_object_or_404(
            StripeCustomer.objects.for_org(self.organization), pk=pk
        )
        form = CustomerMappingForm(request.POST)
        external_id = form.cleaned_data["external_id"].strip() if form.is_valid() else None
        customer = None
        if external_id:
            customer = selectors.costr_customer_by_external_id(
                organization=self.organization, external_id=external_id
            )
            if customer is None:
                messages.error(request, f"No Costr customer “{external_id}” has been seen yet.")
                return redirect("stripe_customers", org_slug=org_slug)
        services.customer_mapping_set(
            stripe_customer=stripe_customer,
            customer=customer,
            actor=request.user,
            ip=client_ip(request),
        )
        if customer is None:
            messages.success(
                request, f"{stripe_customer.stripe_id} follows the automatic rules again."
            )
        else:
            messages.success(
                request, f"{stripe_customer.stripe_id} now maps to {customer.external_id}."
            )
        return redirect("stripe_customers", org_slug=org_slug)
