"""What every ``/api/v1/`` view stands on: who is asking, for which organization, and how errors
look.

Two kinds of caller reach the API. A program sends a Costr token (``Authorization: Bearer
costr_…``); the authentication class in ``apps.keys.authentication`` sets ``request.auth`` to
credentials naming the organization (``.organization``) and the token's ``.scopes``. A person
logged in to the dashboards comes with a session; API URLs carry no organization, so the person
names it with ``?org=<slug>`` (needed only when they belong to more than one). Either way
another organization's data answers 404, as if it did not exist.

Every error the API returns has one shape, ``{"error": {"code", "message", "details"?}}``, made
in ``exception_handler`` below and nowhere else.
"""

import logging

from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView, set_rollback
from rest_framework.views import exception_handler as drf_exception_handler

from apps.accounts.mixins import ScopedQuerysetMixin
from apps.accounts.models import Organization, role_at_least
from apps.accounts.selectors import membership_for, memberships_of_user

logger = logging.getLogger("costr.api")

ORG_QUERY_PARAMETER = "org"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def token_credentials(request):
    """``request.auth`` when the request came with a Costr token, else None. (The credentials
    class lives with the token, in ``apps.keys``, which this ground floor may not import.)"""
    credentials = request.auth
    if credentials is not None and hasattr(credentials, "organization"):
        return credentials
    return None


class TokenScopeAccess(BasePermission):
    """A token needs the view's ``required_scope``; a session needs a logged-in person (the role
    is checked with the organization). Anyone else is unauthenticated: 401."""

    def has_permission(self, request, view) -> bool:
        credentials = token_credentials(request)
        if credentials is not None:
            needed = view.required_scope
            if needed not in credentials.scopes:
                raise exceptions.PermissionDenied(
                    f"This token does not have the {needed} scope.", code="token_scope"
                )
            return True
        return bool(request.user and request.user.is_authenticated)


class StrictJSONParser(JSONParser):
    """DRF's JSON parser, also refusing bodies nested so deep that decoding them overflows the
    stack (Python raises RecursionError there, which would otherwise become a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as error:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from error


class OrganizationAPIView(ScopedQuerysetMixin, APIView):
    """Resolves the organization, checks scope or membership and role, and scopes every queryset.

    With a token the organization is the token's. With a session it is the URL's ``org_slug``
    when the route has one, else the ``?org=`` query parameter, which may be left out by someone
    who belongs to exactly one organization. A person who is not a member gets 404, as if the
    organization did not exist; a member below ``required_role`` (safe methods) or
    ``write_role`` (the rest) gets 403. ``get_queryset`` is final: subclasses narrow it in
    ``scope_queryset``.
    """

    permission_classes = [TokenScopeAccess]
    parser_classes = [StrictJSONParser]
    required_scope = "read"
    required_role = "member"
    write_role = "admin"

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.organization = self.resolve_organization(request, kwargs)

    def resolve_organization(self, request, kwargs) -> Organization:
        slug = kwargs.get("org_slug") or request.query_params.get(ORG_QUERY_PARAMETER) or None
        credentials = token_credentials(request)
        if credentials is not None:
            organization = credentials.organization
            if slug is not None and slug != organization.slug:
                raise Http404
            return organization
        if slug is None:
            membership = self._only_membership(request.user)
        else:
            membership = membership_for(user=request.user, organization_slug=slug)
        if membership is None:
            raise Http404
        needed = self.required_role if request.method in SAFE_METHODS else self.write_role
        if not role_at_least(membership.role, needed):
            raise exceptions.PermissionDenied(f"This needs the {needed} role.", code="role")
        return membership.organization

    def _only_membership(self, user):
        memberships = list(memberships_of_user(user=user)[:2])
        if len(memberships) == 1:
            return memberships[0]
        if not memberships:
            return None
        raise OrganizationRequired()


# --- Errors ---------------------------------------------------------------------------------


class BoundedPageSize(CursorPagination):
    """The API's cursor pages: ``{"next", "previous", "results"}`` with opaque cursor links, and
    a ``page_size`` from 1 to ``max_page_size`` (anything else is a 400, never a silent cap)."""

    page_size = 100
    max_page_size = 500
    page_size_query_param = "page_size"
    cursor_query_description = "Opaque: the `next` or `previous` link of a page carries it."

    def get_page_size(self, request):
        value = request.query_params.get(self.page_size_query_param)
        if value is None:
            return self.page_size
        try:
            size = int(value)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_page_size:
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"A whole number from 1 to {self.max_page_size}."]}
            )
        return size


class OrganizationRequired(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = (
        f"You belong to more than one organization: name one with ?{ORG_QUERY_PARAMETER}=<slug>."
    )
    default_code = "org_required"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Costr's database is unavailable; nothing was stored. Retry shortly."
    default_code = "database_unavailable"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


def _code_of(exc: exceptions.APIException) -> str:
    """The exception's own code when a caller gave one (``PermissionDenied(..., code=…)``),
    else its class's default code."""
    detail = exc.detail
    if isinstance(detail, exceptions.ErrorDetail) and detail.code:
        return detail.code
    return exc.default_code


