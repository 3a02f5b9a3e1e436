"""The proxy's front door: what a request may be before Costr forwards it, and what of it
reaches the usage record.

DESIGN.md's "Limits" are held here, each answered in the provider's error shape with
``X-Costr-Error`` (the proxy raises ``Refusal``): a request head over 64 KiB (431), a method the
providers' APIs do not define (405, so a provider key never travels on TRACE or PROPFIND), a
path whose dot-segments would climb above the configured upstream path (400), attribution
headers past their limits (400). Headers named in ``Connection:`` are hop-by-hop both ways, and
an upstream ``Set-Cookie`` never reaches the client: Costr's origin is not the provider's, so a
provider's cookie would be set on Costr's domain for every tenant's browser alike.

Every string that reaches the usage record is cleaned once, where it enters the proxy, with
``usage.contract.clean_text``: a hostile string is stored cleaned and can never make its own
record, or a neighbour's, fail to encode or to store.
"""

import dataclasses
import json
from typing import Any
from urllib.parse import unquote_to_bytes

from apps.proxy.providers import RequestInfo, Usage, get_adapter
from apps.usage.contract import (
    MAX_CUSTOMER_LENGTH,
    MAX_MODEL_LENGTH,
    MAX_PROPERTIES,
    MAX_PROPERTY_NAME_LENGTH,
    MAX_PROPERTY_VALUE_LENGTH,
    clean_text,
)

# The largest request head (request line and headers) Costr reads (DESIGN.md, "Limits").
MAX_HEAD_BYTES = 64 * 1024
# The methods the providers' HTTP APIs define; anything else gets 405 and is never forwarded.
ALLOWED_METHODS = frozenset({"GET", "POST", "DELETE"})
ALLOW_HEADER = b"GET, POST, DELETE"
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never relayed to the client, whatever the upstream's Connection header says.
RESPONSE_HEADERS_DROPPED = HOP_BY_HOP | {b"set-cookie", b"set-cookie2"}
CUSTOMER_HEADER = b"x-costr-customer"
PROPERTY_HEADER = b"x-costr-property-"
# A string in a provider's raw usage object (a tier, a modality name) is short by nature.
MAX_RAW_USAGE_TEXT = 255


class Refusal(Exception):
    """A request Costr answers itself, in the provider's error shape, without forwarding."""

    def __init__(
        self, status: int, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers


def head_size(scope) -> int:
    """The request head's size as it came over the wire (request line, headers, their CRLFs),
    recomputed from the scope so the limit holds whichever HTTP parser the server runs."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    size = len(scope["method"]) + 1 + len(raw_path) + (len(query) + 1 if query else 0) + 11
    for name, value in scope["headers"]:
        size += len(name) + 2 + len(value) + 2
    return size + 2


def check_method(method: str) -> None:
    if method not in ALLOWED_METHODS:
        raise Refusal(
            405,
            "method_not_allowed",
            f"Costr forwards only GET, POST and DELETE requests, not {method[:20]}.",
            ((b"allow", ALLOW_HEADER),),
        )


def climbs_above_prefix(raw_rest: bytes) -> bool:
    """Whether the path after ``/p/<org>/<provider>/`` would climb above the upstream's path.

    Judged as the most lenient server would read it: percent-encoding decoded (``%2e%2e``,
    ``%2f``), a backslash taken as a slash and ``;params`` dropped from a segment. The path is
    never rewritten: one that stays below the prefix goes out exactly as received.
    """
    decoded = unquote_to_bytes(raw_rest).replace(b"\\", b"/")
    depth = 0
    for segment in decoded.split(b"/"):
        segment = segment.split(b";", 1)[0]
        if segment == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif segment not in (b"", b"."):
            depth += 1
    return False


def connection_options(headers) -> frozenset[bytes]:
    """The header names a ``Connection:`` header lists: hop-by-hop for this one connection."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(token.strip().lower() for token in value.split(b","))
    names.discard(b"")
    return frozenset(names)


def response_headers_to_relay(headers) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop ones and cookies."""
    dropped = RESPONSE_HEADERS_DROPPED | connection_options(headers)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


@dataclasses.dataclass(slots=True)
class Attribution:
    """The customer and properties a request names in its ``X-Costr-*`` headers, cleaned."""

    customer: str | None = None
    properties: dict[str, str] = dataclasses.field(default_factory=dict)

    def read(self, name: bytes, value: bytes) -> None:
        """Take one ``x-costr-*`` header (its name lowercased, as ASGI gives it)."""
        if name == CUSTOMER_HEADER:
            # One character past the limit survives the cut, so an over-long id is refused,
            # never silently merged with another customer's shorter one.
            text = clean_text(value.strip(), MAX_CUSTOMER_LENGTH + 1).strip()
            if len(text) > MAX_CUSTOMER_LENGTH:
                raise Refusal(
                    400,
                    "invalid_customer",
                    f"X-Costr-Customer is over {MAX_CUSTOMER_LENGTH} characters.",
                )
            self.customer = text or None
        elif name.startswith(PROPERTY_HEADER):
            key = clean_text(name[len(PROPERTY_HEADER) :].lower(), MAX_PROPERTY_NAME_LENGTH + 1)
            if not key:
                return
            if len(key) > MAX_PROPERTY_NAME_LENGTH:
                raise Refusal(
                    400,
                    "invalid_property_name",
                    f"X-Costr-Property-* names are limited to {MAX_PROPERTY_NAME_LENGTH} "
                    "characters after the prefix.",
                )
            self.properties[key] = clean_text(value.strip(), MAX_PROPERTY_VALUE_LENGTH).strip()
            if len(self.properties) > MAX_PROPERTIES:
                raise Refusal(
                    400,
                    "too_many_properties",
                    f"At most {MAX_PROPERTIES} X-Costr-Property-* headers.",
                )


def clean_request_info(info: RequestInfo) -> RequestInfo:
    """The request's model as the record may store it (it came from the client's body or path)."""
    if info.requested_model is None:
        return info
    return dataclasses.replace(
        info, requested_model=clean_text(info.requested_model, MAX_MODEL_LENGTH)
    )


def clean_usage(usage: Usage | None) -> Usage | None:
    """The strings of a provider's usage, as the record may store them."""
    if usage is None:
        return None
    if usage.model is not None:
        usage.model = clean_text(usage.model, MAX_MODEL_LENGTH)
    if usage.service_tier is not None:
        usage.service_tier = clean_text(usage.service_tier, MAX_MODEL_LENGTH)
    if usage.raw is not None:
        usage.raw = _clean_json(usage.raw)
    return usage


def _clean_json(value: Any) -> Any:
    """A JSON value with every string in it (object keys included) cleaned."""
    if isinstance(value, str):
        return clean_text(value, MAX_RAW_USAGE_TEXT)
    if isinstance(value, dict):
        return {
            clean_text(key, MAX_RAW_USAGE_TEXT) if isinstance(key, str) else key: _clean_json(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_clean_json(item) for item in value]
    return value


def error_for_path(raw_path: bytes, status: int, code: str, message: str) -> bytes:
    """An error body for a request known only by its path (the server's own refusals, before
    the head is complete): the provider's shape under ``/p/<org>/<provider>/``, else Costr's."""
    parts = raw_path.split(b"?", 1)[0].split(b"/", 4)
    if len(parts) > 3 and parts[1] == b"p":
        adapter = get_adapter(parts[3].decode("latin-1"))
        if adapter is not None:
            return adapter.error_body(status, code, message)
    return json.dumps({"error": {"code": code, "message": message}}).encode()
