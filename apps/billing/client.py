"""The only way Costr talks to Stripe: read-only by construction.

Two locks, one inside the other. ``ReadOnlyHTTPClient`` is the HTTP client handed to the official
SDK: it raises ``StripeWriteRefused`` before any request whose method is not GET leaves the
process, so even a call to ``customers.create`` on the underlying ``StripeClient`` never reaches
Stripe. ``ReadOnlyStripe`` is what the rest of Costr uses: it exposes list pages and retrieves of
the few resources the sync needs, and nothing that could write.

The key lives only inside the SDK client of one ``ReadOnlyStripe``, in memory, for one connect
check or one sync; callers hold it in functions marked ``sensitive_variables``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import stripe
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

READ_METHODS = frozenset({"get"})


class StripeWriteRefused(RuntimeError):
    """A request that could change something in Stripe was about to leave the process."""


def _refuse_unless_read(method: str, url: str) -> None:
    if method.lower() not in READ_METHODS:
        path = httpx.URL(url).path
        raise StripeWriteRefused(
            f"Costr is read-only towards Stripe: refused {method.upper()} {path} before sending."
        )


class ReadOnlyHTTPClient(stripe.HTTPXClient):
    """The SDK's httpx client with every sending method gated on the HTTP method."""

    name = "costr-read-only-httpx"

    def request(self, method, url, headers, post_data=None):
        _refuse_unless_read(method, url)
        return super().request(method, url, headers, post_data)

    def request_stream(self, method, url, headers, post_data=None):
        _refuse_unless_read(method, url)
        return super().request_stream(method, url, headers, post_data)

    async def request_async(self, method, url, headers, post_data=None):
        _refuse_unless_read(method, url)
        return await super().request_async(method, url, headers, post_data)

    async def request_stream_async(self, method, url, headers, post_data=None):
        _refuse_unless_read(method, url)
        return await super().request_stream_async(method, url, headers, post_data)


@dataclass(frozen=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool


# The resources Costr reads, each with the list endpoint's service name on StripeClient.v1.
LIST_SERVICES = {
    "customers": "customers",
    "charges": "charges",
    "balance_transactions": "balance_transactions",
    "invoices": "invoices",
    "disputes": "disputes",
}


class ReadOnlyStripe:
    """List pages and retrieves, nothing else. 429s are waited out here (bounded); connection
    errors, 409 and 5xx are retried by the SDK itself."""

    @sensitive_variables("api_key")
    def __init__(self, api_key: str, *, sleep: Callable[[float], None] = time.sleep):
        self._http_client = ReadOnlyHTTPClient(
            timeout=httpx.Timeout(
                settings.STRIPE_READ_TIMEOUT, connect=settings.STRIPE_CONNECT_TIMEOUT
            ),
            allow_sync_methods=True,
        )
        self._client = stripe.StripeClient(
            api_key,
            # Costr reads only from the API host. The SDK's other hosts (files, connect, meter
            # events) point there too, so no call, even a read, goes anywhere else.
            base_addresses={
                name: settings.STRIPE_API_BASE
                for name in ("api", "files", "connect", "meter_events")
            },
            http_client=self._http_client,
            max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
        )
        self._sleep = sleep
        self.rate_limit_waits: list[float] = []

    def __repr__(self):
        return "<ReadOnlyStripe>"

    def close(self) -> None:
        self._http_client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _call(self, function: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return function()
            except stripe.RateLimitError as error:
                if attempt >= settings.STRIPE_RATE_LIMIT_RETRIES:
                    raise
                wait = rate_limit_wait(error.headers, attempt)
                self.rate_limit_waits.append(wait)
                self._sleep(wait)
                attempt += 1

    def list_page(
        self,
        resource: str,
        *,
        limit: int = 100,
        starting_after: str | None = None,
        created_gte: int | None = None,
        expand: list[str] | None = None,
    ) -> Page:
        """One page of a list, newest first, as plain dicts."""
        service = getattr(self._client.v1, LIST_SERVICES[resource])
        params: dict[str, Any] = {"limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        if created_gte is not None:
            params["created"] = {"gte": int(created_gte)}
        if expand:
            params["expand"] = list(expand)
        listing = self._call(lambda: service.list(params=params))
        return Page(data=[item.to_dict() for item in listing.data], has_more=bool(listing.has_more))

    def retrieve_charge(self, charge_id: str) -> dict[str, Any]:
        return self._call(lambda: self._client.v1.charges.retrieve(charge_id)).to_dict()

    def retrieve_account(self) -> dict[str, Any]:
        return self._call(lambda: self._client.v1.accounts.retrieve_current()).to_dict()


def rate_limit_wait(headers, attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): Stripe's Retry-After when it sends a
    number, else exponential from 1 s; never more than STRIPE_MAX_BACKOFF_SECONDS."""
    cap = settings.STRIPE_MAX_BACKOFF_SECONDS
    value = (headers or {}).get("Retry-After") or (headers or {}).get("retry-after")
    try:
        wanted = float(value) if value is not None else None
    except ValueError:
        wanted = None
    if wanted is None or wanted < 0:
        wanted = float(2**attempt)
    return min(wanted, cap)
