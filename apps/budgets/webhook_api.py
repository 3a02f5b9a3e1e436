"""``/api/v1/webhooks/``: list and create signed alert webhooks, read and delete one.

Reading takes a token with the ``read`` scope or a member's session; creating and deleting take
the ``manage`` scope or an admin's session. A webhook's signing secret is in the creation's
answer and nowhere else, ever; the rules for a URL (https, a public host) are ``outbound``'s,
shared with the Alerts page.
"""

from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from apps.accounts.api import SAFE_METHODS, OrganizationAPIView, error_responses, org_parameter
from apps.accounts.services import client_ip
from apps.budgets import alert_services
from apps.budgets.api import PAGE_PARAMETERS, BudgetPagination
from apps.budgets.models import EventType, Webhook

READ_ERRORS = (400, 401, 403, 404, 405, 503)
WRITE_ERRORS = (400, 401, 403, 404, 405, 415, 503)
CREATE_FIELDS = {"url", "events"}

WEBHOOK_DESCRIPTION = (
    "Costr `POST`s each alert to every webhook subscribed to its type, as JSON "
    '`{"id", "type", "created", "organization", "data"}`, signed in the header '
    '`Costr-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>` '
    "(compare in constant time; refuse a `t` more than a few minutes old). Any answer but a "
    "2xx, or none within the timeout (10 s by default), is retried with backoff (30 s, 1, 2, "
    "4 … minutes, at most an hour apart) for 24 hours; redirects are not followed. Types: "
    "`budget.threshold_crossed`, `budget.exceeded`, `spend.anomaly`. At most 20 webhooks per "
    "organization."
)


class WebhookSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The webhook's id, `wh_…`.")
    url = serializers.URLField(help_text="Where alerts are sent (https, a public host).")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        help_text="The alert types sent to it.",
    )
    created = serializers.DateTimeField(help_text="When it was created (UTC).")


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(
        help_text="The signing secret, `whsec_…`: shown in this answer only, never again."
    )


class WebhookCreateSerializer(serializers.Serializer):
    """For the schema only: ``alert_services`` checks the body, with its own messages."""

    url = serializers.URLField(
        max_length=2000, help_text="https, on a host whose addresses are all public."
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        min_length=1,
        help_text="One or more alert types.",
    )


WebhookPageSerializer = type(
    "WebhookPage",
    (serializers.Serializer,),
    {
        "__doc__": "One page; follow `next` until it is null.",
        "next": serializers.URLField(allow_null=True, help_text="The next page, or null."),
        "previous": serializers.URLField(allow_null=True, help_text="The previous page, or null."),
        "results": WebhookSerializer(many=True),
    },
)
ID_PARAMETER = OpenApiParameter(
    "webhook_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="The webhook's id, `wh_…`."
)


def webhook_body(webhook: Webhook) -> dict:
    return {
        "id": webhook.public_id,
        "url": webhook.url,
        "events": list(webhook.events),
        "created": webhook.created_at,
    }


def _actor(request):
    return request.user if request.user and request.user.is_authenticated else None


class WebhookAPIView(OrganizationAPIView):
    model = Webhook

    @property
    def required_scope(self) -> str:
        return "read" if self.request.method in SAFE_METHODS else "manage"


class WebhookListView(WebhookAPIView):
    @extend_schema(
        operation_id="webhooks_list",
        summary="Alert webhooks",
        description=WEBHOOK_DESCRIPTION,
        parameters=[*PAGE_PARAMETERS, org_parameter()],
        responses={200: WebhookPageSerializer, **error_responses(*READ_ERRORS)},
        tags=["webhooks"],
    )
    def get(self, request, *args, **kwargs):
        paginator = BudgetPagination()
        page = paginator.paginate_queryset(self.get_queryset(), request, view=self)
        results = WebhookSerializer([webhook_body(w) for w in page], many=True).data
        return paginator.get_paginated_response(results)

    @extend_schema(
        operation_id="webhooks_create",
        summary="Create an alert webhook (its secret is in this answer only)",
        description="Needs a token with the `manage` scope, or an admin's session. The URL "
        "must use https and its host must resolve to public addresses only. " + WEBHOOK_DESCRIPTION,
        request=WebhookCreateSerializer,
        parameters=[org_parameter()],
        responses={201: WebhookCreatedSerializer, **error_responses(*WRITE_ERRORS)},
        examples=[
            OpenApiExample(
                "Every alert",
                value={
                    "url": "https://example.com/costr-alerts",
                    "events": ["budget.threshold_crossed", "budget.exceeded", "spend.anomaly"],
                },
                request_only=True,
            )
        ],
        tags=["webhooks"],
    )
    def post(self, request, *args, **kwargs):
        if not isinstance(request.data, dict):
            raise ValidationError({"non_field_errors": ["Send a JSON object."]})
        data = request.data
        unknown = sorted(set(data) - CREATE_FIELDS)
        if unknown:
            raise ValidationError({field: ["Unknown field."] for field in unknown})
        missing = sorted(CREATE_FIELDS - set(data))
        if missing:
            raise ValidationError({field: ["This field is required."] for field in missing})
        try:
            created = alert_services.webhook_create(
                organization=self.organization,
                actor=_actor(request),
                ip=client_ip(request),
                url=data["url"],
                events=data["events"],
            )
        except alert_services.ChannelError as error:
            raise ValidationError(
                {field: [message] for field, message in error.errors.items()}
            ) from None
        body = {**webhook_body(created.webhook), "secret": created.secret}
        return Response(WebhookCreatedSerializer(body).data, status=status.HTTP_201_CREATED)


class WebhookDetailView(WebhookAPIView):
    def _webhook(self, webhook_id: str) -> Webhook:
        webhook = self.get_queryset().filter(public_id=webhook_id).first()
        if webhook is None:
            raise Http404
        return webhook

    @extend_schema(
        operation_id="webhooks_retrieve",
        summary="One alert webhook",
        description="Another organization's webhook, like an unknown one, answers 404. The "
        "secret is never shown again.",
        parameters=[ID_PARAMETER, org_parameter()],
        responses={200: WebhookSerializer, **error_responses(*READ_ERRORS)},
        tags=["webhooks"],
    )
    def get(self, request, *args, **kwargs):
        return Response(WebhookSerializer(webhook_body(self._webhook(kwargs["webhook_id"]))).data)

    @extend_schema(
        operation_id="webhooks_destroy",
        summary="Delete an alert webhook",
        description="Needs a token with the `manage` scope, or an admin's session. Its pending "
        "deliveries stop, and its delivery log goes with it.",
        parameters=[ID_PARAMETER, org_parameter()],
        responses={
            204: OpenApiResponse(description="Deleted."),
            **error_responses(401, 403, 404, 405, 503),
        },
        tags=["webhooks"],
    )
    def delete(self, request, *args, **kwargs):
        webhook = self._webhook(kwargs["webhook_id"])
        alert_services.webhook_delete(webhook=webhook, actor=_actor(request), ip=client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
