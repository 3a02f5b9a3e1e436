"""Posting an alert to a URL someone else chose: a webhook endpoint or a Slack incoming webhook.

Whoever can set a webhook URL can make Costr's servers send requests, so the URL is held to what
a public endpoint looks like (server-side request forgery): https, no user name or password in
it, and a host whose every address is public. The check runs when the URL is saved (a clear
error for the person typing it) and again before every attempt, on the addresses the request
then actually connects to: the connection is pinned to the address that was checked (TLS still
verifies the certificate against the host name), so a DNS answer that changes between the check
and the connection (DNS rebinding) cannot aim it at a private address. Redirects are never
followed (a redirect could point anywhere); the answer's body is never read.

``COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS`` lifts the address and https rules (tests; a self-hosted
deployment whose receivers live on its own network).

Nothing here logs or returns the URL: a Slack URL is itself the secret that lets one post.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

SLACK_HOST = "hooks.slack.com"
MAX_URL_LENGTH = 2000


class UnsafeURL(ValueError):
    """A URL Costr will not send to; the message is for the person who typed it."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect (``address``) and what to ask for there."""

    scheme: str
    host: str
    port: int
    address: str
    target: str  # path and query


@dataclass(frozen=True, slots=True)
class Answer:
    """What one attempt came to: ``status`` when an HTTP answer came back, else None, and
    ``error`` (empty on a 2xx) in words that never include the URL."""

    status: int | None
    error: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def private_hosts_allowed() -> bool:
    return bool(settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS)


# IPv6 ranges that carry an IPv4 address a gateway or the host may reach (NAT64, 6to4, SIIT,
# IPv4-compatible): Python counts some as global whatever IPv4 address they carry, so none is
# taken as public (a webhook has no need of them).
_EMBEDDING_IPV4 = tuple(
    ipaddress.ip_network(network)
    for network in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::ffff:0:0:0/96", "::/96")
)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif any(ip in network for network in _EMBEDDING_IPV4):
            return False
    return ip.is_global and not ip.is_multicast


@sensitive_variables("url", "parts")
def check_url(url: str, *, slack: bool = False, resolve: bool = True) -> Target:
    """``url`` as a ``Target`` to connect to, or ``UnsafeURL`` saying what is wrong with it."""
    url = (url or "").strip()
    if not url:
        raise UnsafeURL("Enter the URL.")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"The URL can be at most {MAX_URL_LENGTH} characters.")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UnsafeURL("The URL cannot contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL("This is not a valid URL.") from None
    allowed = private_hosts_allowed()
    schemes = ("https", "http") if allowed else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeURL("The URL must start with https://.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("The URL has no host name.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("Put no user name or password in the URL.")
    if slack and not allowed and (host != SLACK_HOST or not parts.path.startswith("/services/")):
        raise UnsafeURL(
            "A Slack incoming webhook URL starts with https://hooks.slack.com/services/."
        )
    port = port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not resolve:
        return Target(parts.scheme, host, port, "", target)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeURL(f"The host name {host} cannot be resolved.") from None
    addresses = list(dict.fromkeys(info[4][0] for info in found))
    if not addresses:
        raise UnsafeURL(f"The host name {host} cannot be resolved.")
    if not allowed and not all(_public(address) for address in addresses):
        raise UnsafeURL(
            "The URL points at a private, loopback or link-local address; Costr sends alerts "
            "only to public endpoints."
        )
    return Target(parts.scheme, host, port, addresses[0], target)


@sensitive_variables("url", "checked", "request_url")
def post_json(url: str, body: bytes, headers: dict[str, str], *, slack: bool = False) -> Answer:
    """POST ``body`` (JSON) to ``url`` once, after checking it again; never raises for the
    network's or the receiver's sake."""
    try:
        checked = check_url(url, slack=slack)
    except UnsafeURL as refusal:
        return Answer(None, f"refused: {refusal}"[:300])
    address = f"[{checked.address}]" if ":" in checked.address else checked.address
    request_url = f"{checked.scheme}://{address}:{checked.port}{checked.target}"
    default_port = 443 if checked.scheme == "https" else 80
    # An IPv6 literal is bracketed in Host as in a URL (RFC 7230, section 5.4).
    host = f"[{checked.host}]" if ":" in checked.host else checked.host
    host_header = host if checked.port == default_port else f"{host}:{checked.port}"
    timeout = settings.COSTR_WEBHOOK_TIMEOUT_SECONDS
    extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream(
                "POST",
                request_url,
                content=body,
                headers={
                    **headers,
                    "Host": host_header,
                    "Content-Type": "application/json",
                    "User-Agent": "Costr-Alerts/1",
                },
                extensions=extensions,
            ) as response,
        ):
            status = response.status_code
    except httpx.TimeoutException:
        return Answer(None, f"no answer within {timeout:g} s")
    except httpx.ConnectError:
        return Answer(None, "could not connect")
    except httpx.RemoteProtocolError:
        return Answer(None, "the connection closed without a complete HTTP answer")
    except httpx.HTTPError as error:
        return Answer(None, f"failed: {type(error).__name__}")
    if 200 <= status < 300:
        return Answer(status, "")
    if 300 <= status < 400:
        return Answer(status, f"answered {status} (redirects are not followed)")
    return Answer(status, f"answered {status}")
