"""Recovering the fields usage is read from out of a JSON body that is not parsed whole.

A provider puts its usage object after the bulky content (embeddings, long answers, a Responses
stream's final event repeating every generated image), so the proxy keeps only the start and the
end of a large body, and for a kept body of some size reads the end first: parsing megabytes of
floats to find a handful of values costs more CPU than the proxy's whole budget per request.
What is recovered here has the shape of the whole document, so each provider's extraction
function reads it unchanged. Nothing here raises on bad input: a body that proves nothing gives
None (``usage_document_from_tail``, the caller then parses it whole) or the fields it could find
(``recover_fields``).

Only JSON text is known here, nothing of providers or adapters. The usage readers call it:
``base.JsonBodyUsageReader`` for large bodies, and the OpenAI Responses and Gemini stream readers
for an event past the splitter's limit, of which only the tail is kept.
"""

import functools
import json
import re
from collections.abc import Iterable
from typing import Any

from apps.proxy.sse import TAIL_BYTES

# The head of a large body that is kept, for the string keys read from its top level.
JSON_HEAD_BYTES = 64 * 1024

_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_JSON_TOKEN = re.compile(_JSON_STRING + r"|[{}\[\]]")
_COLON_THEN_STRING = re.compile(r"\s*:\s*(" + _JSON_STRING + ")")


def _string_value(literal: str) -> str | None:
    """The text of a JSON string literal as ``_JSON_STRING`` matched it, or None when it is not
    valid JSON (a bad escape, a raw control character): a string or nothing, never raising."""
    try:
        return json.loads(literal)
    except ValueError:
        return None


def top_level_strings(head: str, keys: Iterable[str]) -> dict[str, str]:
    """String values of the wanted keys at the top level of a JSON object's (possibly cut) text.

    Tracks nesting, so a ``"model"`` inside a tool call or a message does not count.
    """
    wanted = {json.dumps(key): key for key in keys}
    found: dict[str, str] = {}
    depth = 0
    for match in _JSON_TOKEN.finditer(head):
        token = match.group()
        if token in ("{", "["):
            depth += 1
        elif token in ("}", "]"):
            depth -= 1
        elif depth == 1 and token in wanted and wanted[token] not in found:
            value = _COLON_THEN_STRING.match(head, match.end())
            if value is not None:
                text = _string_value(value.group(1))
                if text is not None:
                    found[wanted[token]] = text
            if len(found) == len(wanted):
                break
    return found


def last_string_value(tail: str, key: str) -> str | None:
    """The value of the last ``"key": "…"`` pair in a fragment of JSON text.

    Quotes inside JSON strings are escaped, so an unescaped ``"key":`` in any fragment is
    structure, not content.
    """
    pattern = re.compile(re.escape(json.dumps(key)) + _COLON_THEN_STRING.pattern)
    value = None
    for match in pattern.finditer(tail):
        value = match.group(1)
    return _string_value(value) if value is not None else None


def last_object_value(tail: str, key: str) -> dict[str, Any] | None:
    """The last ``"key": {…}`` object in a fragment of JSON text that decodes whole."""
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:\s*(\{)")
    decoder = json.JSONDecoder()
    for match in reversed(list(pattern.finditer(tail))):
        try:
            value, _ = decoder.raw_decode(tail, match.start(1))
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def usage_document_from_tail(
    body: bytes, object_key: str, string_keys: Iterable[str]
) -> dict[str, Any] | None:
    """What ``json.loads(body)`` would give for the usage object and the string keys, or None.

    The usage object is the last ``"object_key": {…}`` near the end. It is taken only when it is
    provably a member of the top-level object: the rest of the body after it must complete a
    JSON object by itself (more members, then the closing brace at the very end), which no
    object nested deeper can do, since its container's closing brace would come before the
    root's. Each string key is read from those trailing members; else from the members just
    before the usage object, when the text from the key's last occurrence up to the usage
    object is itself a run of members (so at the top level too); else from the top level of
    the body's head. None -- the caller then parses the whole body -- whenever that proves
    nothing: no usage object near the end, a nested one, a top-level array, invalid text, a
    key neither place settles.

    Why: non-streamed embeddings answers are arrays of floats, which ``json.loads`` turns into
    Python floats at great cost (3 to 4 ms of CPU for a 187 KB body of 6 embeddings, measured),
    all to read a handful of values at the end.
    """
    matches = list(_tail_object_pattern(object_key).finditer(body, max(0, len(body) - TAIL_BYTES)))
    if not matches:
        return None
    match = matches[-1]
    at = match.start()
    if body[at - 1 : at] == b"\\" or not body[:1024].lstrip().startswith(b"{"):
        return None  # an escaped quote (the key is longer than it looks), or not an object
    try:
        tail = body[at:].decode("utf-8")
        value, end = json.JSONDecoder().raw_decode(tail, match.end() - 1 - at)
        rest = tail[end:].lstrip()
        if rest.startswith(","):
            members = json.loads("{" + rest[1:])
        elif rest.rstrip() == "}":
            members = {}
        else:
            return None
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not isinstance(members, dict):
        return None
    document: dict[str, Any] = {object_key: value}
    for key in string_keys:
        if key in members:
            document[key] = members[key]
            continue
        found = _member_before(body, at, key)
        if found is _UNSETTLED:
            head = body[: min(at, JSON_HEAD_BYTES)].decode("utf-8", "replace")
            strings = top_level_strings(head, [key])
            if key in strings:
                found = strings[key]
            elif at > JSON_HEAD_BYTES:
                return None
            else:
                found = None
        if found is not None:
            document[key] = found
    return document


_UNSETTLED = object()
_MEMBERS_BEFORE_BYTES = 4096


def _member_before(body: bytes, at: int, key: str) -> Any:
    """The value of ``key`` when its last occurrence before ``at`` starts a run of members
    that ends at ``at``; None when the key does not occur; _UNSETTLED otherwise."""
    quoted = json.dumps(key).encode()
    start = body.rfind(quoted, max(0, at - _MEMBERS_BEFORE_BYTES), at)
    if start < 0:
        return None if body.rfind(quoted, 0, at) < 0 else _UNSETTLED
    if body[start - 1 : start] == b"\\":
        return _UNSETTLED
    try:
        members = json.loads(b"{" + body[start:at] + b'"":0}')
    except (ValueError, RecursionError):
        return _UNSETTLED
    return members.get(key) if isinstance(members, dict) else _UNSETTLED


@functools.lru_cache(maxsize=8)
def _tail_object_pattern(key: str) -> re.Pattern[bytes]:
    return re.compile(re.escape(json.dumps(key).encode()) + rb"\s*:\s*\{")


def recover_fields(
    head: bytes, tail: bytes, object_key: str, string_keys: Iterable[str]
) -> dict[str, Any]:
    """Rebuild the parts of a cut JSON document that usage extraction needs.

    Each string key is taken from the top level of the head if present there, else from its
    last occurrence in the tail; the usage object from its last occurrence in the tail (every
    provider puts usage after the bulky content). The result has the same shape as the whole
    document, so the same extraction function reads it.
    """
    head_text = head.decode("utf-8", "replace")
    tail_text = tail.decode("utf-8", "replace")
    string_keys = tuple(string_keys)
    fields: dict[str, Any] = dict(top_level_strings(head_text, string_keys)) if head else {}
    for key in string_keys:
        if key not in fields:
            value = last_string_value(tail_text, key)
            if value is not None:
                fields[key] = value
    usage = last_object_value(tail_text, object_key)
    if usage is not None:
        fields[object_key] = usage
    return fields
