"""Batches through the proxy: the two things the proxy does for them, and nothing else.

1. **Hand a new batch over.** A batch's items run at the provider later, and are metered by
   Costr itself once the batch has ended (``apps.usage.batch_polling``), however many times its
   results are downloaded, through Costr or not. The proxy's part is to notice a successful
   creation (OpenAI ``POST /v1/batches``, Anthropic ``POST /v1/messages/batches``), read the
   batch id from the answer (a small JSON object) and put it, with the vault id of the provider
   key used, in that request's usage record (``contract.BatchCreated``).
2. **Keep the Costr token away from the provider.** An Anthropic batch names its results file by
   an absolute ``results_url`` at the provider, and the SDK follows it with the client's
   credential, which here is the Costr token. So in every Anthropic batch object passing through
   (create, retrieve, list, cancel), ``results_url`` is rewritten to the same path through Costr
   (``{BASE}/p/{org}/anthropic/v1/messages/batches/{id}/results``), where the proxy forwards it
   with the provider key like any other request. This is the second documented body change
   (the OpenAI usage injection is the first): every other byte is kept; ``content-length`` is
   dropped (the body goes chunked, its length changed); upstream is asked for ``identity``
   (these answers are small JSON), and an answer compressed anyway is decoded (bounded, as for
   usage reading) and sent decoded.

``{BASE}`` is the origin the client reached: the request's ``Host`` and scheme, ``https`` when
the ASGI server saw TLS or a proxy in front said so in ``X-Forwarded-Proto`` (a client can only
change the URL in its own answer by lying there). A ``Host`` that is not a plain host name falls
back to ``COSTR_BASE_URL``.

Every other request pays one prefix test on its path (``batch_call``), made only for requests
the adapter did not recognise as a metered endpoint.
"""

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

from apps.proxy.providers.base import (
    Headers,
    UsageReader,
    header_value,
    loads_or_none,
)
from apps.usage.metering.contract import MAX_BATCH_ID_LENGTH, BatchCreated
from costr.net.decoding import ContentDecoder, content_decoder

_OPENAI_BATCHES = "v1/batches"
_ANTHROPIC_BATCHES = "v1/messages/batches"
# A creation's answer is one batch object, a few hundred bytes; past this it is not one.
MAX_CREATION_BODY_BYTES = 256 * 1024
# The longest ``"results_url": "…"`` member the rewrite recognises; it holds back at most this
# much of a body until the next bytes show whether a member is complete.
MAX_RESULTS_URL_MEMBER_BYTES = 16 * 1024

_RESULTS_URL = re.compile(rb'"results_url"\s*:\s*"((?:[^"\\]|\\.)*)"')
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_BATCH_ID = re.compile(r"[A-Za-z0-9_\-]+")


@dataclass(slots=True)
class BatchCall:
    """A request on a provider's batch API, and what the proxy does with it."""

    creates: bool  # a batch creation: its answer's id is handed over
    rewrite_base: str | None  # Anthropic: where ``results_url`` now points, up to the API path
    key_secret_id: str | None
    created_id: str | None = None

    def hand_over(self) -> BatchCreated | None:
        """What the usage record carries: the new batch, once its answer named it."""
        if self.created_id is None:
            return None
        return {"id": self.created_id, "key_secret_id": self.key_secret_id}

    def usage_reader(self, status: int, content_encoding: str | None) -> UsageReader | None:
        """A reader of a creation's answer that learns its batch id (no usage: a creation bills
        nothing); None for any other call or a failed one."""
        if not self.creates or not 200 <= status < 300:
            return None
        decoder = content_decoder(content_encoding)
        return BatchCreationReader(self, decoder) if decoder is not None else None

    def client_filter(self, status: int, content_encoding: str | None) -> "ResultsUrlFilter | None":
        """The ``results_url`` rewrite of an Anthropic batch answer; None for anything else."""
        if self.rewrite_base is None or not 200 <= status < 300:
            return None
        decoder = content_decoder(content_encoding)
        if decoder is None:
            # A coding Costr cannot read, though identity was asked for: the SDK cannot read it
            # either, so it can follow no URL in it.
            return None
        return ResultsUrlFilter(decoder, self.rewrite_base)


