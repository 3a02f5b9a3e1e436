"""``/api/v1/`` reporting endpoints: events, the spend report and customers with their margin.

Views are thin: they read their parameters through the serializers in ``serializers.py``, ask
the reporting and billing selectors (rollups for whole UTC days, events only for the edges and
for what rollups cannot answer), and shape the answer. Each reads a fixed number of queries,
however much data the organization has.
"""

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import parse_qs, urlencode

from django.http import Http404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from apps.accounts.api import (
    BoundedPageSize,
    OrganizationAPIView,
    error_responses,
    org_parameter,
)
from apps.billing import selectors as billing
from apps.reporting import paging, selectors
from apps.reporting.selectors import Totals
from apps.reporting.serializers import (
    DEFAULT_DAYS,
    PROPERTY_GROUP,
    CustomerSerializer,
    EventQuerySerializer,
    PeriodQuerySerializer,
    SpendQuerySerializer,
    SpendReportSerializer,
    UsageEventSerializer,
)
from apps.usage.models import Customer, PriceSource

READ_ERRORS = (400, 401, 403, 404, 405, 503)


class ExternalIdConverter:
    """A customer's external id in ``/customers/{external_id}/``: the rest of the path, whatever
    it holds. External ids come from the X-Costr-Customer header or the ingest API and may hold
    slashes, spaces, newlines or any Unicode; a client percent-encodes the id once, and the
    server has decoded it by the time the URL is matched (so ``%2F`` arrives as ``/``)."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


# --- Pagination ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cursor:
    reverse: bool
    position: tuple


class KeysetPagination(BoundedPageSize):
    """DRF's cursor pagination (opaque ``cursor`` links in ``{"next", "previous", "results"}``)
    over a keyset (``paging``): the position is made of the whole ordering, e.g. (timestamp,
    id), instead of its first field plus an offset, so every row has a position of its own and
    the database seeks to it along its index. A malformed cursor is a 400."""

    page_size_query_description = (
        f"Results per page, 1 to {BoundedPageSize.max_page_size} "
        f"(default {BoundedPageSize.page_size})."
    )
    keyset: paging.Keyset

    def decode_cursor(self, request):
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        try:
            tokens = parse_qs(base64.b64decode(encoded.encode("ascii"), validate=True).decode())
            reverse = tokens.get("r", ["0"])[0] == "1"
            position = self.keyset.position_from(json.loads(tokens["p"][0]))
        except (
            KeyError,
            IndexError,
            ValueError,
            TypeError,
            UnicodeError,
            binascii.Error,
            RecursionError,  # JSON nested beyond what the decoder can follow
        ):
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]}) from None
        return _Cursor(reverse=reverse, position=position)

    def _encode(self, *, reverse: bool, row) -> str:
        tokens = {"p": json.dumps(self.keyset.position_of(row), ensure_ascii=False)}
        if reverse:
            tokens["r"] = "1"
        encoded = base64.b64encode(urlencode(tokens).encode("ascii")).decode("ascii")
        return replace_query_param(self.base_url, self.cursor_query_param, encoded)

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        self.page_size = self.get_page_size(request)
        self.base_url = request.build_absolute_uri()
        self.cursor = self.decode_cursor(request)
        page = self.keyset.page(
            queryset,
            position=None if self.cursor is None else self.cursor.position,
            forward=self.cursor is None or not self.cursor.reverse,
            size=self.page_size,
        )
        self.page, self.has_next, self.has_previous = page.rows, page.has_next, page.has_previous
        return self.page

    def get_next_link(self):
        if not (self.has_next and self.page):
            return None
        return self._encode(reverse=False, row=self.page[-1])

    def get_previous_link(self):
        if not (self.has_previous and self.page):
            return None
        return self._encode(reverse=True, row=self.page[0])


class EventPagination(KeysetPagination):
    """Newest first; ties on the timestamp by id, newest first."""

    keyset = paging.EVENTS


class ByExternalId(paging.Keyset):
    """Customers by external id (unique in an organization), then id."""

    fields = (("external_id", True), ("id", True))

    def position_of(self, row) -> list:
        return [row.external_id, row.pk]

    def position_from(self, values) -> tuple[str, int]:
        external_id, pk = values
        if not isinstance(external_id, str) or type(pk) is not int or "\x00" in external_id:
            raise TypeError("cursor position")
        return external_id, pk


class CustomerPagination(KeysetPagination):
    keyset = ByExternalId()


def _page_serializer(name: str, item: serializers.Serializer):
    """The ``{"next", "previous", "results"}`` shape around ``item``, for the schema."""
    return type(
        name,
        (serializers.Serializer,),
        {
            "__doc__": "One page; follow `next` for older (later) results until it is null.",
            "next": serializers.URLField(allow_null=True, help_text="The next page, or null."),
            "previous": serializers.URLField(
                allow_null=True, help_text="The previous page, or null."
            ),
            "results": item,
        },
    )


UsageEventPageSerializer = _page_serializer("UsageEventPage", UsageEventSerializer(many=True))
CustomerPageSerializer = _page_serializer("CustomerPage", CustomerSerializer(many=True))


def _page_parameters():
    return [
        OpenApiParameter(
            "cursor",
            str,
            OpenApiParameter.QUERY,
            description=KeysetPagination.cursor_query_description,
        ),
        OpenApiParameter(
            "page_size",
            {"type": "integer", "minimum": 1, "maximum": KeysetPagination.max_page_size},
            OpenApiParameter.QUERY,
            description=KeysetPagination.page_size_query_description,
        ),
    ]


# --- Parameters ---------------------------------------------------------------------------------

BOUND_SCHEMA = {
    "oneOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]
}


def _bound_parameters(*, default: bool):
    when = (
        f" Without `start` and `end`: the last {DEFAULT_DAYS} UTC days, today included."
        if default
        else " Without it: no bound."
    )
    return [
        OpenApiParameter(
            "start",
            BOUND_SCHEMA,
            OpenApiParameter.QUERY,
            description="The period's first instant: an ISO 8601 date (from 00:00 UTC that day) "
            "or date and time (UTC when it names no zone)." + when,
        ),
        OpenApiParameter(
            "end",
            BOUND_SCHEMA,
            OpenApiParameter.QUERY,
            description="The period's end: an ISO 8601 date is the last day included (to 00:00 "
            "UTC the day after); a date and time is the first instant left out." + when,
        ),
    ]


def _read(serializer_class, request, **context):
    # A plain dict, not the QueryDict: DRF reads an empty form value as "not given", and a
    # `start=` left empty is a mistake to report, not a period to guess.
    query = serializer_class(data=request.query_params.dict(), context=context)
    query.is_valid(raise_exception=True)
    return query.validated_data


def _figures(totals: Totals) -> dict:
    return {
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "cached_input_tokens": totals.cached_input_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "output_tokens": totals.output_tokens,
        "reasoning_tokens": totals.reasoning_tokens,
        "cost_usd": totals.reported_cost,
        "unpriced_requests": totals.unpriced_requests,
        "usage_unknown_requests": totals.usage_unknown_requests,
    }


# --- Events -------------------------------------------------------------------------------------


class EventListView(OrganizationAPIView):
    @extend_schema(
        operation_id="events_list",
        summary="Usage events, newest first",
        description=(
            "One event per request Costr forwarded (or the SDK reported through ingest), "
            "newest first, ties by id. Cursor-paginated: follow `next` until it is null; each "
            "event appears exactly once in a walk.\n\n"
            "Filters combine with AND. Besides the parameters listed, **property filters** are "
            "query parameters named `property.<name>` with the exact value wanted, e.g. "
            "`?property.feature=summaries&property.env=prod` (the name is everything after "
            "the first dot; names and values up to 255 characters)."
        ),
        parameters=[
            *_bound_parameters(default=False),
            OpenApiParameter(
                "customer",
                str,
                description="The customer's external id (X-Costr-Customer), or its beginning: "
                "`acme` also finds `acme-eu` (case-sensitive).",
            ),
            OpenApiParameter(
                "provider",
                {"type": "string", "enum": ["openai", "anthropic", "google"]},
                description="The provider the request went to.",
            ),
            OpenApiParameter(
                "model",
                str,
                description="The model as stored, or its beginning: `gpt-4o-mini` also finds "
                "`gpt-4o-mini-2024-07-18` (case-sensitive).",
            ),
            OpenApiParameter(
                "status",
                {"type": "integer", "minimum": 100, "maximum": 599},
                description="The upstream HTTP status.",
            ),
            OpenApiParameter(
                "outcome",
                {
                    "type": "string",
                    "enum": [
                        "ok",
                        "upstream_error",
                        "client_disconnected",
                        "upstream_disconnected",
                        "costr_error",
                    ],
                },
                description="How the request ended: `ok`, an upstream error, a client or "
                "upstream that went away mid-stream, or Costr's own error.",
            ),
            OpenApiParameter(
                "price_source",
                {"type": "string", "enum": list(PriceSource.values)},
                description="Why the cost is what it is: `catalog`, `override`, `unpriced` "
                "(no price for the model), `no_usage` (billed nothing), `usage_unknown` (usage "
                "could not be read).",
            ),
            *_page_parameters(),
            org_parameter(),
        ],
        responses={200: UsageEventPageSerializer, **error_responses(*READ_ERRORS)},
        tags=["reporting"],
    )
    def get(self, request, *args, **kwargs):
        query = _read(EventQuerySerializer, request, query=request.query_params)
        events = selectors.events_filtered(
            organization=self.organization,
            start=query.get("start"),
            end=query.get("end"),
            customer=query.get("customer"),
            provider=query.get("provider"),
            model=query.get("model"),
            status=query.get("status"),
            outcome=query.get("outcome"),
            price_source=query.get("price_source"),
            properties=query["properties"],
        ).defer("raw_usage")
        paginator = EventPagination()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(UsageEventSerializer(page, many=True).data)


# --- Spend report -------------------------------------------------------------------------------


def _spend_rows(organization, *, group_by: str, start, end) -> list[tuple[str | None, Totals]]:
    if group_by == "day":
        by_day = selectors.usage_by_day(organization=organization, start=start, end=end, zone=UTC)
        return sorted((day.isoformat(), totals) for (day, _), totals in by_day.items())
    if group_by.startswith(PROPERTY_GROUP):
        found = selectors.usage_by_property(
            organization=organization, start=start, end=end, name=group_by[len(PROPERTY_GROUP) :]
        )
    else:
        found = selectors.usage_by(
            organization=organization, start=start, end=end, group_by=group_by
        )
    rows = [(key or None, totals) for key, totals in found.items() if totals.requests]
    # Costliest first; ties by requests, then by key (requests without one last).
    rows.sort(key=lambda row: (-row[1].cost, -row[1].requests, row[0] is None, row[0] or ""))
    return rows


class SpendReportView(OrganizationAPIView):
    @extend_schema(
        operation_id="reports_spend",
        summary="Spend and tokens grouped by day, customer, model, provider or a property",
        description=(
            "Sums over [start, end) per group, and the total. `cost_usd` sums the priced "
            "requests; `unpriced_requests` counts the requests whose model has no known price "
            "and `usage_unknown_requests` the billable successes whose usage could not be read "
            "(both add nothing to the cost and are never priced at $0; requests the provider "
            "bills nothing for, such as errors, are neither). A group whose requests are all "
            "unpriced or usage-unknown has `cost_usd` null.\n\n"
            "`group_by`: `day` (UTC days, `key` `YYYY-MM-DD`, in date order), `customer` (the "
            "external id), `model` (the price catalogue's model id: `gpt-4o-mini-2024-07-18` "
            "and a failed `gpt-4o-mini` call are both `gpt-4o-mini`; a model the catalogue "
            "does not know is its own key), `provider`, or `property:<name>` (the property's "
            "value). "
            "Other groupings come costliest first. Only groups with requests are listed. Whole "
            "UTC days are read from daily rollups (properties included), so long periods stay "
            "fast; only the partial days at the period's edges read events."
        ),
        parameters=[
            OpenApiParameter(
                "group_by",
                {
                    "type": "string",
                    "pattern": "^(day|customer|model|provider|property:.+)$",
                    "default": "day",
                },
                description="day, customer, model, provider or property:<name> (default day).",
            ),
            *_bound_parameters(default=True),
            org_parameter(),
        ],
        responses={200: SpendReportSerializer, **error_responses(*READ_ERRORS)},
        tags=["reporting"],
    )
    def get(self, request, *args, **kwargs):
        query = _read(SpendQuerySerializer, request, now=timezone.now())
        start, end, group_by = query["start"], query["end"], query["group_by"]
        rows = _spend_rows(self.organization, group_by=group_by, start=start, end=end)
        total = Totals()
        for _, totals in rows:
            total.add(totals)
        body = {
            "group_by": group_by,
            "start": start,
            "end": end,
            "rows": [{"key": key, **_figures(totals)} for key, totals in rows],
            "total": _figures(total),
        }
        return Response(SpendReportSerializer(body).data)


# --- Customers ----------------------------------------------------------------------------------


def _customer_body(customer, totals: Totals, revenue: list) -> dict:
    # A margin over an unknown cost would be the revenue itself: none is given.
    margin = billing.margin(totals.cost, revenue) if revenue and not totals.cost_unknown else None
    return {
        "external_id": customer.external_id,
        "name": customer.name,
        "stripe_customer_id": customer.stripe_customer_id or None,
        "requests": totals.requests,
        "cost_usd": totals.reported_cost,
        "unpriced_requests": totals.unpriced_requests,
        "usage_unknown_requests": totals.usage_unknown_requests,
        "revenue": [{"currency": r.currency, "gross": r.gross, "net": r.net} for r in revenue],
        "margin_usd": margin.margin_usd if margin else None,
        "margin_pct": margin.margin_pct if margin else None,
    }


CUSTOMER_DESCRIPTION = (
    "Usage is summed over [start, end); revenue is the Stripe revenue of the Stripe customers "
    "mapped to the customer over the same period, per settlement currency, in major units "
    "(dollars, not cents; yen as whole yen), never converted. `margin_usd` is net USD revenue "
    "minus the cost, null without USD revenue; `margin_pct` is that margin as a percentage of "
    "the net USD revenue, null when it is not positive."
)


class CustomerListView(OrganizationAPIView):
    model = Customer

    @extend_schema(
        operation_id="customers_list",
        summary="Customers with their cost, revenue and margin",
        description="Every customer the organization has sent traffic for, by external id. "
        + CUSTOMER_DESCRIPTION,
        parameters=[*_bound_parameters(default=True), *_page_parameters(), org_parameter()],
        responses={200: CustomerPageSerializer, **error_responses(*READ_ERRORS)},
        tags=["reporting"],
    )
    def get(self, request, *args, **kwargs):
        query = _read(PeriodQuerySerializer, request, now=timezone.now())
        start, end = query["start"], query["end"]
        paginator = CustomerPagination()
        page = paginator.paginate_queryset(self.get_queryset(), request, view=self)
        usage = (
            selectors.usage_by(
                organization=self.organization, start=start, end=end, group_by="customer"
            )
            if page
            else {}
        )
        revenue = (
            billing.revenue_by_customer(
                organization=self.organization,
                start=start,
                end=end,
                customer_ids=[c.pk for c in page],
            )
            if page
            else {}
        )
        results = [
            _customer_body(c, usage.get(c.external_id, Totals()), revenue.get(c.pk, []))
            for c in page
        ]
        return paginator.get_paginated_response(CustomerSerializer(results, many=True).data)


class CustomerDetailView(OrganizationAPIView):
    model = Customer

    @extend_schema(
        operation_id="customers_retrieve",
        summary="One customer's cost, revenue and margin",
        description=CUSTOMER_DESCRIPTION
        + "\n\nAnother organization's customer, like an unknown one, answers 404.",
        parameters=[
            OpenApiParameter(
                "external_id",
                OpenApiTypes.STR,
                OpenApiParameter.PATH,
                description="The customer's external id, percent-encoded once; it may contain "
                "slashes, spaces or any Unicode.",
            ),
            *_bound_parameters(default=True),
            org_parameter(),
        ],
        responses={200: CustomerSerializer, **error_responses(*READ_ERRORS)},
        tags=["reporting"],
    )
    def get(self, request, *args, **kwargs):
        query = _read(PeriodQuerySerializer, request, now=timezone.now())
        start, end = query["start"], query["end"]
        external_id = kwargs["external_id"]
        # No stored id holds NUL (and PostgreSQL could not even compare with one).
        customer = (
            None
            if "\x00" in external_id
            else self.get_queryset().filter(external_id=external_id).first()
        )
        if customer is None:
            raise Http404
        totals = Totals()
        by_provider = selectors.customer_usage_by(
            organization=self.organization,
            customer=customer.external_id,
            start=start,
            end=end,
            group_by="provider",
        )
        for values in by_provider.values():
            totals.add(values)
        revenue = billing.revenue_for_customer(
            organization=self.organization, customer_id=customer.pk, start=start, end=end
        )
        return Response(CustomerSerializer(_customer_body(customer, totals, revenue)).data)
