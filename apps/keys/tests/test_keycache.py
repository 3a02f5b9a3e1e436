import asyncio
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from apps.keys import keycache, services
from apps.keys.models import ProxyToken
from apps.keys.tests.factories import google_key, openai_key

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _fresh_cache():
    keycache._drop_local(None)
    yield
    keycache._drop_local(None)


def _token(org, **kwargs):
    created = services.proxy_token_create(
        organization=org, name="t", scopes=kwargs.pop("scopes", ["proxy"]), actor=None, **kwargs
    )
    return created.token, services.token_hash(created.plaintext)


def _no_sql(execute, sql, params, many, context):
    raise AssertionError(f"SQL on the hot path: {sql}")


@pytest.mark.django_db
def test_a_warm_cache_resolves_and_decrypts_without_any_sql(org):
    key = openai_key()
    services.provider_key_create(organization=org, provider="openai", key=key, actor=None)
    _, token_hash = _token(org)
    keycache.resolve(token_hash)

    with connection.execute_wrapper(_no_sql):
        resolved = keycache.resolve(token_hash)
        plaintext = keycache.provider_key_plaintext(resolved, "openai")

    assert (resolved.organization_id, resolved.organization_slug) == (org.pk, org.slug)
    assert resolved.scopes == {"proxy"}
    assert plaintext == key


@pytest.mark.django_db(transaction=True)  # the lookups run on a thread of their own
def test_requests_that_miss_together_share_one_lookup(org, monkeypatch):
    """When an entry expires under load every request for the token misses at once: they must
    wait for one database lookup, not queue one each behind the lookup thread."""
    token, token_hash = _token(org)
    loads = []

    def counted_load(wanted):
        loads.append(wanted)
        time.sleep(0.05)  # a lookup that takes a moment, so the misses overlap
        return real_load(wanted)

    real_load = keycache._load
    monkeypatch.setattr(keycache, "_load", counted_load)

    async def many():
        return await asyncio.gather(*(keycache.aresolve(token_hash) for _ in range(50)))

    resolved = asyncio.run(many())

    assert loads == [token_hash]
    assert {r.token_id for r in resolved} == {token.pk}
    # What the one lookup found is cached for the next request.
    assert keycache.resolve_known(token_hash).token_id == token.pk


@pytest.mark.django_db
def test_unknown_revoked_and_expired_tokens_never_resolve(org):
    assert keycache.resolve(services.token_hash("costr_not-a-real-token")) is None

    revoked, revoked_hash = _token(org)
    ProxyToken.objects.for_org(org).filter(pk=revoked.pk).update(revoked_at=timezone.now())
    assert keycache.resolve(revoked_hash) is None

    _, expired_hash = _token(org, expires_at=timezone.now() + timedelta(seconds=30))
    assert keycache.resolve(expired_hash) is not None
    ProxyToken.objects.for_org(org).filter(token_hash=expired_hash).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    keycache._drop_local(None)
    assert keycache.resolve(expired_hash) is None


@pytest.mark.django_db
def test_a_cached_token_stops_working_the_moment_it_expires(org, settings):
    settings.COSTR_KEYCACHE_TTL_SECONDS = 3600
    _, token_hash = _token(org, expires_at=timezone.now() + timedelta(seconds=30))
    resolved = keycache.resolve(token_hash)

    assert resolved.is_expired(timezone.now() + timedelta(seconds=31))
    assert not resolved.is_expired(timezone.now())


@pytest.mark.django_db
def test_a_key_added_later_is_seen_after_invalidation(org, django_capture_on_commit_callbacks):
    _, token_hash = _token(org)
    assert keycache.resolve(token_hash).provider_keys == {}

    with django_capture_on_commit_callbacks(execute=True):
        services.provider_key_create(
            organization=org, provider="google", key=google_key(), actor=None
        )

    assert set(keycache.resolve(token_hash).provider_keys) == {"google"}


@pytest.mark.django_db
def test_invalidating_one_org_keeps_the_others_cached(org, other_org):
    _, mine = _token(org)
    _, theirs = _token(other_org)
    keycache.resolve(mine)
    keycache.resolve(theirs)

    keycache._drop_local(org.pk)

    assert mine not in keycache._entries
    assert theirs in keycache._entries


