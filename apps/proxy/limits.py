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

import asyncio
import dataclasses
import json
import math
import re
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from apps.proxy.providers import RequestInfo, Usage, get_adapter
from apps.usage.metering.contract import (
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
# Where costr.server puts the headers the ASGI server adds to every response (``date``,
# ``server``) for a request under /p/, instead of adding them itself: a relayed answer carries
# the provider's own, and the proxy puts these on the answers that are Costr's.
SERVER_HEADERS_SCOPE_KEY = "costr.server_headers"
PROXY_PATH_PREFIX = b"/p/"
CUSTOMER_HEADER = b"x-costr-customer"
PROPERTY_HEADER = b"x-costr-property-"
# A string in a provider's raw usage object (a tier, a modality name) is short by nature.
MAX_RAW_USAGE_TEXT = 255
# More bytes without a quote than the longest string allowed (see _json_is_clean).
_LONG_RUN = re.compile(b'[^"]{%d}' % (MAX_RAW_USAGE_TEXT + 1))


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
    if b"." not in raw_rest and b"%" not in raw_rest:
        return False  # no dot, and nothing that decodes into one: no dot-segment at all
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


def connection_tokens(value: bytes) -> set[bytes]:
    """The header names one ``Connection:`` header's value lists, lowercased."""
    names = {token.strip().lower() for token in value.split(b",")}
    names.discard(b"")
    return names


def response_headers_to_relay(headers) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop ones and cookies.

    One pass; a second one only when the upstream sent a ``Connection:`` header that names
    others (rare: a keep-alive answer needs none)."""
    relayed = []
    named: set[bytes] | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered in RESPONSE_HEADERS_DROPPED:
            if lowered == b"connection":
                named = (
                    connection_tokens(value) if named is None else named | connection_tokens(value)
                )
            continue
        relayed.append((name, value))
    if named:
        relayed = [(name, value) for name, value in relayed if name.lower() not in named]
    return relayed


class ReadTimedOut(Exception):
    """A read waited on by ``ReadDeadlines`` outlived its deadline."""


class ReadDeadlines:
    """Deadlines of the reads waiting on one event loop (the request bodies' next messages),
    enforced by one timer for all of them.

    ``asyncio.timeout`` around each read does the same with a timer armed and cancelled per
    read (7 µs each, measured on the benchmark machine; most reads do not even wait, the body
    being there already). Here a read costs a dictionary entry; the one timer fires at the
    earliest deadline of those waiting, cancels the tasks past theirs (each then raises
    ``ReadTimedOut``) and is armed again for the next one, or left off while none waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    async def wait(self, awaitable, timeout: float):
        """``await awaitable``, or ``ReadTimedOut`` once ``timeout`` seconds have passed."""
        task = asyncio.current_task()
        if task is None:  # not in a task (nothing to cancel): the standard way
            try:
                async with asyncio.timeout(timeout):
                    return await awaitable
            except TimeoutError:
                raise ReadTimedOut from None
        deadline = self.loop.time() + timeout
        self._waiting[task] = deadline
        if deadline < self._timer_at:
            self._arm(deadline)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if task not in self._expired or task.uncancel() > 0:
                raise  # cancelled by someone else (too): theirs to handle
            raise ReadTimedOut from None
        finally:
            self._waiting.pop(task, None)
            self._expired.discard(task)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self.loop.time()
        nearest = math.inf
        for task, deadline in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[task]
                self._expired.add(task)
                task.cancel()
            elif deadline < nearest:
                nearest = deadline
        if nearest < math.inf:
            self._arm(nearest)


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
    model = info.requested_model
    if model is None:
        return info
    cleaned = clean_text(model, MAX_MODEL_LENGTH)
    if cleaned == model:  # the usual case: nothing to copy
        return info
    return dataclasses.replace(info, requested_model=cleaned)


def clean_usage(usage: Usage | None) -> Usage | None:
    """The strings of a provider's usage, as the record may store them."""
    if usage is None:
        return None
    if usage.model is not None:
        usage.model = clean_text(usage.model, MAX_MODEL_LENGTH)
    if usage.service_tier is not None:
        usage.service_tier = clean_text(usage.service_tier, MAX_MODEL_LENGTH)
    if usage.raw is not None and not _json_is_clean(usage.raw):
        usage.raw = _clean_json(usage.raw)
    return usage


def _json_is_clean(value: Any) -> bool:
    """Whether ``_clean_json`` would hand back ``value`` unchanged, judged from one encoding by
    orjson (a false "no" only costs the walk): orjson refuses a lone surrogate; a NUL, or any
    quote or backslash, comes out escaped, so in an encoding without a backslash every
    string's characters are a run of bytes without a quote, as long as the string or longer.
    0.4 µs for a provider's usage object; walking it in Python takes several."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:  # a lone surrogate (or a key orjson does not take)
        return False
    return b"\\" not in encoded and (
        len(encoded) <= MAX_RAW_USAGE_TEXT or _LONG_RUN.search(encoded) is None
    )


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
