"""The Alerts page: its channels (e-mail to admins, Slack, signed webhooks), the alerts fired and
the delivery log. Members read it; admins and owners change it (``OrganizationViewMixin``'s
``write_role``), each change audited by ``alert_services``.

A new webhook's secret is shown once, as a new token is: the creating POST seals it into the
session and redirects; the one page that shows it takes it out (a reload finds nothing).
"""

import base64
import time

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.generic import TemplateView

from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.services import client_ip
from apps.budgets import alert_services
from apps.budgets.alert_forms import EmailAlertsForm, SlackWebhookForm, WebhookForm
from apps.budgets.models import Alert, Delivery, SlackWebhook, Webhook
from apps.keys import vault
from apps.keys.keyring import get_keyring

DELIVERIES_PER_PAGE = 25
RECENT_ALERTS = 20
SHOWN_ONCE_SESSION_ENTRY = "costr_new_webhook_secret"
SHOWN_WITHIN_SECONDS = 300


def _shown_once_context(organization, webhook_pk) -> vault.Context:
    return vault.Context(
        org_id=organization.pk, record_id=str(webhook_pk), purpose="webhook-secret-shown-once"
    )


class AlertsPageMixin(OrganizationViewMixin):
    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["can_manage"] = self.membership.has_role("admin")
        return context

    def alerts_page_context(self, **forms) -> dict:
        """Everything the Alerts page shows; ``forms`` replaces a blank form with a refused
        one, so its errors show in place."""
        organization = self.organization
        settings_row = alert_services.alert_settings_of(organization)
        deliveries = (
            Delivery.objects.for_org(organization)
            .select_related("alert", "webhook")
            .order_by("-created_at", "-id")
        )
        page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(self.request.GET.get("page"))
        alerts = Alert.objects.for_org(organization).select_related("budget")[:RECENT_ALERTS]
        return self.get_context_data(
            email_form=EmailAlertsForm(initial={"email_admins": settings_row.email_admins}),
            email_admins=settings_row.email_admins,
            slack=SlackWebhook.objects.for_org(organization).first(),
            slack_form=forms.get("slack_form") or SlackWebhookForm(),
            webhooks=list(Webhook.objects.for_org(organization)),
            webhook_form=forms.get("webhook_form") or WebhookForm(),
            alerts=list(alerts),
            deliveries=page,
            anomaly_factor=f"{settings.COSTR_ANOMALY_FACTOR:g}",
            # Embedded mode: tasks run in process and nothing periodic runs, scans included.
            no_scheduler=settings.CELERY_TASK_ALWAYS_EAGER,
        )


@method_decorator(sensitive_post_parameters("slack_url"), name="dispatch")
class AlertsView(AlertsPageMixin, TemplateView):
    """GET shows the page; each change POSTs to its own view below and comes back here."""

    template_name = "budgets/alerts.html"

    def get(self, request, *args, **kwargs):
        return self.render_to_response(self.alerts_page_context())


class EmailAlertsView(AlertsPageMixin, View):
    def post(self, request, org_slug):
        form = EmailAlertsForm(request.POST)
        form.is_valid()  # a checkbox: absent means off
        enabled = bool(form.cleaned_data.get("email_admins"))
        alert_services.alert_email_set(
            organization=self.organization,
            actor=request.user,
            ip=client_ip(request),
            enabled=enabled,
        )
        messages.success(
            request,
            "Alerts are e-mailed to admins and owners."
            if enabled
            else "Alerts are no longer e-mailed.",
        )
        return redirect("alerts", org_slug=org_slug)


@method_decorator(sensitive_post_parameters("slack_url"), name="dispatch")
class SlackWebhookView(AlertsPageMixin, TemplateView):
    """Set or replace the Slack webhook; a refused URL shows the page again with the error (the
    typed URL is never sent back)."""

    template_name = "budgets/alerts.html"

    def get(self, request, org_slug):
        return redirect("alerts", org_slug=org_slug)

    @sensitive_variables("form")
    def post(self, request, org_slug):
        form = SlackWebhookForm(request.POST)
        if form.is_valid():
            try:
                slack = alert_services.slack_webhook_set(
                    organization=self.organization,
                    actor=request.user,
                    ip=client_ip(request),
                    url=form.cleaned_data["slack_url"],
                )
            except alert_services.ChannelError as error:
                for field, message in error.errors.items():
                    form.add_error("slack_url" if field == "slack_url" else None, message)
            else:
                messages.success(request, f"Slack webhook …{slack.last4} saved, encrypted.")
                return redirect("alerts", org_slug=org_slug)
        # Never send the typed URL back to the browser.
        form.data = form.data.copy()
        form.data["slack_url"] = ""
        return self.render_to_response(self.alerts_page_context(slack_form=form), status=400)


