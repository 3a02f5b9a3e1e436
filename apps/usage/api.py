"""``POST /api/v1/ingest/``: usage of calls an SDK made straight to the provider while Costr was
unreachable, reported afterwards so that no request goes unbilled."""

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error

from apps.accounts.api import OrganizationAPIView, PayloadTooLarge, error_responses
from apps.keys.authentication import TokenAuthentication
from apps.usage.metering.events import usage_events_write
from apps.usage.serializers import (
    BODY_SHAPE,
    MAX_EVENTS,
    IngestBatchSerializer,
    IngestEventSerializer,
    IngestFailureSerializer,
    IngestResultSerializer,
    ingest_context,
    ingest_record,
)

# 500 events with 20 long properties each fit with room to spare.
MAX_BODY_BYTES = 8 * 1024 * 1024

EXAMPLE_EVENT = {
    "event_id": "evt_01J9Z3",
    "timestamp": "2026-03-01T12:00:00Z",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "endpoint": "chat",
    "customer": "acme",
    "properties": {"feature": "summaries"},
    "status": 200,
    "input_tokens": 1200,
    "cached_input_tokens": 1000,
    "output_tokens": 300,
    "latency_ms": 840,
}


class IngestView(OrganizationAPIView):
    """Stores each valid event priced by Costr, idempotently by ``event_id``."""

    required_scope = "ingest"
    # A program's call: no session (and so no CSRF) here.
    authentication_classes = [TokenAuthentication]

    @extend_schema(
        operation_id="ingest_events",
        summary="Report usage of calls made directly to a provider",
        description=(
            f"Up to {MAX_EVENTS} events per request, each checked on its own: the valid ones "
            "are stored (priced by Costr from the token counts; a `cost_usd` or other unknown "
            "field is rejected), the others are listed in `rejected` by index with their "
            "errors. Idempotent by `event_id` within the organization: an event already stored "
            "counts as a duplicate and is not stored again, so a batch can be re-sent safely. "
            "`accepted + duplicates + len(rejected)` is the number of events sent.\n\n"
            "Status: 200 when no event was rejected, 207 when some were (the others are "
            "stored), 400 when none could be stored (the body then has both the `error` and "
            "the counts). Takes a token with the `ingest` scope, not a browser session."
        ),
        request=IngestBatchSerializer,
        responses={
            200: IngestResultSerializer,
            207: OpenApiResponse(
                IngestResultSerializer, description="Some events were rejected; the rest stored."
            ),
            400: OpenApiResponse(
                IngestFailureSerializer,
                description="Malformed body or batch (the error alone), or every event "
                "rejected (the error with the counts).",
            ),
            **error_responses(401, 403, 405, 413, 415, 503),
        },
        examples=[
            OpenApiExample("One event", value={"events": [EXAMPLE_EVENT]}, request_only=True)
        ],
        tags=["ingest"],
    )
    def post(self, request, *args, **kwargs):
        if _declared_length(request) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"Send at most {MAX_BODY_BYTES} bytes per request.")
        if not isinstance(request.data, dict):
            raise ValidationError(BODY_SHAPE)
        envelope = IngestBatchSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        events = envelope.validated_data["events"]

        context = ingest_context(self.organization)
        token_id = request.auth.token_id
        # One serializer checks every event: building its fields is most of the cost of a
        # serializer, and checking holds no state between events.
        checker = IngestEventSerializer(context=context)
        records, rejected, first_index = [], [], {}
        for index, event in enumerate(events):
            try:
                values, errors = checker.run_validation(event), None
            except ValidationError as error:
                values, errors = None, as_serializer_error(error)
            event_id = event.get("event_id") if isinstance(event, dict) else None
            if not isinstance(event_id, str):
                event_id = None
            elif event_id in first_index:
                errors = {
                    **(errors or {}),
                    "event_id": [f"Repeats the event_id of events[{first_index[event_id]}]."],
                }
            else:
                first_index[event_id] = index
            if errors:
                rejected.append({"index": index, "event_id": event_id, "errors": errors})
            else:
                records.append(
                    ingest_record(
                        values,
                        organization_id=self.organization.pk,
                        token_id=token_id,
                    )
                )

        stored = usage_events_write(records) if records else 0
        body = {"accepted": stored, "duplicates": len(records) - stored, "rejected": rejected}
        if not records:
            body["error"] = {
                "code": "invalid",
                "message": "No event could be stored: each one is listed in rejected.",
            }
            return Response(body, status=status.HTTP_400_BAD_REQUEST)
        return Response(body, status=status.HTTP_207_MULTI_STATUS if rejected else 200)


def _declared_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0
