"""The HTTP transports handed to the official clients: Costr first, the provider when Costr
itself is in trouble.

A request goes to Costr unless the breaker is open and the provider has a fallback key. It goes
straight to the provider instead when Costr cannot be reached (connect error or timeout, with
the connect timeout cut to ``connect_timeout``) or answers a 5xx marked ``X-Costr-Error``;
never on a provider's error or on Costr's refusals (4xx: invalid token, budget), which reach the
client as they are. The decision is made before any body byte reaches the client, so streams
fall back like any other call. A direct call is the same request with the Costr path prefix
and the ``X-Costr-*`` headers removed and the fallback key where the provider expects it; its
usage is read in passing from the response and queued for Costr.
"""

from __future__ import annotations

import functools
import importlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from costr_sdk import _context
from costr_sdk._runtime import SOURCE, Runtime
from costr_sdk._usage import TOKEN_FIELDS, UsageReader, endpoint_and_model

logger = logging.getLogger("costr_sdk")

COSTR_ERROR_HEADER = "x-costr-error"
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


def _shortened(extensions: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The request's extensions with its connect timeout cut to ``seconds`` (Costr's)."""
    timeout = dict(extensions.get("timeout") or {})
    current = timeout.get("connect")
    timeout["connect"] = seconds if current is None else min(current, seconds)
    return {**extensions, "timeout": timeout}


class _Plan:
    """What a direct call needs: its request, and what its usage record says."""

    def __init__(self, transport: _Base, request: httpx.Request) -> None:
        settings = transport.runtime.settings
        provider = transport.provider
        prefix = transport.costr_prefix
        path = request.url.raw_path.decode("ascii")
        query = ""
        if "?" in path:
            path, query = path.split("?", 1)
        if path.startswith(prefix):
            path = path[len(prefix) :]
        http = transport.http
        base = http.URL(settings.fallback_base_url(provider))
        base_path = base.raw_path.decode("ascii").rstrip("/")
        if provider == "openai" and base_path.endswith("/v1") and path.startswith("/v1"):
            path = path[3:]  # the fallback base names /v1 as the SDK's base URL does
        key = settings.fallback_key(provider) or ""
        if query and provider == "google" and "key=" in query:
            pairs = [(k, key if k == "key" else v) for k, v in parse_qsl(query, True)]
            query = urlencode(pairs)
        target = base_path + path + (f"?{query}" if query else "")
        headers = [
            (name, value)
            for name, value in request.headers.raw
            if not name.lower().startswith(b"x-costr-")
            and name.lower().decode("latin-1") not in (*CREDENTIAL_HEADERS, "host")
        ]
        headers = [(n, v) for n, v in headers if n.lower() != b"accept-encoding"]
        headers.append((b"accept-encoding", b"gzip, deflate"))
        if provider == "openai":
            headers.append((b"authorization", f"Bearer {key}".encode()))
        elif provider == "anthropic":
            headers.append((b"x-api-key", key.encode()))
        else:
            headers.append((b"x-goog-api-key", key.encode()))
        body = request.content
        self.request = http.Request(
            request.method,
            base.copy_with(raw_path=target.encode("ascii")),
            headers=headers,
            content=body,
            extensions=request.extensions,
        )
        self.endpoint, self.requested_model = endpoint_and_model(
            provider, request.method, path, body
        )
        attribution = _context.current.get()
        self.customer = attribution.customer
        self.properties = dict(attribution.properties)
        self.started = time.monotonic()
        self.timestamp = datetime.now(UTC)

    def reader(self, transport: _Base, response: httpx.Response) -> UsageReader:
        return UsageReader(
            transport.provider,
            self.requested_model,
            response.headers.get("content-type", ""),
            response.headers.get("content-encoding", ""),
        )

    def record(self, transport: _Base, status: int, reader: UsageReader) -> dict[str, Any]:
        model, counts = reader.result()
        counts = counts or dict.fromkeys(TOKEN_FIELDS)
        record: dict[str, Any] = {
            "event_id": uuid.uuid4().hex,
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            "provider": transport.provider,
            "endpoint": self.endpoint,
            "model": model or "unknown",
            "status": status,
            "latency_ms": int((time.monotonic() - self.started) * 1000),
            "source": SOURCE,
            **counts,
        }
        if self.customer:
            record["customer"] = self.customer
        if self.properties:
            record["properties"] = self.properties
        return record


class _Base:
    http: ModuleType = httpx  # the HTTP package of the client it serves (httpx or httpx2)

    def __init__(self, provider: str, runtime: Runtime) -> None:
        if provider not in ("openai", "anthropic", "google"):
            raise ValueError(f"Unknown provider {provider!r}")
        self.provider = provider
        self.runtime = runtime
        self.costr_prefix = f"/p/{runtime.settings.org}/{provider}"

    def _attribute(self, request: httpx.Request) -> None:
        """The ``customer()`` block's headers, unless the call named its own."""
        for name, value in _context.current.get().headers:
            if name not in request.headers:
                request.headers[name] = value

    def _direct_possible(self) -> bool:
        return self.runtime.settings.fallback_key(self.provider) is not None

    def _costr_failed(self, response: httpx.Response) -> bool:
        return response.status_code >= 500 and COSTR_ERROR_HEADER in response.headers

    def _finish(self, plan: _Plan, status: int, reader: UsageReader) -> None:
        try:
            self.runtime.record(plan.record(self, status, reader))
        except Exception:
            logger.exception("costr_sdk: the usage of a direct call could not be recorded")


