"""The dashboards: overview, customers, models and properties (the events explorer is in
``event_views``).

Every number comes from ``apps.reporting.selectors`` (usage) and ``apps.billing.selectors``
(revenue, margin); the views only choose the period, put rows side by side with the previous
period and shape them for templates and charts. Each page asks a fixed number of queries, however
many customers or events the organization has: grouping happens in the database, and the Python
here walks groups (customers, models, days), never events.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.views.generic import TemplateView

from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.services import audit_event_record, client_ip
from apps.billing import selectors as billing
from apps.budgets import selectors as budgets
from apps.keys.proxy_urls import proxy_base_urls
from apps.reporting import selectors
from apps.reporting.forms import (
    CustomerListForm,
    PeriodForm,
    PropertyForm,
    SplitForm,
)
from apps.reporting.periods import DEFAULT_PERIOD, Period
from apps.reporting.selectors import Totals, sum_totals
from apps.usage import export

TOP = 10
CHART_SERIES = 8
CUSTOMERS_PER_PAGE = 50
NO_CUSTOMER = "(no customer)"
NO_MODEL = "(no model)"
NO_VALUE = "(not set)"


# Shaping ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a breakdown: this period's totals and the previous period's (zero if none)."""

    key: str
    label: str
    current: Totals
    previous: Totals = field(default_factory=Totals)
    share: float | None = None
    # A model row's drill-down: the exact model names it groups, when they are not just its own.
    names: list["Row"] = field(default_factory=list)
    # A model row's providers (the models page).
    providers: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.current.input_tokens + self.current.output_tokens


def _rows(current: dict[str, Totals], previous: dict[str, Totals], empty_label: str) -> list[Row]:
    """Rows by spend (then requests), with each one's share of the period's spend."""
    total_cost = sum((t.cost for t in current.values()), Decimal(0))
    rows = [
        Row(
            key=key,
            label=key or empty_label,
            current=totals,
            previous=previous.get(key, Totals()),
            share=float(totals.cost / total_cost) if total_cost else None,
        )
        for key, totals in current.items()
    ]
    rows.sort(key=lambda row: (-row.current.cost, -row.current.requests, row.key))
    return rows


def _money(value: Decimal) -> float:
    """A cost for a chart (the tables carry the exact figure)."""
    return float(round(value, 6))


def _spend_chart(by_day: dict, days: list[date], empty_label: str) -> dict:
    """Series of spend per local day, one per group (the top ones by spend, the rest as one
    "Other"), for a stacked bar chart."""
    spend: dict[str, Decimal] = defaultdict(Decimal)
    for (_day, key), totals in by_day.items():
        spend[key] += totals.cost
    ranked = sorted(spend, key=lambda key: (-spend[key], key))
    # An "Other" standing for a single group would hide its name for nothing.
    shown = ranked if len(ranked) <= CHART_SERIES + 1 else ranked[:CHART_SERIES]
    other = [key for key in ranked if key not in shown]
    series = {key: defaultdict(Decimal) for key in shown}
    if other:
        series["\0other"] = defaultdict(Decimal)
    for (day, key), totals in by_day.items():
        series[key if key in series else "\0other"][day] += totals.cost
    return {
        "labels": [day.isoformat() for day in days],
        "datasets": [
            {
                "label": "Other" if key == "\0other" else (key or empty_label),
                "data": [_money(values.get(day, Decimal(0))) for day in days],
            }
            for key, values in series.items()
        ],
    }


def _daily_rows(by_day: dict, days: list[date]) -> list[dict]:
    """Per local day: requests, spend, unpriced and usage-unknown requests (the chart's numbers,
    as a table)."""
    totals: dict[date, Totals] = defaultdict(Totals)
    for (day, _key), values in by_day.items():
        totals[day].add(values)
    return [{"day": day, "totals": totals.get(day, Totals())} for day in days]


def organization_zone(organization) -> ZoneInfo:
    return ZoneInfo(organization.time_zone)


