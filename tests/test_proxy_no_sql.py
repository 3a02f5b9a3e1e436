"""No database query on the proxy's request path once its cache is warm.

Every query made anywhere in the process is recorded with the thread that made it, while
proxied requests of every provider, streamed and not, go through Costr's ASGI application to a
fake provider. Only the background writers may query: the usage writer, and the flusher of
last-use times (both write in bulk, off the request path). A query from the event loop that
serves the requests, or from a worker thread it hands sync code to, shows up under another
thread's name.

The application is called in process (the SDKs' HTTP clients on an ASGI transport) rather than
behind a second server: the proxy's pooled upstream client belongs to one event loop, and the
proxy suite's server already runs one in this process.
"""

import asyncio
import contextlib
import threading

import httpx2
import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.db.backends.utils import CursorWrapper

from apps.proxy import upstream
from apps.usage.metering import sink

pytestmark = pytest.mark.django_db(transaction=True)

PROVIDERS = ("openai", "anthropic", "google")
BACKGROUND_WRITERS = {"usage-writer", "keycache-last-used"}
MESSAGES = [{"role": "user", "content": "Hi"}]


class QueryLog:
    """(thread name, what) for every query and every new connection, from every thread."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.active = False

    def note(self, what: str) -> None:
        if self.active:
            with self._lock:
                self.entries.append((threading.current_thread().name, what))

    @contextlib.contextmanager
    def recording(self):
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def threads(self) -> set[str]:
        with self._lock:
            return {thread for thread, _ in self.entries}


@pytest.fixture
def query_log(monkeypatch):
    """Wraps the two methods every Django cursor runs SQL through, at class level so that every
    connection of every thread is seen, and notes each new connection too (a backend may run
    setup statements on its raw cursor)."""
    log = QueryLog()
    execute, executemany = CursorWrapper._execute, CursorWrapper._executemany

    def noted_execute(self, sql, params, *args):
        log.note(sql)
        return execute(self, sql, params, *args)

    def noted_executemany(self, sql, param_list, *args):
        log.note(sql)
        return executemany(self, sql, param_list, *args)

    def noted_connection(sender, connection, **kwargs):
        log.note(f"connect {connection.alias}")

    monkeypatch.setattr(CursorWrapper, "_execute", noted_execute)
    monkeypatch.setattr(CursorWrapper, "_executemany", noted_executemany)
    connection_created.connect(noted_connection, weak=False)
    yield log
    connection_created.disconnect(noted_connection)


@pytest.fixture
def costr(fake_provider, settings, monkeypatch):
    """(organization, base URL, token): an organization holding the fake's keys, with Costr's
    upstreams on the fake and a token cache that outlives the test."""
    from apps.accounts.tests.factories import OrganizationFactory
    from apps.keys import services

    organization = OrganizationFactory()
    for provider in PROVIDERS:
        setattr(settings, f"COSTR_UPSTREAM_{provider.upper()}", fake_provider.url)
        services.provider_key_create(
            organization=organization,
            provider=provider,
            key=fake_provider.keys[provider],
            actor=None,
        )
    created = services.proxy_token_create(
        organization=organization, name="no-sql", scopes=["proxy"], actor=None
    )
    settings.COSTR_KEYCACHE_TTL_SECONDS = 60
    # The pooled client belongs to the event loop that made it: this test's loop makes its own.
    monkeypatch.setattr(upstream, "_client", None)
    yield organization, f"http://costr.test/p/{organization.slug}", created.plaintext
    sink.flush(timeout=10)


async def _requests(base: str, token: str, when_warm) -> int:
    """One warm-up request, then ``when_warm()``, then one request of every provider, streamed
    and not; the number of requests made after the warm-up."""
    import anthropic
    import openai
    from google import genai
    from google.genai import types

    from costr.asgi import application

    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=application), timeout=30)
    try:
        openai_client = openai.AsyncOpenAI(
            base_url=f"{base}/openai/v1", api_key=token, max_retries=0, http_client=http
        )
        await openai_client.models.list()
        await when_warm()

        await openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        stream = await openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        assert [chunk async for chunk in stream]
        anthropic_client = anthropic.AsyncAnthropic(
            base_url=f"{base}/anthropic", api_key=token, max_retries=0, http_client=http
        )
        call = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": MESSAGES}
        await anthropic_client.messages.create(**call)
        async with anthropic_client.messages.stream(**call) as events:
            await events.get_final_message()
        google_client = genai.Client(
            api_key=token,
            http_options=types.HttpOptions(
                base_url=f"{base}/google",
                api_version="v1beta",
                retry_options=types.HttpRetryOptions(attempts=1),
                httpx_async_client=http,
            ),
        ).aio
        await google_client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
        chunks = await google_client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Hi"
        )
        assert [chunk async for chunk in chunks]
        return 6
    finally:
        await http.aclose()
        await upstream.close_client()


def test_a_warm_proxy_makes_no_query_outside_the_background_writers(costr, query_log):
    from apps.usage.models import UsageEvent

    organization, base, token = costr

    async def start_recording():
        # The warm-up's own record is written before the window opens.
        await asyncio.to_thread(sink.flush, 10)
        query_log.active = True

    try:
        count = asyncio.run(_requests(base, token, start_recording))
        # The application has handed over every record when its response returns.
        assert sink.flush(timeout=10)
    finally:
        query_log.active = False

    assert query_log.threads() <= BACKGROUND_WRITERS, query_log.entries
    # The writer's inserts were seen, from its own thread: the log does reach other threads.
    assert "usage-writer" in query_log.threads()
    events = list(UsageEvent.objects.for_org(organization).order_by("id"))
    assert len(events) == 1 + count
    assert all(event.outcome == "ok" and event.input_tokens for event in events[1:])


def test_the_query_log_catches_a_query_from_any_other_thread(query_log):
    from apps.keys.models import ProxyToken

    def stray_query():
        try:
            ProxyToken.objects.unscoped(reason="a deliberate stray query").count()
        finally:
            connection.close()

    with query_log.recording():
        thread = threading.Thread(target=stray_query, name="not-a-writer")
        thread.start()
        thread.join(timeout=10)

    assert "not-a-writer" in query_log.threads()
    assert not query_log.threads() <= BACKGROUND_WRITERS
