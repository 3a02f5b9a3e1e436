"""The organization's data lifecycle pages: retention, export, deletion."""

from django.contrib import messages
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect
from django.utils import timezone
from django.views import View
from django.views.generic import TemplateView

from apps.accounts import services as accounts_services
from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.models import retention_choices
from apps.accounts.services import audit_event_record, client_ip
from apps.usage import export, lifecycle
from apps.usage.models import UsageEvent
from costr.schedule import PURGE_HOUR_UTC, PURGE_MINUTE_UTC


class RetentionView(OrganizationViewMixin, TemplateView):
    """Members read the retention; admins change it. Shortening it shows what will be deleted
    and asks for confirmation first; the purge then runs at once."""

    template_name = "usage/retention.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        organization = self.organization
        events = UsageEvent.objects.for_org(organization)
        context.update(
            choices=retention_choices(),
            cutoff=lifecycle.retention_cutoff(organization),
            stored=events.count(),
            oldest=events.order_by("timestamp").values_list("timestamp", flat=True).first(),
            purge_time=f"{PURGE_HOUR_UTC:02d}:{PURGE_MINUTE_UTC:02d}",
            can_manage=self.membership.has_role(self.write_role),
        )
        return context

    def post(self, request, *args, **kwargs):
        try:
            days = int(request.POST.get("retention_days", ""))
        except ValueError:
            days = None
        allowed = [value for value, _ in retention_choices()]
        if days not in allowed:
            messages.error(request, "Choose one of the retention periods offered.")
            return redirect("retention", org_slug=self.organization.slug)
        shorter = days < self.organization.retention_days
        if shorter and request.POST.get("confirm") != "yes":
            counts = lifecycle.usage_expired_counts(
                organization=self.organization, retention_days=days
            )
            return self.render_to_response(
                self.get_context_data(confirm_days=days, confirm_counts=counts)
            )
        accounts_services.organization_retention_set(
            organization=self.organization, days=days, actor=request.user, ip=client_ip(request)
        )
        if shorter:
            purge = lifecycle.usage_purge_enqueue(organization=self.organization)
            cutoff = f"{lifecycle.retention_cutoff(self.organization):%d %B %Y}"
            # The purge could not be started now (the task queue is down): the daily one does it.
            when = (
                f"will be deleted by the daily purge at {PURGE_HOUR_UTC:02d}:"
                f"{PURGE_MINUTE_UTC:02d} UTC"
                if purge.queued is False
                else "is being deleted"
            )
            messages.success(
                request, f"Retention is now {days} days. Usage from before {cutoff} (UTC) {when}."
            )
        else:
            messages.success(request, f"Retention is now {days} days.")
        return redirect("retention", org_slug=self.organization.slug)


class UsageExportView(OrganizationViewMixin, View):
    """All of the organization's usage metadata as one CSV or JSON file (admins)."""

    required_role = "admin"
    formats = {
        "csv": ("text/csv; charset=utf-8", export.events_csv),
        "json": ("application/json", export.events_json),
    }

    def get(self, request, org_slug, file_format):
        if file_format not in self.formats:
            raise Http404
        content_type, render = self.formats[file_format]
        audit_event_record(
            organization=self.organization,
            actor=request.user,
            action="usage.exported",
            target=f"all usage ({file_format})",
            ip=client_ip(request),
        )
        response = StreamingHttpResponse(
            render(UsageEvent.objects.for_org(self.organization).order_by("timestamp", "pk")),
            content_type=content_type,
        )
        stamp = timezone.now().strftime("%Y%m%d-%H%M")
        response["Content-Disposition"] = (
            f'attachment; filename="costr-{self.organization.slug}-usage-{stamp}.{file_format}"'
        )
        return response


class OrganizationDeleteView(OrganizationViewMixin, TemplateView):
    """The owner deletes the organization after typing its slug: secrets now, data by a task."""

    template_name = "usage/organization_delete.html"
    required_role = "owner"
    write_role = "owner"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["stored"] = UsageEvent.objects.for_org(self.organization).count()
        context["deadline_hours"] = lifecycle.DELETION_DEADLINE_HOURS
        return context

    def post(self, request, *args, **kwargs):
        organization = self.organization
        if request.POST.get("confirm_slug", "").strip() != organization.slug:
            return self.render_to_response(
                self.get_context_data(error=f"Type {organization.slug} to confirm."), status=400
            )
        lifecycle.organization_delete(
            organization=organization, actor=request.user, ip=client_ip(request)
        )
        messages.success(
            request,
            f"{organization.name} is deleted: its provider keys, Stripe key and tokens are "
            f"destroyed, and all its other data will be gone within "
            f"{lifecycle.DELETION_DEADLINE_HOURS} hours.",
        )
        return redirect("app")
