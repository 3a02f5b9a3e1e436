"""What a provider says about a batch, read: whether it has ended, where its results are, and
each line of its results as one item's status and usage. Pure functions over parsed JSON; the
poller (``batch_polling``) does the fetching and the storing.

OpenAI (``/v1/batches``): a batch object with ``status`` (``validating``, ``in_progress``,
``finalizing``, ``cancelling`` while it runs; ``completed``, ``expired``, ``cancelled``,
``failed`` once it has ended), the ``endpoint`` its items call, and up to two files,
``output_file_id`` (the items that got a response, whatever its status) and ``error_file_id``
(the items that failed, and those that never ran, with ``response: null`` and an ``error``
code such as ``batch_expired``). Each file line: ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}``, ``body`` the endpoint's usual answer with its
``usage``.

Anthropic (``/v1/messages/batches``): a batch object with ``processing_status``
(``in_progress``, ``canceling``, ``ended``) and, once ended, its results, one line per item:
``{"custom_id", "result": {"type": "succeeded", "message": {…, "usage"}}}``, or ``result.type``
``errored`` (with the API error inside), ``canceled`` or ``expired``.

An item's usage is normalised by the same functions the proxy's adapters use for the same
endpoint (``metering.provider_usage``). Items that did not succeed keep the status the provider
gave them, or, for items that never ran: 408 for an expired one, 499 for a canceled one (the
customer's own cancellation); with no usage they are priced ``no_usage``.
"""

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apps.usage.metering.provider_usage import (
    Usage,
    usage_from_anthropic_body,
    usage_from_openai_body,
)

OPENAI_ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
_OPENAI_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "completions",
}
# The statuses of items that never ran: expired before their turn, or canceled.
EXPIRED_STATUS = 408
CANCELED_STATUS = 499
_ANTHROPIC_ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_OPENAI_ITEM_ERRORS = {"batch_expired": EXPIRED_STATUS, "batch_cancelled": CANCELED_STATUS}
# custom_id as it stands at the start of a line too long to parse.
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class BatchState:
    """A batch as its provider describes it. ``results`` are the paths (under the provider's
    API origin) of its results files, known once it has ended."""

    ended: bool
    endpoint: str
    results: tuple[str, ...] = ()
    ended_at: datetime | None = None


@dataclass(frozen=True)
class Item:
    """One line of a batch's results: the item's own id, its status and its usage."""

    custom_id: str
    status: int
    usage: Usage | None


def openai_batch_state(document: Any) -> BatchState | None:
    if not isinstance(document, dict) or not isinstance(document.get("status"), str):
        return None
    endpoint = _OPENAI_ENDPOINTS.get(document.get("endpoint"), "other")
    if document["status"] not in OPENAI_ENDED:
        return BatchState(ended=False, endpoint=endpoint)
    files = tuple(
        f"v1/files/{file_id}/content"
        for file_id in (document.get("output_file_id"), document.get("error_file_id"))
        if isinstance(file_id, str) and file_id
    )
    ended_at = next(
        (
            _from_unix(document.get(name))
            for name in ("completed_at", "expired_at", "cancelled_at", "failed_at")
            if _from_unix(document.get(name)) is not None
        ),
        None,
    )
    return BatchState(ended=True, endpoint=endpoint, results=files, ended_at=ended_at)


def anthropic_batch_state(document: Any, batch_id: str) -> BatchState | None:
    if not isinstance(document, dict) or not isinstance(document.get("processing_status"), str):
        return None
    if document["processing_status"] != "ended":
        return BatchState(ended=False, endpoint="messages")
    return BatchState(
        ended=True,
        endpoint="messages",
        # Costr's own path to the results, never the URL the answer names: the key goes to the
        # configured upstream only.
        results=(f"v1/messages/batches/{batch_id}/results",),
        ended_at=_from_iso(document.get("ended_at")),
    )


def openai_item(document: Any) -> Item | None:
    if not isinstance(document, dict):
        return None
    response = document.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status = response["status_code"]
        body = response.get("body")
        usage = usage_from_openai_body(body) if 200 <= status < 300 else None
        if usage is None and isinstance(body, dict):
            usage = _model_only(body.get("model"))
        return Item(_custom_id(document), status, usage)
    error = document.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return Item(_custom_id(document), _OPENAI_ITEM_ERRORS.get(code, 500), None)


def anthropic_item(document: Any) -> Item | None:
    if not isinstance(document, dict) or not isinstance(document.get("result"), dict):
        return None
    result = document["result"]
    kind = result.get("type")
    if kind == "succeeded":
        return Item(_custom_id(document), 200, usage_from_anthropic_body(result.get("message")))
    if kind == "errored":
        return Item(_custom_id(document), _anthropic_error_status(result.get("error")), None)
    if kind == "canceled":
        return Item(_custom_id(document), CANCELED_STATUS, None)
    if kind == "expired":
        return Item(_custom_id(document), EXPIRED_STATUS, None)
    return None


def custom_id_from_head(head: bytes) -> str:
    """The ``custom_id`` of a line too long to parse, from its first bytes ("" if not there)."""
    match = _CUSTOM_ID.search(head)
    if match is None:
        return ""
    try:
        value = json.loads(b'"' + match.group(1) + b'"')
    except ValueError:
        return match.group(1).decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _anthropic_error_status(error: Any) -> int:
    """The HTTP status of an errored item, from the API error it carries (``{"type": "error",
    "error": {"type": "invalid_request_error", …}}``)."""
    inner = error.get("error") if isinstance(error, dict) else None
    kind = inner.get("type") if isinstance(inner, dict) else None
    return _ANTHROPIC_ERROR_STATUSES.get(kind, 500)


def _custom_id(document: dict) -> str:
    value = document.get("custom_id")
    return value if isinstance(value, str) else ""


def _model_only(model: Any) -> Usage | None:
    return Usage(model=model) if isinstance(model, str) and model else None


def _from_unix(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