class ReportPageMixin(OrganizationViewMixin):
    """A dashboard page over a period chosen in the query string (30 days by default). A period
    that cannot be shown is reported on the page, which then shows the default period, with
    status 400."""

    def setup_period(self):
        self.zone = organization_zone(self.organization)
        now = timezone.now()
        self.period_form = PeriodForm(self.request.GET)
        self.period = self.period_form.period_for(zone=self.zone, now=now)
        self.period_ok = self.period is not None
        if self.period is None:
            self.period = PeriodForm.default_period(zone=self.zone, now=now)

    def get(self, request, *args, **kwargs):
        self.setup_period()
        context = self.get_context_data(**kwargs)
        return self.render_to_response(context, status=200 if self.period_ok else 400)

    # Query parameters the period picker carries along on each page.
    kept_parameters: tuple[str, ...] = ()

    def _local_days(self, start: datetime, end: datetime) -> tuple[date, date]:
        """First and last local day of [start, end)."""
        last = max(start, end - timedelta(microseconds=1))
        return start.astimezone(self.zone).date(), last.astimezone(self.zone).date()

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        period: Period = self.period
        data = self.period_form.data
        name = data.get("period") or ("custom" if data.get("start") or data.get("end") else "")
        context.update(
            period=period,
            period_form=self.period_form,
            period_name=name if self.period_ok and name else DEFAULT_PERIOD,
            period_days=self._local_days(period.start, period.end),
            previous_days=self._local_days(period.previous_start, period.previous_end),
            period_ongoing=period.end.astimezone(self.zone).time() != datetime.min.time(),
            zone_name=self.organization.time_zone,
            keep=[
                (key, value)
                for key in self.kept_parameters
                for value in self.request.GET.getlist(key)
            ],
        )
        return context


# Overview -----------------------------------------------------------------------------------


def _margin_summary(organization, period: Period, by_customer: dict[str, Totals]):
    """The overview's margin card: USD revenue against the AI cost of the customers it came
    from, how many of them cost more than they paid, and the revenue left unconverted."""
    revenue = billing.revenue_by_customer(
        organization=organization, start=period.start, end=period.end
    )
    known = selectors.customers_by_external_id(organization=organization)
    customers = {customer.pk: customer for customer in known.values()}
    usd_revenue, usd_cost, unprofitable = [], Decimal(0), 0
    unconverted: dict[str, Decimal] = defaultdict(Decimal)
    paying_keys = set()
    for pk, entries in revenue.items():
        customer = customers.get(pk)
        if customer is None:
            continue
        cost = by_customer.get(customer.external_id, Totals()).cost
        result = billing.margin(cost, entries)
        if result.revenue_usd is not None:
            usd_revenue.extend(r for r in entries if r.currency.lower() == billing.USD)
            usd_cost += cost
            paying_keys.add(customer.external_id)
        if result.unprofitable:
            unprofitable += 1
        for other in result.unconverted:
            unconverted[other.currency.upper()] += other.net
    total = billing.margin(usd_cost, usd_revenue) if usd_revenue else None
    other_cost = sum(
        (t.cost for key, t in by_customer.items() if key not in paying_keys), Decimal(0)
    )
    return {
        "margin": total,
        "unprofitable": unprofitable,
        "unconverted": sorted(unconverted.items()),
        "cost_without_usd_revenue": other_cost,
    }


