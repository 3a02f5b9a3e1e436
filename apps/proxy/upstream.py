"""One pooled async HTTP client per process, created on first use and closed on shutdown."""

from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from django.conf import settings

_client: httpx.AsyncClient | None = None


def get_client() -> httpx.AsyncClient:
    global _client
    if _client is None or _client.is_closed:
        _client = _new_client()
    return _client


def upstream_timeout() -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.COSTR_UPSTREAM_CONNECT_TIMEOUT,
        read=settings.COSTR_UPSTREAM_READ_TIMEOUT,
        write=settings.COSTR_UPSTREAM_READ_TIMEOUT,
        pool=settings.COSTR_UPSTREAM_CONNECT_TIMEOUT,
    )


def _new_client() -> httpx.AsyncClient:
    client = httpx.AsyncClient(
        timeout=upstream_timeout(),
        limits=httpx.Limits(
            max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30
        ),
        follow_redirects=False,
        trust_env=False,
        # One client serves every organization: a cookie an upstream sets for one (Cloudflare's
        # __cf_bm, say) must never ride along on another's request. This jar accepts none.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )
    # httpx adds Accept, Accept-Encoding, Connection and User-Agent to every request by default;
    # the upstream must see the client's headers and nothing else.
    for name in list(client.headers.keys()):
        del client.headers[name]
    return client


async def close_client() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
        _client = None
