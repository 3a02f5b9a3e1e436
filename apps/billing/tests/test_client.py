"""The read-only lock: no write method of the SDK, sync or async, v1 or v2, sends anything."""

import asyncio
import importlib
import inspect

import pytest
import stripe

from apps.billing.client import (
    LIST_SERVICES,
    ReadOnlyHTTPClient,
    ReadOnlyStripe,
    StripeWriteRefused,
)

READ_PREFIXES = ("list", "retrieve", "search", "auto_paging")


def _services(root, seen=None, depth=0):
    """Every service object reachable from ``root`` (v1 or v2), nested ones included."""
    seen = set() if seen is None else seen
    module = importlib.import_module(type(root).__module__)
    names = list(getattr(module, "_subservices", {}))
    for name in names:
        service = getattr(root, name)
        if id(service) in seen:
            continue
        seen.add(id(service))
        yield name, service
        if depth < 4:
            yield from _services(service, seen, depth + 1)


def _write_methods(service):
    for name, method in inspect.getmembers(service, inspect.ismethod):
        if name.startswith("_") or name.startswith(READ_PREFIXES):
            continue
        yield name, method


def _call(method):
    """Call with a placeholder for every required positional parameter: ids as strings,
    ``params`` as an empty dict."""
    params = inspect.signature(method).parameters.values()
    args = [
        {} if p.name == "params" else "x_placeholder"
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return method(*args)


def test_every_write_method_of_the_sdk_is_refused_before_it_is_sent(fake_stripe):
    api = ReadOnlyStripe("rk_test_51FakeNeverSentKq7ZrT2mVx9LpW4nB8")
    client = api._client
    refused, other = [], []
    coroutines = []
    for root in (client.v1, client.v2):
        for service_name, service in _services(root):
            for name, method in _write_methods(service):
                label = f"{service_name}.{name}"
                if inspect.iscoroutinefunction(method):
                    coroutines.append((label, method))
                    continue
                try:
                    _call(method)
                except StripeWriteRefused:
                    refused.append(label)
                except Exception as error:  # a GET that the fake answered, e.g. 404
                    other.append((label, type(error).__name__))

    async def run_all():
        for label, method in coroutines:
            try:
                await _call(method)
            except StripeWriteRefused:
                refused.append(label)
            except Exception as error:
                other.append((label, type(error).__name__))

    asyncio.run(run_all())

    assert "customers.create" in refused and "customers.delete" in refused
    assert "refunds.create_async" in refused and "charges.capture" in refused
    assert "subscriptions.cancel" in refused and "payouts.create" in refused
    assert len(refused) > 500, len(refused)
    assert fake_stripe.writes() == []
    # Whatever did reach the fake was a read, named like one (e.g. invoices.upcoming_lines).
    assert all(request["method"] == "GET" for request in fake_stripe.requests)
    assert len(fake_stripe.requests) == len(other)
    assert len(other) < 10, other


@pytest.mark.parametrize("method", ["post", "delete", "POST", "put", "patch"])
def test_raw_requests_and_the_http_client_refuse_writes(fake_stripe, method):
    api = ReadOnlyStripe("rk_test_51FakeNeverSentKq7ZrT2mVx9LpW4nB8")

    if method.lower() in ("post", "delete"):  # the SDK itself knows no other methods
        with pytest.raises(StripeWriteRefused):
            api._client.raw_request(method.lower(), "/v1/customers", email="x@example.com")
    http = ReadOnlyHTTPClient(allow_sync_methods=True)
    url = f"{fake_stripe.url}/v1/charges"
    with pytest.raises(StripeWriteRefused):
        http.request(method, url, {}, "amount=100")
    with pytest.raises(StripeWriteRefused):
        http.request_stream(method, url, {}, "amount=100")
    with pytest.raises(StripeWriteRefused):
        asyncio.run(http.request_async(method, url, {}, "amount=100"))
    with pytest.raises(StripeWriteRefused):
        asyncio.run(http.request_stream_async(method, url, {}, "amount=100"))

    assert fake_stripe.requests == []


def test_the_wrapper_offers_reads_only(fake_stripe):
    public = {name for name in dir(ReadOnlyStripe) if not name.startswith("_")}

    assert public == {"close", "list_page", "retrieve_account", "retrieve_charge"}
    assert set(LIST_SERVICES) == {
        "customers",
        "charges",
        "balance_transactions",
        "invoices",
        "disputes",
    }


def test_list_pages_follow_stripe_cursors(fake_stripe):
    account = fake_stripe.account()
    made = [account.customer(email=f"c{i}@example.com", created=1767225600 + i) for i in range(5)]
    key = fake_stripe.restricted_key(account)

    with ReadOnlyStripe(key) as api:
        first = api.list_page("customers", limit=2)
        second = api.list_page("customers", limit=2, starting_after=first.data[-1]["id"])
        recent = api.list_page("customers", limit=10, created_gte=1767225603)

    newest_first = [c["id"] for c in reversed(made)]
    assert [c["id"] for c in first.data] == newest_first[:2] and first.has_more
    assert [c["id"] for c in second.data] == newest_first[2:4] and second.has_more
    assert [c["id"] for c in recent.data] == newest_first[:2] and not recent.has_more
    queries = [dict(r["query"]) for r in fake_stripe.requests]
    assert queries[1] == {"limit": "2", "starting_after": first.data[-1]["id"]}
    assert queries[2] == {"limit": "10", "created[gte]": "1767225603"}


def test_a_429_is_waited_out_as_retry_after_says(fake_stripe):
    account = fake_stripe.account()
    account.customer(email="a@example.com")
    key = fake_stripe.restricted_key(account)
    fake_stripe.rate_limit(2, retry_after="7")
    waits = []

    with ReadOnlyStripe(key, sleep=waits.append) as api:
        page = api.list_page("customers")

    assert len(page.data) == 1
    assert waits == [7.0, 7.0]
    assert [r["path"] for r in fake_stripe.requests] == ["/v1/customers"] * 3


def test_without_retry_after_backoff_doubles_is_capped_and_gives_up(fake_stripe, settings):
    settings.STRIPE_RATE_LIMIT_RETRIES = 4
    settings.STRIPE_MAX_BACKOFF_SECONDS = 5
    account = fake_stripe.account()
    key = fake_stripe.restricted_key(account)
    fake_stripe.rate_limit(10, retry_after=None)
    waits = []

    with ReadOnlyStripe(key, sleep=waits.append) as api, pytest.raises(stripe.RateLimitError):
        api.list_page("customers")

    assert waits == [1.0, 2.0, 4.0, 5.0]
    assert len(fake_stripe.requests) == 5  # the first try and four retries
