"""A webhook receiver on 127.0.0.1 for the alert tests: a real HTTP server that checks Costr's
signature itself and can misbehave on purpose.

``WebhookReceiver(secret, script=[...])`` answers the first requests by the script, one step
each, then accepts: ``"500"`` answers 500, ``"timeout"`` holds the request without answering for
``hang_seconds`` (longer than the sender waits), ``"close"`` closes the connection without a
word, ``"redirect"`` answers 307 to another path.
A request it accepts is checked as a receiver should: ``Costr-Signature: t=…,v1=…`` must be
HMAC-SHA256(secret, "<t>.<raw body>") in hex, ``t`` within five minutes; a wrong or missing
signature answers 400. ``secret=None`` checks nothing (a Slack incoming webhook, which answers
``ok``). Every request is kept in ``requests``; the accepted ones' parsed bodies in ``received``.
"""

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 300


def verify(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    """Costr's documented check, written from the documentation, not from Costr's code."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(
        secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, given)


@dataclass
class Seen:
    path: str
    headers: dict
    body: bytes
    outcome: str  # "accepted", "bad signature", or the script step taken


@dataclass
class WebhookReceiver:
    secret: str | None
    script: list[str] = field(default_factory=list)
    hang_seconds: float = 3.0
    requests: list[Seen] = field(default_factory=list)
    received: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/costr"

    def _next_step(self) -> str:
        with self._lock:
            return self.script.pop(0) if self.script else "accept"

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, text: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                step = receiver._next_step()
                seen = Seen(self.path, headers, body, step)
                with receiver._lock:
                    receiver.requests.append(seen)
                if step == "500":
                    self._answer(500, b"receiver failed")
                    return
                if step == "redirect":
                    self.send_response(307)
                    self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if step == "timeout":
                    time.sleep(receiver.hang_seconds)
                    self.close_connection = True
                    return
                if step == "close":
                    self.close_connection = True
                    return
                if receiver.secret is not None and not verify(
                    receiver.secret, headers.get("costr-signature", ""), body
                ):
                    seen.outcome = "bad signature"
                    self._answer(400, b"bad signature")
                    return
                seen.outcome = "accepted"
                with receiver._lock:
                    receiver.received.append(json.loads(body))
                self._answer(200, b"ok")

        return Handler

    def __enter__(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._server.shutdown()
        self._server.server_close()