class SlackWebhookRemoveView(AlertsPageMixin, TemplateView):
    template_name = "budgets/alert_slack_remove.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["slack"] = get_object_or_404(SlackWebhook.objects.for_org(self.organization))
        return context

    def post(self, request, org_slug):
        if alert_services.slack_webhook_remove(
            organization=self.organization, actor=request.user, ip=client_ip(request)
        ):
            messages.success(request, "Slack webhook removed. Its URL is gone.")
        return redirect("alerts", org_slug=org_slug)


class WebhookCreateView(AlertsPageMixin, TemplateView):
    template_name = "budgets/alerts.html"

    def get(self, request, org_slug):
        return redirect("alerts", org_slug=org_slug)

    @sensitive_variables("created", "sealed")
    def post(self, request, org_slug):
        form = WebhookForm(request.POST)
        if form.is_valid():
            try:
                created = alert_services.webhook_create(
                    organization=self.organization,
                    actor=request.user,
                    ip=client_ip(request),
                    url=form.cleaned_data["url"],
                    events=form.cleaned_data["events"],
                )
            except alert_services.ChannelError as error:
                for field, message in error.errors.items():
                    form.add_error(field if field in form.fields else None, message)
            else:
                sealed = vault.encrypt(
                    created.secret,
                    context=_shown_once_context(self.organization, created.webhook.pk),
                    keyring=get_keyring(),
                )
                request.session[SHOWN_ONCE_SESSION_ENTRY] = {
                    "org": self.organization.pk,
                    "webhook": created.webhook.pk,
                    "sealed": base64.b64encode(sealed).decode(),
                    "at": time.time(),
                }
                return redirect("alert_webhook_created", org_slug=org_slug)
        return self.render_to_response(self.alerts_page_context(webhook_form=form), status=400)


@method_decorator(never_cache, name="dispatch")
class WebhookCreatedView(AlertsPageMixin, TemplateView):
    """Shows a new webhook's signing secret once."""

    template_name = "budgets/alert_webhook_created.html"
    required_role = "admin"

    @sensitive_variables("waiting", "secret")
    def get(self, request, *args, **kwargs):
        waiting = request.session.get(SHOWN_ONCE_SESSION_ENTRY)
        webhook = None
        if waiting and waiting.get("org") == self.organization.pk:
            del request.session[SHOWN_ONCE_SESSION_ENTRY]
            if time.time() - waiting.get("at", 0) <= SHOWN_WITHIN_SECONDS:
                webhook = (
                    Webhook.objects.for_org(self.organization)
                    .filter(pk=waiting.get("webhook"))
                    .first()
                )
        if webhook is None:
            messages.info(
                request,
                "A webhook's secret is shown only once, right after it is created. Delete the "
                "webhook and create it again if you did not copy it.",
            )
            return redirect("alerts", org_slug=self.organization.slug)
        secret = vault.decrypt(
            base64.b64decode(waiting["sealed"]),
            context=_shown_once_context(self.organization, webhook.pk),
            keyring=get_keyring(),
        ).decode()
        return self.render_to_response(self.get_context_data(webhook=webhook, secret=secret))


class WebhookDeleteView(AlertsPageMixin, TemplateView):
    template_name = "budgets/alert_webhook_delete.html"
    required_role = "admin"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        webhook = get_object_or_404(
            Webhook.objects.for_org(self.organization), pk=self.kwargs["pk"]
        )
        context["webhook"] = webhook
        context["pending"] = webhook.deliveries.filter(state="pending").count()
        return context

    def post(self, request, org_slug, pk):
        webhook = get_object_or_404(Webhook.objects.for_org(self.organization), pk=pk)
        alert_services.webhook_delete(webhook=webhook, actor=request.user, ip=client_ip(request))
        messages.success(request, f"Deleted the webhook to {webhook.url}.")
        return redirect("alerts", org_slug=org_slug)