def _error_body(exc: exceptions.APIException) -> dict:
    detail = exc.detail
    if isinstance(exc, exceptions.ValidationError):
        message = "The request is invalid."
        if isinstance(detail, dict):
            errors = [str(m) for m in _flat(detail)]
        else:
            errors = [str(m) for m in _flat(detail)]
            detail = {"non_field_errors": detail}
        if len(errors) == 1:
            message = errors[0]
        return {"code": "invalid", "message": message, "details": detail}
    body = {"code": _code_of(exc), "message": str(detail)}
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        body["details"] = {"retry_after_seconds": int(exc.wait)}
    return body


def _flat(values):
    if isinstance(values, dict):
        for value in values.values():
            yield from _flat(value)
    elif isinstance(values, list):
        for value in values:
            yield from _flat(value)
    else:
        yield values


def exception_handler(exc, context):
    """DRF's ``EXCEPTION_HANDLER``: every API error in the ``{"error": {…}}`` shape.

    DRF's own handler supplies the status and headers (``WWW-Authenticate``, ``Retry-After``);
    the body is reshaped here. A database that cannot be reached is a 503 (the transaction is
    rolled back, so nothing half-done stays). Anything else unexpected is logged and answered as
    a bare 500 in the same shape, never with a traceback.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("API request failed on the database: %s", type(exc).__name__)
        exc = ServiceUnavailable()
    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("API request failed", exc_info=exc)
        set_rollback()
        return Response(
            {"error": {"code": "server_error", "message": "Costr failed to handle this request."}},
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif not isinstance(exc, exceptions.APIException):
        exc = exceptions.PermissionDenied(*exc.args)
    response.data = {"error": _error_body(exc)}
    return response


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable: e.g. `invalid`, `not_found`.")
    message = serializers.CharField(help_text="For people; may change.")
    details = serializers.JSONField(
        required=False, help_text="Field errors of a validation failure, or other specifics."
    )


class ErrorSerializer(serializers.Serializer):
    """The body of every API error."""

    error = ErrorDetailSerializer()


ERROR_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a missing or invalid parameter.",
    401: "No token, or an unknown, revoked or expired one (with `WWW-Authenticate: Bearer`).",
    403: "The token lacks the scope, or the person lacks the role, this endpoint needs.",
    404: "No such object in this organization (another organization's objects answer 404 too).",
    405: "Method not allowed.",
    413: "Request body too large.",
    415: "Unsupported media type: send `Content-Type: application/json`.",
    429: "Too many requests.",
    503: "Costr's database is unavailable; nothing was stored. Retry shortly.",
}


def org_parameter():
    """The ``?org=`` query parameter, for the schema of endpoints that take a session."""
    from drf_spectacular.utils import OpenApiParameter

    return OpenApiParameter(
        ORG_QUERY_PARAMETER,
        str,
        OpenApiParameter.QUERY,
        required=False,
        description="With a browser session: the organization's slug, needed when the person "
        "belongs to more than one. Ignored with a token (a token names its organization; "
        "another organization's slug answers 404).",
    )


def error_responses(*codes: int) -> dict:
    """Schema responses for the error statuses an endpoint can answer, for ``extend_schema``."""
    from drf_spectacular.utils import OpenApiResponse

    return {
        code: OpenApiResponse(response=ErrorSerializer, description=ERROR_DESCRIPTIONS[code])
        for code in codes
    }
