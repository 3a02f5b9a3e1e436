"""A running Costr (its real ASGI app under uvicorn) in front of the fake provider.

Both servers live for the whole session; each test gets a fresh organization with the fake's
keys stored in the vault and a proxy token. Tests that use these fixtures need committed data
(the server answers from other threads), hence ``transactional_db``.
"""

from dataclasses import dataclass

import pytest

from apps.keys.tests.factories import anthropic_key, google_key, openai_key


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
        import time

        from apps.usage import sink
        from apps.usage.models import UsageEvent

        deadline = time.monotonic() + 10
        while True:
            assert sink.flush(timeout=10), "the usage writer did not catch up"
            events = list(UsageEvent.objects.for_org(self.organization).order_by("timestamp", "id"))
            if len(events) >= expected or time.monotonic() > deadline:
                return events
            time.sleep(0.02)


@pytest.fixture(scope="session")
def fake_provider():
    from tests.fakes.provider import FakeProvider

    keys = {
        "openai_key": openai_key(),
        "anthropic_key": anthropic_key(),
        "google_key": google_key(),
    }
    with FakeProvider(**keys) as fake:
        yield fake


@pytest.fixture(scope="session")
def costr_server(fake_provider, django_db_setup, django_db_blocker):
    from django.test import override_settings

    from costr.asgi import application
    from tests.asgi_server import ThreadedServer

    upstreams = {
        "COSTR_UPSTREAM_OPENAI": fake_provider.url,
        "COSTR_UPSTREAM_ANTHROPIC": fake_provider.url,
        "COSTR_UPSTREAM_GOOGLE": fake_provider.url,
    }
    # The server's threads reach the test database as any other client would.
    with (
        override_settings(**upstreams),
        ThreadedServer(application, lifespan="on") as server,
        django_db_blocker.unblock(),
    ):
        yield server


@pytest.fixture
def proxy(costr_server, fake_provider, transactional_db):
    from apps.accounts.tests.factories import OrganizationFactory
    from apps.keys import services
    from apps.usage import sink

    organization = OrganizationFactory()
    for provider in ("openai", "anthropic", "google"):
        services.provider_key_create(
            organization=organization,
            provider=provider,
            key=fake_provider.keys[provider],
            actor=None,
        )
    created = services.proxy_token_create(
        organization=organization, name="e2e", scopes=["proxy"], actor=None
    )
    fake_provider.clear()
    yield ProxySetup(
        organization=organization,
        token=created.plaintext,
        base=f"{costr_server.url}/p/{organization.slug}",
        fake=fake_provider,
    )
    sink.flush(timeout=10)
