"""Provider batches through a real Costr, with the official SDKs, against the fake provider:
every item metered exactly once, at batch prices, attributed to the request that created the
batch, whether and however often its results are downloaded; and the Anthropic ``results_url``
never leads a client to send its Costr token to the provider.

Costr follows each batch with its own task (``usage.batches_poll_due``, which queues
``usage.batch_poll``; Celery runs eagerly in tests, so the real task functions run here). A
batch is made due by moving its ``next_check_at`` into the past, as the clock would.

Expected costs are worked by hand from genai-prices' batch rates (its ``processing: batch``
price variants, in force since 2026-10-14):
- gpt-4o-mini: input $0.075/MTok, output $0.30/MTok (cached input at $0.075 too);
- claude-haiku-4-5: input $0.50/MTok, 5-minute cache writes $0.625, 1-hour cache writes $1.00,
  cache reads $0.05, output $2.50.
"""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from apps.proxy.tests.conftest import (  # noqa: F401 - fixtures, used by name
    committed_db,
    costr_server,
    proxy,
    sdk,
)
from apps.usage import tasks
from apps.usage.metering import sink
from apps.usage.models import TrackedBatch, UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

HAIKU = "claude-haiku-4-5-20251001"
# Per item: 2000 input tokens, 400 output, nothing cached.
OPENAI_USAGE = {
    "prompt_tokens": 2000,
    "completion_tokens": 400,
    "total_tokens": 2400,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
# 2000 * 0.075 / 1e6 + 400 * 0.30 / 1e6
OPENAI_ITEM_COST = Decimal("0.000150") + Decimal("0.000120")
# The fake's default Anthropic usage: 50 uncached input, 150 5-minute and 50 1-hour cache
# writes, 1000 cache reads, 300 output:
# 50*0.50 + 150*0.625 + 50*1.00 + 1000*0.05 + 300*2.50 = 968.75 per million tokens.
ANTHROPIC_ITEM_COST = Decimal("0.00096875")
ATTRIBUTION = {"X-Costr-Customer": "acme", "X-Costr-Property-Feature": "nightly"}


def _jsonl(lines) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _chat_items(count: int) -> bytes:
    return _jsonl(
        {
            "custom_id": f"item-{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
        }
        for index in range(count)
    )


def _openai_batch(client, count: int):
    upload = client.files.create(file=("items.jsonl", _chat_items(count)), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=ATTRIBUTION,
    )


def _anthropic_batch(client, custom_ids):
    return client.messages.batches.create(
        requests=[
            {
                "custom_id": custom_id,
                "params": {
                    "model": HAIKU,
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": "Hi"}],
                },
            }
            for custom_id in custom_ids
        ],
        extra_headers=ATTRIBUTION,
    )


def _tracked(setup, batch_id: str) -> TrackedBatch:
    return TrackedBatch.objects.for_org(setup.organization).get(batch_id=batch_id)


def _poll(setup, batch_id: str) -> None:
    """The clock reaches the batch's next check, and the beat's sweep runs (once the usage
    writer has stored what the proxy handed over, the batch's creation among it)."""
    assert sink.flush(timeout=10)
    TrackedBatch.objects.for_org(setup.organization).filter(batch_id=batch_id).update(
        next_check_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    tasks.batches_poll_due()


def _items(setup) -> list[UsageEvent]:
    """The org's batch item events, by status (their request ids are hashes)."""
    return list(
        UsageEvent.objects.for_org(setup.organization)
        .filter(request_id__startswith="batch_")
        .order_by("status", "request_id")
    )


def _resident_bytes(*, reset_peak: bool = False) -> int:
    """This process's resident memory now (Linux); ``reset_peak`` restarts its high-water mark
    from here (``/proc/self/clear_refs``, "5")."""
    if reset_peak:
        Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_bytes("VmRSS")


def _peak_resident_bytes() -> int:
    return _proc_status_bytes("VmHWM")


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def _no_costr_token_reached(setup) -> None:
    for request in setup.fake.requests:
        for name, value in request.headers:
            assert setup.token.encode() not in value, (request.path, name)
        assert setup.token.encode() not in request.query_string


def test_openai_batch_items_are_metered_once_at_batch_prices_for_the_creator(proxy, sdk):  # noqa: F811
    client = sdk.openai(proxy.url("openai"), proxy.token)
    batch = _openai_batch(client, 5)
    # The upload and the creation are two events of their own, billed nothing.
    requests = proxy.events(2)
    assert [(e.endpoint, e.price_source, e.cost_usd) for e in requests] == [
        ("other", "no_usage", Decimal(0)),
        ("other", "no_usage", Decimal(0)),
    ]
    tracked = _tracked(proxy, batch.id)
    assert (tracked.provider, tracked.customer, tracked.properties) == (
        "openai",
        "acme",
        {"feature": "nightly"},
    )
    assert tracked.token_id is not None and tracked.status == "tracking"

    # Not ended yet: looked at, nothing metered, looked at again a minute later.
    _poll(proxy, batch.id)
    tracked.refresh_from_db()
    assert (tracked.status, tracked.attempts, _items(proxy)) == ("tracking", 1, [])
    assert timedelta(seconds=50) < tracked.next_check_at - datetime.now(UTC) <= timedelta(minutes=1)

    proxy.fake.app.batches.complete(
        batch.id, errored={"item-3"}, expired={"item-4"}, usage=OPENAI_USAGE
    )
    _poll(proxy, batch.id)
    tracked.refresh_from_db()
    assert (tracked.status, tracked.items_metered, tracked.last_error) == ("metered", 5, "")
    items = _items(proxy)
    assert [(e.status, e.outcome, e.price_source) for e in items] == [
        (200, "ok", "catalog"),
        (200, "ok", "catalog"),
        (200, "ok", "catalog"),
        (400, "upstream_error", "no_usage"),
        (408, "upstream_error", "no_usage"),
    ]
    for event in items[:3]:
        assert (event.model, event.endpoint, event.service_tier) == (
            "gpt-4o-mini",
            "chat",
            "batch",
        )
        assert (event.input_tokens, event.output_tokens) == (2000, 400)
        assert event.cost_usd == OPENAI_ITEM_COST
    for event in items:
        assert event.customer.external_id == "acme"
        assert event.properties == {"feature": "nightly"}
        assert event.token_id == tracked.token_id
    assert [e.cost_usd for e in items[3:]] == [Decimal(0), Decimal(0)]

    # A second read of the results (a worker that died before marking the batch) and the
    # client's own downloads through Costr store no item twice.
    TrackedBatch.objects.for_org(proxy.organization).filter(pk=tracked.pk).update(status="tracking")
    _poll(proxy, batch.id)
    retrieved = client.batches.retrieve(batch.id)
    output = client.files.content(retrieved.output_file_id).content.splitlines()
    errors = client.files.content(retrieved.error_file_id).content.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output + errors) == [
        f"item-{index}" for index in range(5)
    ]
    events = proxy.events(7)  # upload, create, retrieve, two downloads + 5 items
    assert len(events) == 2 + 3 + 5
    assert [e.request_id for e in _items(proxy)] == [e.request_id for e in items]
    assert sum(e.cost_usd for e in events) == 3 * OPENAI_ITEM_COST

    # Costr polled with the organization's key; no Costr token ever reached the provider.
    polls = [r for r in proxy.fake.requests if "python-httpx" in (r.header("user-agent") or "")]
    assert polls and all(
        r.header("authorization") == f"Bearer {proxy.fake.keys['openai']}" for r in polls
    )
    _no_costr_token_reached(proxy)


def test_anthropic_results_url_leads_through_costr_and_items_are_metered_once(proxy, sdk):  # noqa: F811
    client = sdk.anthropic(proxy.url("anthropic"), proxy.token)
    batch = _anthropic_batch(client, ["a", "b", "c", "d"])
    assert batch.results_url is None
    proxy.fake.app.batches.complete(batch.id, errored={"b"}, canceled={"c"}, expired={"d"})

    through_costr = f"{proxy.base}/anthropic/v1/messages/batches/{batch.id}/results"
    assert client.messages.batches.retrieve(batch.id).results_url == through_costr
    listed = {b.id: b.results_url for b in client.messages.batches.list()}
    assert listed[batch.id] == through_costr
    results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    assert results == {"a": "succeeded", "b": "errored", "c": "canceled", "d": "expired"}

    # The results came through Costr with the provider key, never with the Costr token.
    downloads = [r for r in proxy.fake.requests if r.path.endswith(f"{batch.id}/results")]
    assert len(downloads) == 1
    assert downloads[0].header("x-api-key") or downloads[0].header("authorization")
    for name in ("x-api-key", "authorization"):
        value = downloads[0].header(name)
        if value is not None:
            assert value.removeprefix("Bearer ") == proxy.fake.keys["anthropic"]
    _no_costr_token_reached(proxy)

    _poll(proxy, batch.id)
    items = _items(proxy)
    assert [(e.status, e.outcome, e.price_source, e.cost_usd) for e in items] == [
        (200, "ok", "catalog", ANTHROPIC_ITEM_COST),
        (400, "upstream_error", "no_usage", Decimal(0)),
        (408, "upstream_error", "no_usage", Decimal(0)),
        (499, "upstream_error", "no_usage", Decimal(0)),
    ]
    succeeded = items[0]
    assert (succeeded.model, succeeded.endpoint, succeeded.service_tier) == (
        HAIKU,
        "messages",
        "batch",
    )
    assert (
        succeeded.input_tokens,
        succeeded.cached_input_tokens,
        succeeded.cache_write_tokens,
        succeeded.cache_write_1h_tokens,
        succeeded.output_tokens,
    ) == (1250, 1000, 200, 50, 300)
    assert {(e.customer.external_id, json.dumps(e.properties)) for e in items} == {
        ("acme", '{"feature": "nightly"}')
    }

    # Downloaded again after metering: still one event per item.
    assert len(list(client.messages.batches.results(batch.id))) == 4
    _poll(proxy, batch.id)  # already metered: not due, nothing read
    assert [e.request_id for e in _items(proxy)] == [e.request_id for e in items]
    assert _tracked(proxy, batch.id).items_metered == 4
    _no_costr_token_reached(proxy)


def test_provider_unreachable_during_a_poll_is_retried_and_nothing_is_lost(
    proxy,  # noqa: F811
    sdk,  # noqa: F811
    settings,
):
    client = sdk.anthropic(proxy.url("anthropic"), proxy.token)
    batch = _anthropic_batch(client, ["x", "y"])
    proxy.fake.app.batches.complete(batch.id)
    upstream = settings.COSTR_UPSTREAM_ANTHROPIC

    settings.COSTR_UPSTREAM_ANTHROPIC = "http://127.0.0.1:9"  # nothing listens there
    _poll(proxy, batch.id)
    tracked = _tracked(proxy, batch.id)
    assert (tracked.status, tracked.attempts) == ("tracking", 1)
    assert tracked.last_error == "the provider did not answer: ConnectError"
    assert _items(proxy) == []

    settings.COSTR_UPSTREAM_ANTHROPIC = upstream
    proxy.fake.app.batches.unavailable = 1  # back, but answers 503 once
    _poll(proxy, batch.id)
    tracked.refresh_from_db()
    assert (tracked.status, tracked.attempts, tracked.last_error) == (
        "tracking",
        2,
        "the provider answered 503",
    )
    # The wait doubles: two minutes after the second failure.
    wait = tracked.next_check_at - datetime.now(UTC)
    assert timedelta(seconds=110) < wait <= timedelta(minutes=2)

    _poll(proxy, batch.id)
    tracked.refresh_from_db()
    assert (tracked.status, tracked.items_metered) == ("metered", 2)
    assert [e.cost_usd for e in _items(proxy)] == [ANTHROPIC_ITEM_COST, ANTHROPIC_ITEM_COST]


def test_a_huge_results_file_is_read_as_a_stream(proxy, sdk):  # noqa: F811
    items, text_bytes = 4_000, 16_000
    client = sdk.openai(proxy.url("openai"), proxy.token)
    batch = _openai_batch(client, items)
    proxy.fake.app.batches.complete(batch.id, usage=OPENAI_USAGE, text_bytes=text_bytes)
    output = proxy.fake.app.batches.files[client.batches.retrieve(batch.id).output_file_id]
    file_bytes = sum(len(chunk) for chunk in output.chunks())
    assert file_bytes > items * text_bytes  # over 60 MB

    before = _resident_bytes(reset_peak=True)
    _poll(proxy, batch.id)
    grown = _peak_resident_bytes() - before
    assert _tracked(proxy, batch.id).items_metered == items
    # Never the file whole: a line and a group of records at a time. The process's peak
    # resident memory grew by far less than the file (measured: a few MB for 66 MB).
    assert grown < file_bytes / 4, (grown, file_bytes)
    stored = UsageEvent.objects.for_org(proxy.organization).filter(request_id__startswith="batch_")
    assert stored.count() == items
    assert sum(stored.values_list("cost_usd", flat=True)) == items * OPENAI_ITEM_COST


def test_security_page_says_how_batches_are_metered_with_the_figures_in_force(client):
    from django.urls import reverse

    from apps.usage import batch_polling, batches

    html = client.get(reverse("security")).content.decode()
    first = round(batches.FIRST_CHECK_AFTER.total_seconds() / 60)
    longest = round(batch_polling.BACKOFF_MAX.total_seconds() / 60)
    assert f"{first} minute after its creation" in html
    assert f"doubling up to {longest} minutes" in html
    assert f"for at most {batch_polling.TRACKING_LIMIT.days} days" in html
    assert "<code>results_url</code> is rewritten to the same path through Costr" in html
    assert "custom id" in html and "never stored" in html
