"""The ASGI entry point: the health check and the proxy answer before Django; the rest is Django.

WebSocket sessions under ``/p/`` go to the proxy's relay; any other WebSocket is refused before
the upgrade (Django serves none), never handed to Django, which has no answer for one.
"""

import gc
import logging
import os

from django.core.asgi import get_asgi_application
from django.views.decorators.debug import sensitive_variables

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costr.settings.local")

django_application = get_asgi_application()

# Imported after Django is set up: the proxy reads settings and the key cache.
from apps.proxy.app import proxy_app  # noqa: E402
from apps.proxy.upstream import close_client  # noqa: E402
from apps.proxy.websocket import websocket_app  # noqa: E402
from apps.usage.metering import sink  # noqa: E402
from costr.server import AccessLogRedaction, install_access_log_redaction  # noqa: E402

# Here, after Django has applied LOGGING, on whatever handlers the server gave the logger.
install_access_log_redaction()
# uvicorn logs each WebSocket handshake ('"WebSocket /p/…?key=costr_…" [accepted]') on its
# error logger, query string included, and at DEBUG the handshake's headers: redacted alike.
_error_log = logging.getLogger("uvicorn.error")
if not any(isinstance(item, AccessLogRedaction) for item in _error_log.filters):
    _error_log.addFilter(AccessLogRedaction())

_HEALTH_BODY = b'{"status":"ok"}'
_HEALTH_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_HEALTH_BODY)).encode()),
    (b"cache-control", b"no-store"),
]


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # Everything loaded so far (Django, the apps, the SDK-sized import graph) lives as
            # long as the process: keep it out of the collector's full passes, which otherwise
            # walk it all and pause requests for tens of milliseconds (docs/benchmarks.md).
            gc.collect()
            gc.freeze()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await close_client()
            sink.flush(timeout=10)
            await send({"type": "lifespan.shutdown.complete"})
            return


@sensitive_variables("scope")
async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "http" and scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": _HEALTH_HEADERS})
        await send({"type": "http.response.body", "body": _HEALTH_BODY})
        return
    if scope["type"] == "http" and scope["path"].startswith("/p/"):
        await proxy_app(scope, receive, send)
        return
    if scope["type"] == "websocket":
        if scope["path"].startswith("/p/"):
            await websocket_app(scope, receive, send)
        else:
            await _refuse_websocket(scope, receive, send)
        return
    await django_application(scope, receive, send)


_NOT_FOUND_BODY = b'{"error": {"code": "not_found", "message": "No WebSocket is served here."}}'


async def _refuse_websocket(scope, receive, send):
    """A WebSocket outside ``/p/``: 404 before the upgrade (a close before accept, which the
    server answers 403, when it cannot send an HTTP answer)."""
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_NOT_FOUND_BODY)).encode()),
        (b"x-costr-error", b"not_found"),
    ]
    await send({"type": "websocket.http.response.start", "status": 404, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": _NOT_FOUND_BODY})