class OverviewView(ReportPageMixin, TemplateView):
    """``/app/<org>/``: the period at a glance, or how to start when no request came yet."""

    template_name = "reporting/overview.html"
    kept_parameters = ("split", "property")

    def get(self, request, *args, **kwargs):
        if not selectors.organization_has_usage(organization=self.organization):
            self.template_name = "reporting/getting_started.html"
            context = super(ReportPageMixin, self).get_context_data(**kwargs)
            context["base_urls"] = proxy_base_urls(self.request, self.organization)
            return self.render_to_response(context)
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        org, period = self.organization, self.period
        current = dict(organization=org, start=period.start, end=period.end)
        options = SplitForm(self.request.GET)
        options.is_valid()
        split = options.cleaned_data.get("split") or "provider"

        periods = dict(
            organization=org,
            current=(period.start, period.end),
            previous=(period.previous_start, period.previous_end),
        )
        latency, latency_before = selectors.latency_percentiles_compared(**periods)
        by_day = selectors.usage_by_day(**current, zone=self.zone, split_by=split)
        days = period.local_days()
        customers, customers_before = selectors.usage_by_compared(**periods, group_by="customer")
        models, models_before = selectors.usage_by_compared(**periods, group_by="model")
        # Every request has one model row: the totals are their sum (no read of their own).
        totals = sum_totals(models.values())
        before = sum_totals(models_before.values())
        customer_rows = _rows(customers, customers_before, NO_CUSTOMER)
        model_rows = _rows(models, models_before, NO_MODEL)

        names = selectors.property_names_recent(**current)
        chosen = options.cleaned_data.get("property") or ""
        if not chosen:
            chosen = "feature" if "feature" in names else (names[0] if names else "")
        elif chosen not in names:
            names = sorted([*names, chosen])
        property_rows = []
        if chosen:
            property_rows = _rows(
                *selectors.usage_by_property_compared(
                    organization=org,
                    current=(period.start, period.end),
                    previous=(period.previous_start, period.previous_end),
                    name=chosen,
                ),
                NO_VALUE,
            )
        refused = selectors.refused_requests(**current)
        connected = billing.stripe_connection_for(organization=org) is not None
        context.update(
            totals=totals,
            before=before,
            latency=latency,
            latency_before=latency_before,
            split=split,
            chart=_spend_chart(by_day, days, NO_MODEL),
            daily=_daily_rows(by_day, days),
            top_customers=customer_rows[:TOP],
            customer_count=len(customers),
            top_models=model_rows[:TOP],
            model_count=len(models),
            property_names=names,
            property_name=chosen,
            top_properties=property_rows[:TOP],
            refused_total=sum(refused.values()),
            refused=sorted(refused.items()),
            stripe_connected=connected,
            margin=_margin_summary(org, period, customers) if connected else None,
            budgets_nearest=budgets.budgets_nearest_limit(organization=org),
        )
        return context


# Customers ----------------------------------------------------------------------------------


@dataclass
class CustomerRow:
    external_id: str
    name: str
    totals: Totals
    last_seen: date | None
    margin: billing.Margin | None

    @property
    def label(self) -> str:
        return self.external_id or NO_CUSTOMER

    @property
    def tokens(self) -> int:
        return self.totals.input_tokens + self.totals.output_tokens


def _sorted_rows(rows: list[CustomerRow], sort: str) -> list[CustomerRow]:
    """Rows in the chosen order (ties by external id); rows without a value (no margin, never
    seen) go last in either direction."""
    name, descending = sort.lstrip("-"), sort.startswith("-")

    def value(row: CustomerRow):
        return {
            "spend": row.totals.cost,
            "requests": row.totals.requests,
            "tokens": row.tokens,
            "last_seen": row.last_seen,
            "margin": row.margin.margin_usd if row.margin else None,
            "revenue": row.margin.revenue_usd if row.margin else None,
            "margin_pct": row.margin.margin_pct if row.margin else None,
            "cost_pct": row.margin.cost_pct if row.margin else None,
            "customer": row.external_id.casefold(),
        }[name]

    present = sorted((row for row in rows if value(row) is not None), key=lambda r: r.external_id)
    present.sort(key=value, reverse=descending)
    missing = sorted((row for row in rows if value(row) is None), key=lambda r: r.external_id)
    return present + missing


class CustomersView(ReportPageMixin, TemplateView):
    """Every customer with its usage over the period, and its margin when Stripe is connected."""

    template_name = "reporting/customers.html"
    kept_parameters = ("q", "sort")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form, search, sort, rows, connected = self.customer_rows()
        page = Paginator(rows, CUSTOMERS_PER_PAGE).get_page(self.request.GET.get("page"))
        query = self.request.GET.copy()
        query.pop("page", None)
        sort_query = query.copy()
        sort_query.pop("sort", None)
        context.update(
            form=form,
            search=search,
            sort=sort,
            page=page,
            page_query=query.urlencode(),
            sort_query=sort_query.urlencode(),
            stripe_connected=connected,
            unprofitable=sum(1 for row in rows if row.margin and row.margin.unprofitable),
            can_export=self.membership.has_role(CustomersExportView.required_role),
        )
        return context

    def customer_rows(self):
        """(form, search, sort, the period's customer rows searched and sorted, whether Stripe is
        connected): what the page shows, page by page, and the export whole."""
        org, period = self.organization, self.period
        form = CustomerListForm(self.request.GET)
        form.is_valid()
        search = (form.cleaned_data.get("q") or "").strip()
        sort = form.cleaned_data.get("sort") or "-spend"

        usage = selectors.usage_by(
            organization=org, start=period.start, end=period.end, group_by="customer"
        )
        customers = selectors.customers_by_external_id(organization=org)
        last_seen = selectors.customers_last_seen(organization=org)
        connected = billing.stripe_connection_for(organization=org) is not None
        revenue = (
            billing.revenue_by_customer(organization=org, start=period.start, end=period.end)
            if connected
            else {}
        )
        rows = []
        for external_id in set(customers) | set(usage):
            customer = customers.get(external_id)
            totals = usage.get(external_id, Totals())
            entries = revenue.get(customer.pk, []) if customer else []
            rows.append(
                CustomerRow(
                    external_id=external_id,
                    name=customer.name if customer else "",
                    totals=totals,
                    last_seen=last_seen.get(external_id),
                    margin=billing.margin(totals.cost, entries) if entries else None,
                )
            )
        if search:
            needle = search.casefold()
            rows = [
                row
                for row in rows
                if needle in row.external_id.casefold() or needle in row.name.casefold()
            ]
        return form, search, sort, _sorted_rows(rows, sort), connected


