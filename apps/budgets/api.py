"""``/api/v1/budgets/``: list, create, read, change and delete budgets.

Reading takes a token with the ``read`` scope or a member's session; changing takes the
``manage`` scope or an admin's session (``OrganizationAPIView``'s ``write_role``). The rules for
what a budget may be live in ``services``, which the Budgets pages use too; its messages are
returned field by field in the API's error shape.
"""

import base64
from urllib.parse import parse_qs

from django.http import Http404
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from apps.accounts.api import (
    SAFE_METHODS,
    BoundedPageSize,
    OrganizationAPIView,
    error_responses,
    org_parameter,
)
from apps.accounts.services import client_ip
from apps.budgets import selectors, services
from apps.budgets.models import Budget
from apps.budgets.serializers import (
    BudgetCreateSerializer,
    BudgetDetailSerializer,
    BudgetSerializer,
    BudgetUpdateSerializer,
    budget_body,
)

CREATE_FIELDS = {
    "scope",
    "customer",
    "token",
    "property_name",
    "property_value",
    "period",
    "limit_usd",
    "enforce",
    "fail_closed",
    "alert_thresholds",
}
REQUIRED_FIELDS = ("scope", "period", "limit_usd")
# Named on create, fixed after: PATCH gets the services' "cannot change" message for them.
FIXED_FIELDS = {"scope", "customer", "token", "property_name", "property_value"}
READ_ERRORS = (400, 401, 403, 404, 405, 503)
WRITE_ERRORS = (400, 401, 403, 404, 405, 415, 503)

BUDGET_DESCRIPTION = (
    "A budget caps spend for one scope over the current calendar day or month in the "
    "organization's time zone: `organization`, one `customer`, `each_customer` (a default cap "
    "every customer gets on its own; a `customer` budget for one customer takes precedence), "
    "one proxy `token`, or one `property` value. With `enforce` the proxy refuses a request "
    "that would take the spend past the limit (429 `budget_exceeded`); without it, only alerts "
    "fire, at each of `alert_thresholds` percent.\n\n"
    "`spent_usd` and `reserved_usd` are live from the budget store (spend settled and "
    "requests still running, across every worker); for a counter the store does not hold yet, "
    "or while the store cannot be reached, `spent_usd` comes from the stored events and "
    "`reserved_usd` is 0. An `each_customer` budget has a counter per customer, so its "
    "`spent_usd` and `reserved_usd` are null: its own endpoint lists `top_customers`."
)


def _scope_needed(request) -> str:
    return "read" if request.method in SAFE_METHODS else "manage"


def _actor(request):
    return request.user if request.user and request.user.is_authenticated else None


def _body_object(request) -> dict:
    if not isinstance(request.data, dict):
        raise ValidationError({"non_field_errors": ["Send a JSON object."]})
    return request.data


def _refused(error: services.BudgetError) -> ValidationError:
    return ValidationError({field: [message] for field, message in error.errors.items()})


def _cursor_shaped(encoded: str) -> bool:
    """Whether ``encoded`` is what DRF's cursor links hold: base64 of a query string with a
    position, offset or direction, and nothing else (DRF itself reads any text as the start)."""
    try:
        tokens = parse_qs(base64.b64decode(encoded.encode("ascii"), validate=True).decode())
    except (ValueError, UnicodeError):
        return False
    return bool(tokens) and set(tokens) <= {"o", "r", "p"}


class BudgetPagination(BoundedPageSize):
    """Oldest first, in pages of ``{"next", "previous", "results"}`` like the other lists; a
    malformed cursor or page size is a 400, as there."""

    ordering = ("created_at", "id")

    def decode_cursor(self, request):
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is not None and not _cursor_shaped(encoded):
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]})
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            cursor, valid = None, False
        else:
            # The position is compared with created_at: anything but a moment is refused here
            # rather than by the database.
            valid = (
                cursor is None
                or cursor.position is None
                or ("\x00" not in cursor.position and parse_datetime(cursor.position) is not None)
            )
        if not valid:
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]})
        return cursor


BudgetPageSerializer = type(
    "BudgetPage",
    (serializers.Serializer,),
    {
        "__doc__": "One page; follow `next` until it is null.",
        "next": serializers.URLField(allow_null=True, help_text="The next page, or null."),
        "previous": serializers.URLField(allow_null=True, help_text="The previous page, or null."),
        "results": BudgetSerializer(many=True),
    },
)

PAGE_PARAMETERS = [
    OpenApiParameter(
        "cursor",
        str,
        OpenApiParameter.QUERY,
        description=BudgetPagination.cursor_query_description,
    ),
    OpenApiParameter(
        "page_size",
        {"type": "integer", "minimum": 1, "maximum": BudgetPagination.max_page_size},
        OpenApiParameter.QUERY,
        description=f"Results per page, 1 to {BudgetPagination.max_page_size} "
        f"(default {BudgetPagination.page_size}).",
    ),
]
ID_PARAMETER = OpenApiParameter(
    "budget_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="The budget's id, `bud_…`."
)


class BudgetAPIView(OrganizationAPIView):
    model = Budget

    @property
    def required_scope(self) -> str:
        return _scope_needed(self.request)

    def scope_queryset(self, queryset):
        return queryset.select_related("token")


