"""The ASGI entry point: the health check and the proxy answer before Django; the rest is Django."""

import gc
import os

from django.core.asgi import get_asgi_application
from django.views.decorators.debug import sensitive_variables

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costr.settings.local")

django_application = get_asgi_application()

# Imported after Django is set up: the proxy reads settings and the key cache.
from apps.proxy.app import proxy_app  # noqa: E402
from apps.proxy.upstream import close_client  # noqa: E402
from apps.usage.metering import sink  # noqa: E402
from costr.server import install_access_log_redaction  # noqa: E402

# Here, after Django has applied LOGGING, on whatever handlers the server gave the logger.
install_access_log_redaction()

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
    await django_application(scope, receive, send)
