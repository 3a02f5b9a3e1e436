"""A running Costr (its real ASGI app under uvicorn) in front of the fake provider.

Both servers live for the whole session; each test gets a fresh organization with the fake's
keys stored in the vault and a proxy token. The server answers from its own threads, so test
data must be committed: ``committed_db`` keeps it for a module and flushes the database after,
which is why a test never looks beyond its own organization.
"""

import asyncio
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop

PROVIDERS = ("openai", "anthropic", "google")


@dataclass
class ProxySetup:
    organization: object
    token: str
    base: str  # http://127.0.0.1:port/p/<slug>
    fake: object

    def url(self, provider: str) -> str:
        return {
            "openai": f"{self.base}/openai/v1",
            "anthropic": f"{self.base}/anthropic",
            "google": f"{self.base}/google",
        }[provider]

    def events(self, expected: int = 1):
        """The org's events, once ``expected`` of them are stored.

        The proxy hands a record over only after the client has its last byte, so a test that
        just finished reading may ask before the record exists: wait for it, within reason.
        """
        from apps.usage.metering import sink
        from apps.usage.models import UsageEvent

        deadline = time.monotonic() + 10
        while True:
            assert sink.flush(timeout=10), "the usage writer did not catch up"
            events = list(UsageEvent.objects.for_org(self.organization).order_by("timestamp", "id"))
            if len(events) >= expected or time.monotonic() > deadline:
                return events
            time.sleep(0.02)


def organization_with_token(fake, *, providers=PROVIDERS, scopes=("proxy",), expires_at=None):
    """A new organization holding the fake's key for each of ``providers``, and a token.

    Returns (organization, CreatedToken); the token's plaintext is ``created.plaintext``.
    """
    from apps.accounts.tests.factories import OrganizationFactory
    from apps.keys import services

    organization = OrganizationFactory()
    for provider in providers:
        services.provider_key_create(
            organization=organization, provider=provider, key=fake.keys[provider], actor=None
        )
    created = services.proxy_token_create(
        organization=organization,
        name="e2e",
        scopes=list(scopes),
        expires_at=expires_at,
        actor=None,
    )
    return organization, created


class SDKClients:
    """The official SDK clients, without retries, sharing one TLS context and one connection pool.

    Each SDK builds its own HTTP client with a freshly loaded certificate store, about 0.1 s a
    client, which would otherwise dominate a suite of short requests.
    """

    def __init__(self) -> None:
        import httpx
        import httpx2

        self.tls = ssl.create_default_context()
        self._sync = httpx2.Client(verify=self.tls, timeout=30)
        # Raw requests, for byte-level control; the SDKs use httpx2, these tests httpx.
        self.http = httpx.Client(verify=self.tls, timeout=30)

    def _async(self):
        import httpx2

        # Per client: an async pool belongs to the event loop that first used it.
        return httpx2.AsyncClient(verify=self.tls, timeout=30)

    def openai(self, base_url: str, api_key: str, *, asynchronous: bool = False):
        import openai

        if asynchronous:
            return openai.AsyncOpenAI(
                base_url=base_url, api_key=api_key, max_retries=0, http_client=self._async()
            )
        return openai.OpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, http_client=self._sync
        )

    def anthropic(self, base_url: str, api_key: str, *, asynchronous: bool = False):
        import anthropic

        if asynchronous:
            return anthropic.AsyncAnthropic(
                base_url=base_url, api_key=api_key, max_retries=0, http_client=self._async()
            )
        return anthropic.Anthropic(
            base_url=base_url, api_key=api_key, max_retries=0, http_client=self._sync
        )

    def google(self, base_url: str, api_key: str, *, api_version: str = "v1beta"):
        """A google-genai client; its async face is ``.aio``."""
        from google import genai
        from google.genai import types

        options = types.HttpOptions(
            base_url=base_url,
            api_version=api_version,
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_client=self._sync,
            httpx_async_client=self._async(),
            async_client_args={"ssl": self.tls},
        )
        return genai.Client(api_key=api_key, http_options=options)

    def close(self) -> None:
        self._sync.close()
        self.http.close()


@pytest.fixture(scope="session")
def sdk():
    clients = SDKClients()
    yield clients
    clients.close()


@pytest.fixture(scope="session")
def http(sdk):
    """A plain ``httpx.Client`` for raw requests."""
    return sdk.http


@pytest.fixture(scope="session")
def costr_server(fake_provider, django_db_setup, django_db_blocker):
    from django.test import override_settings

    from costr.asgi import application
    from costr.server import HttpToolsProtocol
    from tests.asgi_server import ThreadedServer

    upstreams = {
        "COSTR_UPSTREAM_OPENAI": fake_provider.url,
        "COSTR_UPSTREAM_ANTHROPIC": fake_provider.url,
        "COSTR_UPSTREAM_GOOGLE": fake_provider.url,
    }
    # The server's threads reach the test database as any other client would.
    with (
        override_settings(**upstreams),
        # Served as make run and the Procfile's worker serve it: Costr's protocol (head limits,
        # the provider's own date and server headers on relayed answers), uvicorn's defaults.
        ThreadedServer(
            application, lifespan="on", http=HttpToolsProtocol, server_header=True
        ) as server,
        django_db_blocker.unblock(),
    ):
        yield server
    # The token cache loads through asgiref's one worker thread for sync code, which keeps its
    # connection open; PostgreSQL will not drop the test database while it is.
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(scope="module")
def committed_db(costr_server, django_db_blocker):
    """Committed data for one module of end-to-end tests, flushed when the module is done.

    Flushing after every test instead (``transactional_db``) costs about 0.4 s a test on
    PostgreSQL, more than most of these tests take; each test works in an organization of its
    own, so tests in one module never meet each other's data.
    """
    from django.core.management import call_command
    from django.db import connection

    from apps.usage.metering import sink

    name = Path(str(connection.settings_dict["NAME"])).name
    if not name.startswith("test"):
        pytest.fail(f"refusing to write to {name!r}: pytest-django set up no test database")
    with django_db_blocker.unblock():
        yield
        sink.flush(timeout=10)
        call_command("flush", interactive=False, verbosity=0)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """pytest-django creates the test database only when a selected test is marked for it, and
    tests on ``committed_db`` are not: the first of them gets the mark (and a flush of its own)."""
    for item in items:
        if "committed_db" in item.fixturenames:
            if item.get_closest_marker("django_db") is None:
                item.add_marker(pytest.mark.django_db(transaction=True))
            return


@pytest.fixture
def make_organization(fake_provider, committed_db):
    """More organizations and tokens, for cases the ``proxy`` fixture's own does not cover:
    ``make_organization(providers=(), scopes=("read",), expires_at=…)``."""

    def make(**kwargs):
        return organization_with_token(fake_provider, **kwargs)

    return make


@pytest.fixture
def proxy(costr_server, fake_provider, committed_db):
    from apps.usage.metering import sink

    organization, created = organization_with_token(fake_provider)
    fake_provider.clear()
    yield ProxySetup(
        organization=organization,
        token=created.plaintext,
        base=f"{costr_server.url}/p/{organization.slug}",
        fake=fake_provider,
    )
    sink.flush(timeout=10)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Runs a coroutine to completion on a fresh loop of either kind (the workers run uvloop)."""

    def runner(coroutine):
        if request.param == "uvloop":
            return uvloop.run(coroutine)
        return asyncio.run(coroutine)

    return runner