CUSTOMER_COLUMNS = [
    "external_id",
    "name",
    "requests",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "unpriced_requests",
    "usage_unknown_requests",
    "revenue_usd",
    "revenue_other",
    "margin_usd",
    "margin_pct",
    "last_seen",
]


class CustomersExportView(CustomersView):
    """The customers page's rows, all of them (searched and sorted as the page is), as CSV for
    the period; audited. Admins and owners, as the events export."""

    required_role = "admin"

    def get(self, request, *args, **kwargs):
        self.setup_period()
        if not self.period_ok:
            return HttpResponse(
                "Invalid period: choose one on the customers page.\n",
                status=400,
                content_type="text/plain",
            )
        _, search, sort, rows, _ = self.customer_rows()
        period = self.period
        audit_event_record(
            organization=self.organization,
            actor=request.user,
            action="usage.exported",
            target="customers.csv",
            ip=client_ip(request),
            details={
                "start": period.start.isoformat(),
                "end": period.end.isoformat(),
                "search": search,
                "sort": sort,
            },
        )
        lines = export.rows_csv(
            CUSTOMER_COLUMNS,
            (
                (
                    row.external_id,
                    row.name,
                    row.totals.requests,
                    row.totals.input_tokens,
                    row.totals.output_tokens,
                    row.totals.reported_cost,
                    row.totals.unpriced_requests,
                    row.totals.usage_unknown_requests,
                    row.margin.revenue_usd if row.margin else None,
                    # Net revenue in other currencies, never converted (as on the page).
                    "; ".join(f"{r.net} {r.currency.upper()}" for r in row.margin.unconverted)
                    if row.margin
                    else None,
                    row.margin.margin_usd if row.margin else None,
                    row.margin.margin_pct if row.margin else None,
                    row.last_seen.isoformat() if row.last_seen else None,
                )
                for row in rows
            ),
        )
        response = HttpResponse("".join(lines), content_type="text/csv; charset=utf-8")
        days = f"{period.start:%Y%m%d}-{period.end:%Y%m%d}"
        response["Content-Disposition"] = (
            f'attachment; filename="costr-{self.organization.slug}-customers-{days}.csv"'
        )
        return response


@dataclass(frozen=True)
class NoCustomer:
    """The requests sent without X-Costr-Customer, shown as a customer page of their own."""

    external_id: str = ""
    name: str = ""
    pk: None = None
    stripe_customer_id: str = ""
    label: str = NO_CUSTOMER