class BudgetListView(BudgetAPIView):
    @extend_schema(
        operation_id="budgets_list",
        summary="Budgets, with their use in the current period",
        description=BUDGET_DESCRIPTION,
        parameters=[*PAGE_PARAMETERS, org_parameter()],
        responses={200: BudgetPageSerializer, **error_responses(*READ_ERRORS)},
        tags=["budgets"],
    )
    def get(self, request, *args, **kwargs):
        paginator = BudgetPagination()
        page = paginator.paginate_queryset(self.get_queryset(), request, view=self)
        uses = selectors.budget_uses(organization=self.organization, budgets=page).uses
        results = BudgetSerializer([budget_body(use) for use in uses], many=True).data
        return paginator.get_paginated_response(results)

    @extend_schema(
        operation_id="budgets_create",
        summary="Create a budget",
        description="Needs a token with the `manage` scope, or an admin's session. The fields "
        "that name what the budget covers depend on `scope`: `customer`, `token` (a prefix) or "
        "`property_name` and `property_value`; the others are ignored. One budget per scope, "
        "target and period: a second answers 400. The proxy enforces a new budget within "
        "seconds.",
        request=BudgetCreateSerializer,
        parameters=[org_parameter()],
        responses={201: BudgetDetailSerializer, **error_responses(*WRITE_ERRORS)},
        examples=[
            OpenApiExample(
                "A daily cap per customer",
                value={"scope": "each_customer", "period": "day", "limit_usd": "5"},
                request_only=True,
            )
        ],
        tags=["budgets"],
    )
    def post(self, request, *args, **kwargs):
        data = _body_object(request)
        unknown = sorted(set(data) - CREATE_FIELDS)
        if unknown:
            raise ValidationError({field: ["Unknown field."] for field in unknown})
        missing = [field for field in REQUIRED_FIELDS if field not in data]
        if missing:
            raise ValidationError({field: ["This field is required."] for field in missing})
        try:
            budget = services.budget_create(
                organization=self.organization,
                actor=_actor(request),
                ip=client_ip(request),
                **data,
            )
        except services.BudgetError as error:
            raise _refused(error) from None
        use = selectors.budget_use(organization=self.organization, budget=budget).uses[0]
        return Response(
            BudgetDetailSerializer(budget_body(use, detail=True)).data,
            status=status.HTTP_201_CREATED,
        )


class BudgetDetailView(BudgetAPIView):
    def _budget(self, budget_id: str) -> Budget:
        budget = self.get_queryset().filter(public_id=budget_id).first()
        if budget is None:
            raise Http404
        return budget

    def _answer(self, budget: Budget, status_code: int = 200) -> Response:
        use = selectors.budget_use(organization=self.organization, budget=budget).uses[0]
        return Response(
            BudgetDetailSerializer(budget_body(use, detail=True)).data, status=status_code
        )

    @extend_schema(
        operation_id="budgets_retrieve",
        summary="One budget, with its use in the current period",
        description=BUDGET_DESCRIPTION
        + "\n\nAnother organization's budget, like an unknown one, answers 404.",
        parameters=[ID_PARAMETER, org_parameter()],
        responses={200: BudgetDetailSerializer, **error_responses(*READ_ERRORS)},
        tags=["budgets"],
    )
    def get(self, request, *args, **kwargs):
        return self._answer(self._budget(kwargs["budget_id"]))

    @extend_schema(
        operation_id="budgets_partial_update",
        summary="Change a budget's period, limit, enforcement, fail-closed setting or thresholds",
        description="Needs a token with the `manage` scope, or an admin's session. Send only "
        "the fields to change. A budget's scope and what it names (`scope`, `customer`, "
        "`token`, `property_name`, `property_value`) cannot change: that answers 400; delete "
        "it and create another.",
        request=BudgetUpdateSerializer,
        parameters=[ID_PARAMETER, org_parameter()],
        responses={200: BudgetDetailSerializer, **error_responses(*WRITE_ERRORS)},
        tags=["budgets"],
    )
    def patch(self, request, *args, **kwargs):
        budget = self._budget(kwargs["budget_id"])
        data = _body_object(request)
        unknown = sorted(set(data) - set(services.CHANGEABLE) - FIXED_FIELDS)
        if unknown:
            raise ValidationError({field: ["Unknown field."] for field in unknown})
        if not data:
            raise ValidationError({"non_field_errors": ["Send at least one field to change."]})
        try:
            budget = services.budget_update(
                budget=budget, actor=_actor(request), ip=client_ip(request), changes=dict(data)
            )
        except services.BudgetError as error:
            raise _refused(error) from None
        return self._answer(budget)

    @extend_schema(
        operation_id="budgets_destroy",
        summary="Delete a budget",
        description="Needs a token with the `manage` scope, or an admin's session. The proxy "
        "stops enforcing it within seconds.",
        parameters=[ID_PARAMETER, org_parameter()],
        responses={
            204: OpenApiResponse(description="Deleted."),
            **error_responses(401, 403, 404, 405, 503),
        },
        tags=["budgets"],
    )
    def delete(self, request, *args, **kwargs):
        budget = self._budget(kwargs["budget_id"])
        services.budget_delete(budget=budget, actor=_actor(request), ip=client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