@functools.cache
def transports(http: ModuleType) -> tuple[type, type]:
    """(FallbackTransport, AsyncFallbackTransport) built on ``http``: ``httpx``, or ``httpx2``
    (its fork under another name, which current official clients use and require)."""
    _http = http
    limits = http.Limits(max_connections=1000, max_keepalive_connections=100)
    connect_errors = (http.ConnectError, http.ConnectTimeout)

    class _MeteredStream(http.SyncByteStream):
        def __init__(
            self, inner: Any, transport: FallbackTransport, plan: _Plan, status: int, reader
        ):
            self._inner, self._transport, self._plan = inner, transport, plan
            self._status, self._reader, self._done = status, reader, False

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._inner:
                try:
                    self._reader.feed(chunk)
                except Exception:
                    logger.exception("costr_sdk: usage reading failed")
                    self._reader.failed = True
                yield chunk

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                if not self._done:
                    self._done = True
                    self._transport._finish(self._plan, self._status, self._reader)

    class _AsyncMeteredStream(http.AsyncByteStream):
        def __init__(
            self, inner: Any, transport: AsyncFallbackTransport, plan: _Plan, status, reader
        ):
            self._inner, self._transport, self._plan = inner, transport, plan
            self._status, self._reader, self._done = status, reader, False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._inner:
                try:
                    self._reader.feed(chunk)
                except Exception:
                    logger.exception("costr_sdk: usage reading failed")
                    self._reader.failed = True
                yield chunk

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                if not self._done:
                    self._done = True
                    self._transport._finish(self._plan, self._status, self._reader)

    class FallbackTransport(_Base, http.BaseTransport):
        http = _http
        """``http.Client(transport=FallbackTransport("openai", runtime))``: Costr, else direct."""

        def __init__(
            self,
            provider: str,
            runtime: Runtime,
            *,
            costr: http.BaseTransport | None = None,
            direct: http.BaseTransport | None = None,
        ) -> None:
            super().__init__(provider, runtime)
            self.costr = costr or http.HTTPTransport(limits=limits)
            self.direct = direct or http.HTTPTransport(limits=limits)

        def handle_request(self, request: http.Request) -> http.Response:
            self._attribute(request)
            if not self._direct_possible():
                return self.costr.handle_request(request)
            if self.runtime.breaker.open:
                return self._direct(request)
            request.read()  # replayable (the official clients' bodies are bytes already)
            extensions = request.extensions
            request.extensions = _shortened(extensions, self.runtime.settings.connect_timeout)
            try:
                response = self.costr.handle_request(request)
            except connect_errors as error:
                request.extensions = extensions
                self.runtime.breaker.trip(type(error).__name__)
                return self._direct(request)
            request.extensions = extensions
            if not self._costr_failed(response):
                return response
            response.close()
            self.runtime.breaker.trip(
                f"{response.status_code} {response.headers[COSTR_ERROR_HEADER]}"
            )
            return self._direct(request)

        def _direct(self, request: http.Request) -> http.Response:
            request.read()
            plan = _Plan(self, request)
            response = self.direct.handle_request(plan.request)
            reader = plan.reader(self, response)
            return http.Response(
                response.status_code,
                headers=response.headers,
                stream=_MeteredStream(response.stream, self, plan, response.status_code, reader),
                extensions=response.extensions,
            )

        def close(self) -> None:
            self.costr.close()
            self.direct.close()

    class AsyncFallbackTransport(_Base, http.AsyncBaseTransport):
        http = _http
        """The same for ``http.AsyncClient``."""

        def __init__(
            self,
            provider: str,
            runtime: Runtime,
            *,
            costr: http.AsyncBaseTransport | None = None,
            direct: http.AsyncBaseTransport | None = None,
        ) -> None:
            super().__init__(provider, runtime)
            self.costr = costr or http.AsyncHTTPTransport(limits=limits)
            self.direct = direct or http.AsyncHTTPTransport(limits=limits)

        async def handle_async_request(self, request: http.Request) -> http.Response:
            self._attribute(request)
            if not self._direct_possible():
                return await self.costr.handle_async_request(request)
            if self.runtime.breaker.open:
                return await self._direct(request)
            await request.aread()
            extensions = request.extensions
            request.extensions = _shortened(extensions, self.runtime.settings.connect_timeout)
            try:
                response = await self.costr.handle_async_request(request)
            except connect_errors as error:
                request.extensions = extensions
                self.runtime.breaker.trip(type(error).__name__)
                return await self._direct(request)
            request.extensions = extensions
            if not self._costr_failed(response):
                return response
            await response.aclose()
            self.runtime.breaker.trip(
                f"{response.status_code} {response.headers[COSTR_ERROR_HEADER]}"
            )
            return await self._direct(request)

        async def _direct(self, request: http.Request) -> http.Response:
            await request.aread()
            plan = _Plan(self, request)
            response = await self.direct.handle_async_request(plan.request)
            reader = plan.reader(self, response)
            return http.Response(
                response.status_code,
                headers=response.headers,
                stream=_AsyncMeteredStream(
                    response.stream, self, plan, response.status_code, reader
                ),
                extensions=response.extensions,
            )

        async def aclose(self) -> None:
            await self.costr.aclose()
            await self.direct.aclose()

    return FallbackTransport, AsyncFallbackTransport


def http_module(preferred: str | None) -> ModuleType:
    """The HTTP package a client library takes its transports from."""
    if preferred == "httpx2":
        try:
            return importlib.import_module("httpx2")
        except ImportError:
            pass
    return httpx


def FallbackTransport(provider: str, runtime: Runtime, *, http: ModuleType = httpx, **kw: Any):
    """``httpx.Client(transport=FallbackTransport("openai", runtime))``: Costr, else direct."""
    return transports(http)[0](provider, runtime, **kw)


def AsyncFallbackTransport(provider: str, runtime: Runtime, *, http: ModuleType = httpx, **kw: Any):
    """The same for an async client."""
    return transports(http)[1](provider, runtime, **kw)
