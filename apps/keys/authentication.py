"""``Authorization: Bearer costr_…`` for the ``/api/v1/`` API.

The token is looked up by its SHA-256 through ``keycache``, the same in-process cache the proxy
uses: a warm token costs no query for itself, and revocation reaches the API as fast as it
reaches the proxy. The organization row is read once per request (by primary key) because views
need it whole. Last use is noted in memory and written out in bulk by keycache's flusher, never
per request.

A Bearer header that fails counts against its client address (``costr.throttle``, shared with the
proxy); past the limit, that address is answered 429 with ``Retry-After`` before any look-up,
until the window allows more.
"""

from dataclasses import dataclass

from django.contrib.auth.models import AnonymousUser
from django.views.decorators.debug import sensitive_variables
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from apps.accounts.models import Organization
from apps.keys import keycache
from apps.keys.services import TOKEN_PREFIX, token_hash
from costr import throttle

KEYWORD = b"bearer"
REALM = "Costr API"


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    """``request.auth`` for a request that came with a Costr token (never the token itself)."""

    organization: Organization
    scopes: frozenset[str]
    token_id: int


class TokenAuthentication(BaseAuthentication):
    """Bearer Costr tokens. Another scheme in ``Authorization`` (e.g. Basic) is left to the
    next authentication class; a Bearer header that does not hold a live token is refused."""

    @sensitive_variables("header", "parts", "token")
    def authenticate(self, request):
        header = get_authorization_header(request)
        parts = header.split()
        if not parts or parts[0].lower() != KEYWORD:
            return None
        address = client_address(request)
        wait = throttle.INVALID_TOKENS.blocked(address)
        if wait is not None:
            raise rate_limited(wait)
        if len(parts) != 2:
            raise refused(address, "Send the token as: Authorization: Bearer costr_…")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            token = ""
        if not token.startswith(TOKEN_PREFIX):
            raise refused(address, "This is not a Costr token (they start with costr_).")
        resolved = keycache.resolve(token_hash(token))
        if resolved is None:
            raise refused(address, "Unknown, revoked or expired token.")
        # An organization being deleted is out of reach from the moment deletion is asked for.
        organization = Organization.objects.filter(
            pk=resolved.organization_id, deletion_requested_at__isnull=True
        ).first()
        if organization is None:
            raise refused(address, "Unknown, revoked or expired token.")
        keycache.record_use(resolved)
        credentials = TokenCredentials(
            organization=organization, scopes=resolved.scopes, token_id=resolved.token_id
        )
        return AnonymousUser(), credentials

    def authenticate_header(self, request):
        return f'Bearer realm="{REALM}"'


def client_address(request) -> str:
    """The socket's peer as the server saw it (uvicorn's ``--proxy-headers`` sets it from
    ``X-Forwarded-For`` for trusted proxies only); a header is never read here."""
    return request.META.get("REMOTE_ADDR") or "unknown"


def rate_limited(wait: int) -> exceptions.Throttled:
    return exceptions.Throttled(
        wait=wait,
        detail="Too many requests with invalid tokens from this address.",
        code="rate_limited",
    )


def refused(address: str, message: str) -> exceptions.APIException:
    """A failed token: 401, or 429 once this address is past the invalid-token limit."""
    wait = throttle.INVALID_TOKENS.hit(address)
    if wait is not None:
        return rate_limited(wait)
    return exceptions.AuthenticationFailed(message, code="invalid_token")


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """Declares the Bearer scheme in the OpenAPI document."""

    target_class = TokenAuthentication
    name = "costrToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "costr_…",
            "description": (
                "A Costr token from the organization's Tokens page (or `createtoken`), with "
                "the `read` scope for reporting endpoints and for reading budgets, `manage` "
                "to create, change or delete budgets, and `ingest` for `POST /ingest/`."
            ),
        }
