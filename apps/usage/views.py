"""Organization pages of the usage app: how to send usage through Costr, and the organization's
own prices."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.http import urlencode
from django.views import View
from django.views.generic import TemplateView

from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.services import client_ip
from apps.keys.proxy_urls import costr_origin, proxy_base_urls
from apps.usage import overrides
from apps.usage.forms import PriceOverrideForm, RepriceForm, parse_utc_moment
from apps.usage.metering import contract
from apps.usage.models import PriceOverride
from costr.schedule import REPRICE_SWEEP_MINUTES


class IntegrateView(OrganizationViewMixin, TemplateView):
    """Where the SDKs point and what they send: this deployment's base URLs, a snippet per SDK
    and the attribution headers with the limits the proxy enforces (read from the metering
    contract, so the page cannot drift from what the proxy does). Never a token's secret: those
    are shown once, when created."""

    template_name = "usage/integrate.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["base_urls"] = proxy_base_urls(self.request, self.organization)
        context["costr_url"] = costr_origin(self.request)
        context["can_manage"] = self.membership.has_role("admin")
        context["limits"] = {
            "customer_length": contract.MAX_CUSTOMER_LENGTH,
            "property_name_length": contract.MAX_PROPERTY_NAME_LENGTH,
            "property_value_length": contract.MAX_PROPERTY_VALUE_LENGTH,
            "properties": contract.MAX_PROPERTIES,
        }
        return context


def usd(value) -> str:
    """A price as typed, without the trailing zeros of its six stored places: 2.5, not 2.500000."""
    return "" if value is None else format(value.normalize(), "f")


def _display(override: PriceOverride) -> dict:
    return {
        "override": override,
        "provider": override.provider or "any",
        "input": usd(override.input_per_mtok),
        "cached_input": usd(override.cached_input_per_mtok),
        "cache_write": usd(override.cache_write_per_mtok),
        "output": usd(override.output_per_mtok),
    }


def _after_change(organization, since):
    """Back to the list, offering to re-price the events the change may concern."""
    url = reverse("price_overrides", args=[organization.slug])
    return redirect(f"{url}?{urlencode({'reprice_since': since.isoformat()})}")


class PriceOverridesView(OrganizationViewMixin, TemplateView):
    """Members see the organization's prices; admins add them."""

    template_name = "usage/price_overrides.html"
    model = PriceOverride

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["overrides"] = [_display(o) for o in self.get_queryset()]
        context["can_manage"] = self.membership.has_role(self.write_role)
        context["form"] = kwargs.get("form") or PriceOverrideForm()
        since = parse_utc_moment(self.request.GET.get("reprice_since", ""))
        context["reprice_since"] = since
        context["reprice_form"] = RepriceForm(
            initial={"since": f"{since:%Y-%m-%d %H:%M}"} if since else {}
        )
        return context

    def post(self, request, *args, **kwargs):
        form = PriceOverrideForm(request.POST)
        if form.is_valid():
            try:
                override = overrides.price_override_create(
                    organization=self.organization,
                    **form.cleaned_data,
                    actor=request.user,
                    ip=client_ip(request),
                )
            except overrides.PriceOverrideError as error:
                form.add_error(None, str(error))
            else:
                messages.success(
                    request,
                    f"Saved the price for {override.model_pattern}. Events written from now on "
                    "use it; events already stored keep their cost until re-priced.",
                )
                return _after_change(self.organization, override.valid_from)
        return self.render_to_response(self.get_context_data(form=form), status=400)


class PriceOverrideDeleteView(OrganizationViewMixin, TemplateView):
    template_name = "usage/price_override_delete.html"
    required_role = "admin"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["row"] = _display(
            get_object_or_404(
                PriceOverride.objects.for_org(self.organization), pk=self.kwargs["pk"]
            )
        )
        return context

    def post(self, request, org_slug, pk):
        override = get_object_or_404(PriceOverride.objects.for_org(self.organization), pk=pk)
        since = override.valid_from
        pattern = override.model_pattern
        overrides.price_override_delete(
            override=override, actor=request.user, ip=client_ip(request)
        )
        messages.success(
            request,
            f"Deleted the price for {pattern}. Events already stored keep their cost until "
            "re-priced.",
        )
        return _after_change(self.organization, since)


class RepriceView(OrganizationViewMixin, View):
    """Queues re-pricing of past events (admins); the page it returns to says so."""

    http_method_names = ["post"]

    def post(self, request, org_slug):
        form = RepriceForm(request.POST)
        if not form.is_valid():
            messages.error(request, " ".join(form.errors["since"]))
            return redirect("price_overrides", org_slug=org_slug)
        since = form.cleaned_data["since"]
        reprice = overrides.usage_reprice_request(
            organization=self.organization, since=since, actor=request.user, ip=client_ip(request)
        )
        # Not queued now (the task queue is down): the request is kept, and a sweep starts it.
        start = (
            f"will start within {2 * REPRICE_SWEEP_MINUTES} minutes"
            if reprice.queued is False
            else "is queued"
        )
        messages.success(
            request,
            f"Re-pricing events since {since:%Y-%m-%d %H:%M} UTC with today's prices and "
            f"overrides {start}. Costs and totals update as it runs, usually within minutes.",
        )
        return redirect("price_overrides", org_slug=org_slug)