class CustomerDetailView(ReportPageMixin, TemplateView):
    """One customer (or the requests without one): spend by day, by model and by the value of
    a property, its events, and revenue and margin by month."""

    template_name = "reporting/customer.html"
    kept_parameters = ("property",)

    def get(self, request, *args, **kwargs):
        if kwargs["external_id"] == "":
            self.customer = NoCustomer()
        else:
            self.customer = billing.costr_customer_by_external_id(
                organization=self.organization, external_id=kwargs["external_id"]
            )
        if self.customer is None:
            raise Http404("No such customer")
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        org, period, customer = self.organization, self.period, self.customer
        scope = dict(
            organization=org, customer=customer.external_id, start=period.start, end=period.end
        )
        by_model = selectors.customer_usage_by(**scope, group_by="model")
        by_day = selectors.customer_usage_by(**scope, group_by="day", zone=self.zone)
        days = period.local_days()
        totals = Totals()
        for values in by_model.values():
            totals.add(values)
        names = selectors.customer_property_names(**scope)
        options = SplitForm(self.request.GET)
        options.is_valid()
        chosen = options.cleaned_data.get("property") or ""
        if not chosen:
            chosen = "feature" if "feature" in names else (names[0] if names else "")
        elif chosen not in names:
            names = sorted([*names, chosen])
        property_rows = []
        if chosen:
            by_value = selectors.customer_usage_by_property(**scope, name=chosen)
            property_rows = _rows(by_value, {}, NO_VALUE)
        # The requests without a customer have no Stripe customer, so no revenue.
        connected = (
            customer.pk is not None and billing.stripe_connection_for(organization=org) is not None
        )
        months, revenue, margin = [], [], None
        if connected:
            revenue = billing.revenue_for_customer(
                organization=org, customer_id=customer.pk, start=period.start, end=period.end
            )
            margin = billing.margin(totals.cost, revenue) if revenue else None
            by_month = billing.revenue_by_customer_month(
                organization=org, start=period.start, end=period.end, customer_ids=[customer.pk]
            ).get(customer.pk, {})
            costs = selectors.customer_usage_by_month(
                organization=org,
                customer=customer.external_id,
                start=period.start,
                end=period.end,
            )
            for month in sorted(set(by_month) | set(costs)):
                cost = costs.get(month, Totals())
                entries = by_month.get(month, [])
                months.append(
                    {
                        "month": month,
                        "totals": cost,
                        "revenue": entries,
                        "margin": billing.margin(cost.cost, entries),
                    }
                )
        context.update(
            customer=customer,
            totals=totals,
            model_rows=_rows(by_model, {}, NO_MODEL),
            property_names=names,
            property_name=chosen,
            property_rows=property_rows,
            chart=_spend_chart({(day, ""): t for day, t in by_day.items()}, days, "Spend"),
            daily=_daily_rows({(day, ""): t for day, t in by_day.items()}, days),
            stripe_connected=connected,
            revenue=revenue,
            margin=margin,
            months=months,
            budget_uses=budgets.customer_budget_uses(
                organization=org, customer=customer.external_id
            ).uses,
        )
        return context


# Models and properties ----------------------------------------------------------------------


class ModelsView(ReportPageMixin, TemplateView):
    template_name = "reporting/models.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        org, period = self.organization, self.period
        by_name, providers = selectors.usage_by_model_name_with_providers(
            organization=org, start=period.start, end=period.end
        )
        current = {group: sum_totals(names.values()) for group, names in by_name.items()}
        previous = selectors.usage_by(
            organization=org,
            start=period.previous_start,
            end=period.previous_end,
            group_by="model",
        )
        by_day = selectors.usage_by_day(
            organization=org, start=period.start, end=period.end, zone=self.zone, split_by="model"
        )
        rows = _rows(current, previous, NO_MODEL)
        for row in rows:
            row.providers = providers.get(row.key, [])
            names = by_name[row.key]
            if list(names) != [row.key]:
                row.names = _rows(names, {}, NO_MODEL)
        context.update(rows=rows, chart=_spend_chart(by_day, period.local_days(), NO_MODEL))
        return context


class PropertiesView(ReportPageMixin, TemplateView):
    template_name = "reporting/properties.html"
    kept_parameters = ("name",)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        org, period = self.organization, self.period
        names = selectors.property_names_recent(
            organization=org, start=period.start, end=period.end
        )
        form = PropertyForm(self.request.GET)
        form.is_valid()
        chosen = (form.cleaned_data.get("name") or "").strip()
        if not chosen:
            chosen = "feature" if "feature" in names else (names[0] if names else "")
        rows = []
        if chosen:
            rows = _rows(
                *selectors.usage_by_property_compared(
                    organization=org,
                    current=(period.start, period.end),
                    previous=(period.previous_start, period.previous_end),
                    name=chosen,
                ),
                NO_VALUE,
            )
        # A typed name that no request in the period carried: every row is "not set".
        unknown = bool(chosen) and all(not row.key for row in rows)
        context.update(
            names=names,
            name=chosen,
            unknown_name=chosen if unknown else "",
            rows=rows,
            chart={
                "labels": [row.label for row in rows[:TOP]],
                "datasets": [
                    {"label": "Spend", "data": [_money(row.current.cost) for row in rows[:TOP]]}
                ],
            },
        )
        return context
