"""How Costr is served: uvicorn's HTTP protocol with the limits uvicorn lacks, the gunicorn
worker that uses it, and the access-log redaction.

uvicorn (the locked 0.55) bounds nothing of a request head when it parses with httptools (its
default): headers accumulate in memory for as long as a client sends them, and there is no
header read timeout (``timeout_keep_alive`` covers only the idle time between requests, and no
timer runs while a head trickles in). Its h11 parser caps an incomplete head at
``h11_max_incomplete_event_size`` (16 KiB by default, answered 400, not 431), with no timeout
either. ``HttpToolsProtocol`` adds both limits at the one place that sees a head before it is
complete: over ``MAX_HEAD_BYTES`` the client gets 431, past
``COSTR_PROXY_HEADER_READ_TIMEOUT`` 408, each marked ``X-Costr-Error`` and, under ``/p/``, in
the provider's error shape. The proxy also checks the size of every complete head itself, so
the limit holds under any server.

uvicorn puts its ``date`` and ``server`` headers (``server_state.default_headers``, remade
once a second) on every response, so a proxied answer would carry two of each, the provider's
and the server's. For a request under ``/p/``, ``HttpToolsProtocol`` gives the request's cycle
no default headers and leaves them in the scope (``limits.SERVER_HEADERS_SCOPE_KEY``): relayed
answers carry the provider's headers only, and the proxy adds the server's to the answers that
are its own. It costs a prefix test on the head already parsed, nothing else per request; every
other response (Django's pages, ``/healthz``, these refusals) keeps the server's one of each.

The access log line carries the query string, where a Gemini client puts its Costr token
(``?key=costr_…``): ``AccessLogRedaction`` rewrites it before any handler sees it.
"""

import logging
import re

from django.conf import settings
from uvicorn.protocols.http import httptools_impl
from uvicorn_worker import UvicornWorker as _UvicornWorker

from apps.proxy.limits import (
    MAX_HEAD_BYTES,
    PROXY_PATH_PREFIX,
    SERVER_HEADERS_SCOPE_KEY,
    error_for_path,
)

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


# uvicorn's methods, called directly from the overrides that run per request (no super object
# made each time).
_Parent = httptools_impl.HttpToolsProtocol
_data_received = _Parent.data_received
_on_message_begin = _Parent.on_message_begin
_on_headers_complete = _Parent.on_headers_complete
_on_message_complete = _Parent.on_message_complete


class HttpToolsProtocol(_Parent):
    """uvicorn's httptools protocol with a bound on the head's size and on its read time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_complete = False
        self._head_bytes = 0
        # When the head being read began (loop time), None between requests; one timer per
        # connection checks it (see _check_head_time), none is armed or cancelled per request.
        self._head_started: float | None = None
        self._head_timer = None
        self.url = b""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_started = self.loop.time()
        self._arm_head_timer(self._head_started + settings.COSTR_PROXY_HEADER_READ_TIMEOUT)

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_complete:
            _data_received(self, data)
            return
        self._head_bytes += len(data)
        _data_received(self, data)
        # Counted before parsing, so the bytes of a chunk that completed the head (and began
        # the body) are no concern: the head is only judged while it is still incomplete, and
        # then everything counted was head.
        if (
            not self._head_complete
            and self._head_bytes > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            self._refuse(
                431, "head_too_large", f"Request heads are limited to {MAX_HEAD_BYTES} bytes."
            )

    def on_message_begin(self) -> None:
        _on_message_begin(self)
        if self._head_started is None:  # a new request's head (the first one's began earlier)
            self._head_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self._head_complete = True
        self._head_started = None
        _on_headers_complete(self)
        if self.url.startswith(PROXY_PATH_PREFIX):
            cycle = self.cycle
            # No cycle of this head's own: an upgrade (WebSockets write their own headers).
            if cycle is not None and cycle.scope is self.scope:
                self.scope[SERVER_HEADERS_SCOPE_KEY] = cycle.default_headers
                cycle.default_headers = []

    def on_message_complete(self) -> None:
        _on_message_complete(self)
        # Whatever arrives next is the next request's head.
        self._head_complete = False
        self._head_bytes = 0

    def _arm_head_timer(self, when: float) -> None:
        self._head_timer = self.loop.call_at(when, self._check_head_time)

    def _check_head_time(self) -> None:
        """The connection's one head timer: a head begun more than
        ``COSTR_PROXY_HEADER_READ_TIMEOUT`` ago and still incomplete is refused (408), one
        begun later is checked again at its deadline, and between requests the timer checks
        again a timeout later (an idle keep-alive connection is the server's to close)."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        timeout = settings.COSTR_PROXY_HEADER_READ_TIMEOUT
        started = self._head_started
        now = self.loop.time()
        if started is None or self._head_complete:
            self._arm_head_timer(now + timeout)
        elif now - started < timeout:
            self._arm_head_timer(started + timeout)
        else:
            self._head_timed_out(timeout)

    def _head_timed_out(self, timeout: float) -> None:
        if not self._head_bytes:
            # A connection that never sent a byte has nothing to be answered.
            self.transport.close()
            return
        self._refuse(
            408, "header_read_timeout", f"The request head did not arrive within {timeout:g} s."
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        body = error_for_path(self.url, status, code, message)
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-costr-error: " + code.encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.logger.warning("refused a request head: %s %s", status, code)
        self.transport.write(b"".join(head) + body)
        self.transport.close()


class UvicornWorker(_UvicornWorker):
    """gunicorn's uvicorn worker, serving with ``HttpToolsProtocol``."""

    CONFIG_KWARGS = {"loop": "auto", "http": "costr.server:HttpToolsProtocol"}

    def run(self) -> None:
        # The application (and with it Django's settings) is loaded by now. uvicorn closes a
        # client's WebSocket message over ws_max_size (1009) before the relay sees it: the same
        # bound as the relay's own, COSTR_PROXY_MAX_WS_FRAME_BYTES, whatever it is set to.
        self.config.ws_max_size = settings.COSTR_PROXY_MAX_WS_FRAME_BYTES
        super().run()


_KEY_VALUE = re.compile(r"([?&;]key=)[^&;\s\"]*", re.IGNORECASE)
_TOKEN = re.compile(r"costr_[A-Za-z0-9_\-]+")


def redact(text: str) -> str:
    """``text`` without ``key=`` values and Costr tokens."""
    return _TOKEN.sub("costr_[redacted]", _KEY_VALUE.sub(r"\1[redacted]", text))


class AccessLogRedaction(logging.Filter):
    """Rewrites an access-log record's arguments (uvicorn's formatter reads them one by one, so
    the record keeps its shape): a ``?key=`` value or a ``costr_`` token never reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_access_log_redaction() -> None:
    """Put the redaction on ``uvicorn.access`` itself, whatever handlers uvicorn, gunicorn or
    LOGGING give it (a LOGGING entry for that logger would replace the server's handlers)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(item, AccessLogRedaction) for item in access.filters):
        access.addFilter(AccessLogRedaction())
