"""Who may come in: the token check every proxied request (and WebSocket session) passes before
anything is forwarded, and the count of refusals the dashboard shows per organization.

Shared by the HTTP proxy (``app``) and the WebSocket relay (``websocket``), so both refuse the
same tokens the same way.
"""

import hashlib
import logging
from typing import Any, Protocol

from django.views.decorators.debug import sensitive_variables

from apps.budgets import guard
from apps.keys import keycache
from apps.proxy.limits import Refusal, climbs_above_prefix
from apps.proxy.providers import Adapter
from apps.usage.metering import sink
from costr import throttle

logger = logging.getLogger("costr.proxy")

TOKEN_PREFIX = "costr_"  # noqa: S105 -- a public marker, not a secret
# Refusals before forwarding make no usage event but are counted per organization for the
# dashboard (DESIGN.md); a 503 for Costr's own trouble is no refusal of the request. Only a
# request that proved it is the organization's (a valid token of it) is counted: anyone can
# send a bad token to any /p/<org>/, and the count must not be theirs to inflate.
COUNTED_REFUSALS = frozenset({400, 403, 405, 408, 413, 429})


class Caller(Protocol):
    """What the token check reads of a request (``app.ProxiedRequest`` is one)."""

    scope: Any
    adapter: Adapter
    provider: str
    org_slug: str
    resolved: keycache.ResolvedToken | None
    attribution: Any
    info: Any
    timestamp: Any


async def authorize(request: Caller, headers, query) -> keycache.ResolvedToken:
    """The request's token, resolved, or a refusal.

    A token that fails counts against the client's address (``costr.throttle``, shared with the
    API and, with Redis, with every process); past the limit the address gets no more token
    look-ups until the window allows more: only tokens this process already knows to be valid
    are served from it (an address is often shared: another organization behind the same NAT
    keeps working), and every other request is answered 429. A valid token from an address that
    is not blocked costs nothing more than before.
    """
    client = request.scope.get("client")
    address = client[0] if client else "unknown"
    credential = request.adapter.credential_from(headers, query)
    wait = throttle.INVALID_TOKENS.blocked(address)
    if wait is not None:
        known = (
            keycache.resolve_known(hashlib.sha256(credential.encode()).hexdigest())
            if credential
            else None
        )
        if known is None or known.organization_slug != request.org_slug:
            raise _rate_limited(wait)
    if not credential:
        raise Refusal(401, "missing_token", "Send your Costr token where the SDK puts its API key.")
    if not credential.startswith(TOKEN_PREFIX):
        raise await _invalid_token(address, "This is not a Costr token (they start with costr_).")
    token_hash = hashlib.sha256(credential.encode()).hexdigest()
    try:
        resolved = await keycache.aresolve(token_hash)
    except Exception as error:
        logger.exception("token lookup failed")
        raise Refusal(
            503, "costr_unavailable", "Costr cannot check tokens right now; call the provider."
        ) from error
    if resolved is None or resolved.organization_slug != request.org_slug:
        raise await _invalid_token(address, "Unknown, revoked or expired Costr token.")
    if "proxy" not in resolved.scopes:
        raise Refusal(403, "token_scope", "This Costr token does not have the proxy scope.")
    return resolved


async def _invalid_token(address: str, message: str) -> Refusal:
    """401 for a failed token, or 429 once its address is past the invalid-token limit."""
    wait = await throttle.INVALID_TOKENS.ahit(address)
    if wait is not None:
        return _rate_limited(wait)
    return Refusal(401, "invalid_token", message)


def _rate_limited(wait: int) -> Refusal:
    return Refusal(
        429,
        "rate_limited",
        f"Too many requests with invalid tokens from this address; retry in {wait} s.",
        headers=((b"retry-after", str(wait).encode()),),
    )


async def reserve_budget(
    request: Caller, body_head: bytes | None, body_size: int, *, session: bool = False
) -> guard.Reservation | None:
    """Reserve the request's upper estimate on every budget it falls under (for a WebSocket
    ``session``, check that they have room: its responses count as they finish), or refuse
    it: 429 ``budget_exceeded`` (``Retry-After``: seconds to the period's end), or 429
    ``budget_unavailable`` when a fail-closed budget cannot be checked. Called only for an
    organization with budgets; the reservation is settled when the request's record is made."""
    resolved, attribution = request.resolved, request.attribution
    try:
        if session:
            return await guard.admit_session(
                resolved.budgets,
                token_id=resolved.token_id,
                customer=attribution.customer,
                properties=attribution.properties,
                provider=request.provider,
                now=request.timestamp,
            )
        return await guard.admit(
            resolved.budgets,
            token_id=resolved.token_id,
            customer=attribution.customer,
            properties=attribution.properties,
            provider=request.provider,
            endpoint=request.info.endpoint,
            model=request.info.requested_model or "",
            body=body_head,
            body_size=body_size,
            now=request.timestamp,
            document=request.info.document,
        )
    except guard.BudgetRefused as refused:
        raise Refusal(
            429,
            refused.code,
            refused.message,
            headers=(
                (b"x-costr-budget-id", refused.budget_id.encode()),
                (b"retry-after", str(refused.retry_after).encode()),
            ),
        ) from None


def count_refusal(request: Caller, refusal: Refusal) -> None:
    """Count a refusal for the dashboard when the request proved it is the organization's.

    Refusals of requests that proved nothing (no token, a bad one, another org's) are logged
    instead, with the client's address, at debug level: a flood of them shows as the
    invalid-token throttle's one warning per blocked address (``costr.throttle``).
    """
    if request.resolved is not None and refusal.status in COUNTED_REFUSALS:
        sink.emit_refusal(request.org_slug, refusal.status, refusal.code)
    elif refusal.status != 503:
        client = request.scope.get("client") or ("-", 0)
        logger.debug(
            "refused %s %s for org %r from %s",
            refusal.status,
            refusal.code,
            request.org_slug[:100],
            client[0],
        )


def check_path(raw_rest: bytes) -> None:
    """400 for a path whose dot-segments climb above the provider API's root (checked once the
    token is known, so the refusal counts for the organization)."""
    if climbs_above_prefix(raw_rest):
        raise Refusal(400, "invalid_path", "The path's dot-segments climb above the API's root.")


@sensitive_variables("key")
def provider_key_or_refuse(resolved: keycache.ResolvedToken, provider: str) -> str:
    """The organization's key for ``provider``, decrypted, or 400 when it has none."""
    key = keycache.provider_key_plaintext(resolved, provider)
    if key is None:
        raise Refusal(
            400,
            "no_provider_key",
            f"No {provider} key is configured for this organization in Costr. "
            "Add one under Provider keys.",
        )
    return key