WATCHER = textwrap.dedent(
    """
    import sys, time
    import django
    django.setup()
    from apps.keys import keycache
    token_hash = sys.argv[1]
    assert keycache.resolve(token_hash) is not None
    print("resolved", flush=True)
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        if keycache.resolve(token_hash) is None:
            print("refused", flush=True)
            sys.exit(0)
        time.sleep(0.05)
    print("still-resolving", flush=True)
    """
)


def _watch_revocation(org, settings, child_env):
    """Revoke a token while a second process holds it in its cache; what does that process see?"""
    token, token_hash = _token(org)
    db = connection.settings_dict
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "costr.settings.test",
        "SECRET_KEY": settings.SECRET_KEY,
        "COSTR_ENCRYPTION_KEYS": settings.COSTR_ENCRYPTION_KEYS,
        "DATABASE_URL": os.environ.get("DATABASE_URL", f"sqlite:///{db['NAME']}"),
        **child_env,
    }
    if db["ENGINE"].endswith("postgresql"):
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        )
    child = subprocess.Popen(
        [sys.executable, "-c", WATCHER, token_hash, "5"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "resolved", child.stderr.read()
        time.sleep(0.3)  # let the child's subscriber connect
        services.proxy_token_revoke(token=token, actor=None)
        return child.stdout.readline().strip()
    finally:
        child.kill()
        child.wait()


@pytest.mark.django_db(transaction=True)
def test_a_second_process_hears_a_revocation_through_redis(org, settings, monkeypatch, redis_url):
    monkeypatch.setattr(keycache, "_subscriber_started", True)  # this process only publishes

    # The child trusts its cache for an hour: only the message can make it refuse in time.
    outcome = _watch_revocation(
        org, settings, {"REDIS_URL": redis_url, "COSTR_KEYCACHE_TTL_SECONDS": "3600"}
    )

    assert outcome == "refused"


@pytest.mark.django_db(transaction=True)
def test_without_redis_the_ttl_bounds_a_revocation_in_another_process(org, settings):
    settings.REDIS_URL = ""

    outcome = _watch_revocation(org, settings, {"COSTR_KEYCACHE_TTL_SECONDS": "2"})

    assert outcome == "refused"


@pytest.fixture
def database_unreachable():
    """Point the default connection at a database that cannot be opened, then restore it."""

    def break_it():
        connection.close()
        if connection.vendor == "sqlite":
            connection.settings_dict["NAME"] = "/nonexistent/dir/costr.sqlite3"
        else:
            connection.settings_dict["PORT"] = 1

    saved = dict(connection.settings_dict)
    yield break_it
    connection.close()
    connection.settings_dict.update(saved)


@pytest.mark.django_db
def test_a_known_token_keeps_working_while_the_database_is_down(
    org, settings, database_unreachable
):
    settings.COSTR_KEYCACHE_TTL_SECONDS = 0.01
    key = openai_key()
    services.provider_key_create(organization=org, provider="openai", key=key, actor=None)
    _, token_hash = _token(org)
    _, never_seen = _token(org)
    keycache.resolve(token_hash)
    time.sleep(0.02)  # the entry's TTL is over: the next resolve must ask the database

    database_unreachable()
    resolved = keycache.resolve(token_hash)

    assert resolved.organization_slug == org.slug
    assert keycache.provider_key_plaintext(resolved, "openai") == key
    with pytest.raises(DatabaseError):
        keycache.resolve(never_seen)


@pytest.mark.django_db
def test_stale_entries_are_not_used_past_the_window(org, settings, database_unreachable):
    settings.COSTR_KEYCACHE_TTL_SECONDS = 0.01
    _, token_hash = _token(org)
    keycache.resolve(token_hash)
    expires, value = keycache._entries[token_hash]
    keycache._entries[token_hash] = (expires - keycache.STALE_IF_ERROR_SECONDS - 1, value)

    database_unreachable()

    with pytest.raises(DatabaseError):
        keycache.resolve(token_hash)
