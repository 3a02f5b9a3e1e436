"""The events explorer: events newest first, filtered and paged by keyset, one event's page,
and the filtered events as CSV."""

from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.views import View
from django.views.generic import TemplateView

from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.services import audit_event_record, client_ip
from apps.reporting import paging, selectors
from apps.reporting.forms import EventFilterForm
from apps.reporting.views import organization_zone
from apps.usage import export

EVENTS_PER_PAGE = 50


def _position(value: str):
    """The position an ``after``/``before`` parameter names; None without one, or for one that
    is malformed or tampered with (the page is then the newest, as without one)."""
    if not value:
        return None
    try:
        return paging.EVENTS.position_from_text(value)
    except (ValueError, TypeError):
        return None


def events_page(events, *, after: str = "", before: str = "", size: int = EVENTS_PER_PAGE):
    """One page of ``events`` (newest first) by keyset (``paging``): ``after`` a position the
    page holds the next older events, ``before`` one the next newer (``before`` wins when both
    are given). Returns (events, has_newer, has_older)."""
    if (position := _position(before)) is not None:
        page = paging.EVENTS.page(events, position=position, forward=False, size=size)
    else:
        page = paging.EVENTS.page(events, position=_position(after), size=size)
    return page.rows, page.has_previous, page.has_next


class EventsView(OrganizationViewMixin, TemplateView):
    """Events newest first, filtered, paged by keyset; the same filters export as CSV."""

    template_name = "reporting/events.html"

    def get(self, request, *args, **kwargs):
        zone = organization_zone(self.organization)
        form = EventFilterForm(request.GET, zone=zone)
        context = self.get_context_data(**kwargs)
        context.update(form=form, zone_name=self.organization.time_zone)
        if not form.is_valid():
            context.update(events=[], has_newer=False, has_older=False)
            return self.render_to_response(context, status=400)
        events = selectors.events_filtered(organization=self.organization, **form.filters())
        rows, has_newer, has_older = events_page(
            events, after=request.GET.get("after", ""), before=request.GET.get("before", "")
        )
        query = request.GET.copy()
        for name in ("after", "before"):
            query.pop(name, None)
        context.update(
            events=rows,
            has_newer=has_newer,
            has_older=has_older,
            newer=paging.EVENTS.position_text(rows[0]) if rows else "",
            older=paging.EVENTS.position_text(rows[-1]) if rows else "",
            filter_query=query.urlencode(),
            filtered=bool(form.described()),
            can_export=self.membership.has_role(EventsExportView.required_role),
        )
        return self.render_to_response(context)


class EventDetailView(OrganizationViewMixin, TemplateView):
    """One event, every field the events API returns for it (``UsageEventSerializer``); another
    organization's id answers 404."""

    template_name = "reporting/event.html"

    def get(self, request, *args, **kwargs):
        event = selectors.event_of(organization=self.organization, event_id=kwargs["event_id"])
        if event is None:
            raise Http404("No such event")
        context = self.get_context_data(**kwargs)
        context.update(
            event=event,
            zone_name=self.organization.time_zone,
        )
        return self.render_to_response(context)


class EventsExportView(OrganizationViewMixin, View):
    """The filtered events as CSV, streamed (the set may hold millions), and audited.

    Admins and owners only, like the full export (``usage.lifecycle_views.UsageExportView``): with
    no filter it is the same data, so a member who may not take the one may not take the other.
    """

    required_role = "admin"

    def get(self, request, *args, **kwargs):
        form = EventFilterForm(request.GET, zone=organization_zone(self.organization))
        if not form.is_valid():
            errors = "; ".join(e for errs in form.errors.values() for e in errs)
            return HttpResponse(
                f"Invalid filters: {errors}\n", status=400, content_type="text/plain"
            )
        audit_event_record(
            organization=self.organization,
            actor=request.user,
            action="usage.exported",
            target="events.csv",
            ip=client_ip(request),
            details={"filters": form.described()},
        )
        events = selectors.events_filtered(organization=self.organization, **form.filters())
        response = StreamingHttpResponse(
            export.events_csv(events), content_type="text/csv; charset=utf-8"
        )
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = (
            f'attachment; filename="costr-{self.organization.slug}-events-{stamp}.csv"'
        )
        return response