def batch_call(
    provider: str,
    method: str,
    rest: str,
    headers: Iterable[tuple[bytes, bytes]],
    scope,
    org_slug: str,
    key_secret_id: str | None,
) -> BatchCall | None:
    """The batch call a request is, or None (most requests, after one prefix test)."""
    path = rest.strip("/")
    if provider == "openai":
        if path == _OPENAI_BATCHES and method == "POST":
            return BatchCall(creates=True, rewrite_base=None, key_secret_id=key_secret_id)
        return None
    if provider != "anthropic" or not path.startswith(_ANTHROPIC_BATCHES):
        return None
    tail = path[len(_ANTHROPIC_BATCHES) :]
    if tail and not tail.startswith("/"):
        return None
    if tail.endswith("/results"):
        return None  # the results file itself: forwarded as it is, however large
    creates = not tail and method == "POST"
    base = f"{_client_origin(headers, scope)}/p/{org_slug}/anthropic"
    return BatchCall(creates=creates, rewrite_base=base, key_secret_id=key_secret_id)


def _client_origin(headers: Iterable[tuple[bytes, bytes]], scope) -> str:
    """Scheme and host as the client reached Costr."""
    scheme = scope.get("scheme") or "http"
    forwarded = header_value(headers, b"x-forwarded-proto")
    if forwarded is not None and forwarded.split(b",")[0].strip().lower() == b"https":
        scheme = "https"
    host = header_value(headers, b"host")
    text = host.decode("latin-1").strip() if host is not None else ""
    if not text or not _HOST.fullmatch(text):
        return settings.COSTR_BASE_URL
    return f"{'https' if scheme in ('https', 'wss') else 'http'}://{text}"


class BatchCreationReader(UsageReader):
    """Reads a batch creation's answer for its id; reports no usage."""

    def __init__(self, call: BatchCall, decoder: ContentDecoder):
        super().__init__(decoder)
        self._call = call
        self._body: bytearray | None = bytearray()

    def _consume(self, piece: bytes) -> None:
        if self._body is not None:
            self._body += piece
            if len(self._body) > MAX_CREATION_BODY_BYTES:
                self._body = None

    def _end(self) -> None:
        document = loads_or_none(self._body) if self._body else None
        if not isinstance(document, dict):
            return
        batch_id = document.get("id")
        if (
            isinstance(batch_id, str)
            and len(batch_id) <= MAX_BATCH_ID_LENGTH
            and _BATCH_ID.fullmatch(batch_id)
        ):
            self._call.created_id = batch_id


class ResultsUrlFilter:
    """Rewrites every ``"results_url": "<url>"`` member of a JSON body to point through Costr.

    Works on the stream: bytes go out as soon as no member can still be starting in them, so
    at most ``MAX_RESULTS_URL_MEMBER_BYTES`` are held back until the end (a small answer goes
    out whole at the end). The pattern cannot match inside a JSON string (a quote there is
    escaped) and a ``null`` URL is left alone. The new URL keeps the old one's path (without the
    upstream's own path prefix) and query.
    """

    def __init__(self, decoder: ContentDecoder, base: str):
        self._decoder = decoder
        self._identity = decoder.encoding == "identity"
        self._base = base
        self._pending = bytearray()
        self.headers_to_remove = frozenset(
            {b"content-length"} if self._identity else {b"content-length", b"content-encoding"}
        )

    def share(self, reader: UsageReader) -> bool:
        return False

    def response_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Headers:
        return [(key, value) for key, value in headers if key.lower() not in self.headers_to_remove]

    def feed(self, chunk: bytes) -> bytes:
        if self._identity:
            self._pending += chunk
        else:
            for piece in self._decoder.decode(chunk):
                self._pending += piece
        return self._take(final=False)

    def finish(self) -> bytes:
        if not self._identity:
            for piece in self._decoder.flush():
                self._pending += piece
        return self._take(final=True)

    def _take(self, *, final: bool) -> bytes:
        data = self._pending
        out = bytearray()
        position = 0
        for match in _RESULTS_URL.finditer(data):
            out += data[position : match.start(1)]
            out += self._rewritten(match.group(1))
            position = match.end(1)
        keep_from = len(data) if final else max(position, len(data) - MAX_RESULTS_URL_MEMBER_BYTES)
        out += data[position:keep_from]
        del data[:keep_from]
        return bytes(out)

    def _rewritten(self, literal: bytes) -> bytes:
        """The JSON string content (still escaped) of the URL through Costr."""
        url = loads_or_none(b'"' + literal + b'"')
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or not parts.path:
            # Not a URL Costr can route: an empty one, which no client can follow anywhere.
            return b""
        path = parts.path
        prefix = _upstream_path_prefix(settings.COSTR_UPSTREAM_ANTHROPIC)
        if prefix and path.startswith(prefix + "/"):
            path = path[len(prefix) :]
        if not path.startswith("/"):
            path = "/" + path
        new = self._base + path + (f"?{parts.query}" if parts.query else "")
        return json.dumps(new)[1:-1].encode()


@lru_cache(maxsize=4)
def _upstream_path_prefix(upstream: str) -> str:
    return urlsplit(upstream).path.rstrip("/")
