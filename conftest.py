"""Fixtures every suite shares: people, organizations and memberships in their three roles.

Imports stay inside the fixtures so that pure suites (provider parsers, the vault) also run
without Django.
"""

import pytest


def _membership(organization, role):
    from apps.accounts.tests.factories import MembershipFactory

    return MembershipFactory(organization=organization, role=role)


@pytest.fixture
def password():
    from apps.accounts.tests.factories import PASSWORD

    return PASSWORD


@pytest.fixture
def org(db):
    from apps.accounts.tests.factories import OrganizationFactory

    return OrganizationFactory()


@pytest.fixture
def other_org(db):
    from apps.accounts.tests.factories import OrganizationFactory

    return OrganizationFactory()


@pytest.fixture
def owner(org):
    return _membership(org, "owner").user


@pytest.fixture
def admin(org):
    return _membership(org, "admin").user


@pytest.fixture
def member(org):
    return _membership(org, "member").user


@pytest.fixture
def outsider(other_org):
    """An owner of another organization: signed in, but a stranger to ``org``."""
    return _membership(other_org, "owner").user


@pytest.fixture
def redis_url(settings):
    """A reachable Redis for tests of what only happens with Redis, set as ``REDIS_URL``.

    The environment's REDIS_URL (CI) or a local Redis on db 15. Without either the test is
    skipped, so ``make test`` still runs on a machine that has no Redis; with REDIS_URL set and
    Redis down, the test fails instead.
    """
    import os

    import redis

    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        if os.environ.get("REDIS_URL"):
            raise
        pytest.skip("no Redis on 127.0.0.1:6379 and REDIS_URL unset")
    settings.REDIS_URL = url
    return url


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of the test's own (tests.outage.RedisServer), to stop, freeze and start
    again; the shared one is never touched."""
    from tests.outage import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_provider():
    """The fake OpenAI/Anthropic/Gemini server, with keys that pass Costr's format checks."""
    from apps.keys.tests.factories import anthropic_key, google_key, openai_key
    from tests.fakes.provider import FakeProvider

    keys = {
        "openai_key": openai_key(),
        "anthropic_key": anthropic_key(),
        "google_key": google_key(),
    }
    with FakeProvider(**keys) as fake:
        yield fake


@pytest.fixture
def fake_stripe(settings):
    """A fresh fake Stripe on 127.0.0.1 per test (accounts, keys, request log), set as
    ``STRIPE_API_BASE``."""
    from tests.fakes.stripe import FakeStripe

    with FakeStripe() as fake:
        settings.STRIPE_API_BASE = fake.url
        yield fake


@pytest.fixture(autouse=True)
def _fresh_abuse_throttles():
    """Every test client comes from 127.0.0.1, and the abuse throttles count per address (in
    Redis, across runs): each test starts with no failed login or bad token counted against it."""
    from costr import throttle

    throttle.reset_all()
    from axes.handlers.proxy import AxesProxyHandler

    AxesProxyHandler.reset_attempts(ip_address="127.0.0.1")
    yield
