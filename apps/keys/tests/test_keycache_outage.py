"""The key cache through a Redis outage, on a redis-server of this test's own
(``tests.outage.RedisServer``; the shared Redis is never stopped): the invalidation subscriber
logs the outage once and resubscribes by itself, and last-use times noted meanwhile are kept
until they can be delivered."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
import redis

from apps.keys import keycache, services, tasks
from apps.keys.models import ProviderKey, ProxyToken
from apps.keys.tests.factories import openai_key
from tests.outage import ROOT, RedisServer, child_env, wait_until

# A limit on hanging, not a performance threshold.
RECOVERY_TIMEOUT = 60.0
# How long Redis stays down: several of the subscriber's attempts to reconnect.
OUTAGE_SECONDS = 5.0


@pytest.fixture
def this_process_only_publishes(monkeypatch):
    """This process revokes; the process under test is a child with a subscriber of its own."""
    monkeypatch.setattr(keycache, "_subscriber_started", True)


def _subscribers(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return dict(client.pubsub_numsub(keycache.INVALIDATION_CHANNEL)).get(
            keycache.INVALIDATION_CHANNEL.encode(), 0
        )
    except redis.RedisError:
        return 0
    finally:
        client.close()


# A proxy process's view of one token: resolved once (which starts the subscriber), then asked
# again and again until it is refused.
WATCHER = textwrap.dedent(
    """
    import sys, time
    import django
    django.setup()
    from apps.keys import keycache
    token_hash = sys.argv[1]
    assert keycache.resolve(token_hash) is not None
    print("resolved", flush=True)
    while keycache.resolve(token_hash) is not None:
        time.sleep(0.05)
    print("refused", flush=True)
    """
)


@pytest.mark.django_db(transaction=True)
def test_the_subscriber_logs_an_outage_once_and_hears_revocations_again_after_it(
    org, settings, redis_server, this_process_only_publishes, tmp_path
):
    created = services.proxy_token_create(organization=org, name="t", scopes=["proxy"], actor=None)
    log = tmp_path / "watcher.log"
    # The child trusts its cache for an hour: only a message it hears can make it refuse in time.
    env = child_env(settings, REDIS_URL=redis_server.url, COSTR_KEYCACHE_TTL_SECONDS="3600")
    env["HOME"] = os.environ.get("HOME", str(ROOT))
    with open(log, "wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", WATCHER, services.token_hash(created.plaintext)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert child.stdout.readline().strip() == "resolved", log.read_text()
        wait_until(lambda: _subscribers(redis_server) == 1, timeout=RECOVERY_TIMEOUT)

        redis_server.stop()
        time.sleep(OUTAGE_SECONDS)  # the outage lasts; the child keeps serving from its cache
        redis_server.start()
        wait_until(
            lambda: _subscribers(redis_server) == 1,
            timeout=RECOVERY_TIMEOUT,
            message=log.read_text,
        )
        settings.REDIS_URL = redis_server.url
        services.proxy_token_revoke(token=created.token, actor=None)

        assert child.stdout.readline().strip() == "refused", log.read_text()
    finally:
        child.kill()
        child.wait()

    text = log.read_text()
    warnings = [line for line in text.splitlines() if " WARNING costr.keys.keycache " in line]
    # Once when it began, once when it ended; not once per attempt, and no tracebacks.
    assert len(warnings) == 2, text
    assert "does not answer (ConnectionError)" in warnings[0]
    assert "subscribed to Redis again" in warnings[1]
    assert "Traceback" not in text


@pytest.fixture
def used(org, settings, redis_server, this_process_only_publishes):
    settings.REDIS_URL = redis_server.url
    services.provider_key_create(organization=org, provider="openai", key=openai_key(), actor=None)
    created = services.proxy_token_create(organization=org, name="t", scopes=["proxy"], actor=None)
    resolved = keycache.resolve(services.token_hash(created.plaintext))
    _flush_into_the_void(redis_server)
    yield resolved
    _flush_into_the_void(redis_server)


def _flush_into_the_void(server: RedisServer) -> None:
    """Deliver whatever this process still holds to the test's own Redis and forget it there,
    so no test sees another's last-use times."""
    if server.process is None:
        server.start()
    keycache.flush_uses()
    client = redis.Redis.from_url(server.url)
    client.delete(keycache.LAST_USED_REDIS_KEY)
    client.close()


def _last_used(org):
    return (
        ProxyToken.objects.for_org(org).get().last_used_at,
        ProviderKey.objects.for_org(org).get().last_used_at,
    )


@pytest.mark.django_db
def test_last_use_noted_while_redis_is_down_reaches_the_database_once_it_is_back(
    org, redis_server, used
):
    redis_server.stop()
    before = time.time()
    keycache.record_use(used, "openai")

    with pytest.raises(redis.ConnectionError):
        keycache.flush_uses()  # what the flusher thread meets every 30 s during the outage

    redis_server.start()
    keycache.flush_uses()
    assert tasks.last_used_flush() == 2  # beat's task, as it runs every minute

    token_used, key_used = _last_used(org)
    assert token_used.timestamp() >= before and key_used.timestamp() >= before


@pytest.mark.django_db
def test_a_time_held_back_never_replaces_a_later_one_from_another_process(org, redis_server, used):
    redis_server.stop()
    before = time.time()
    keycache.record_use(used, "openai")
    with pytest.raises(redis.ConnectionError):
        keycache.flush_uses()
    redis_server.start()
    # Meanwhile another process, with a later use of the same token, flushed first.
    later = time.time() + 60
    name = f"token:{used.token_id}"
    client = redis.Redis.from_url(redis_server.url)
    client.hset(keycache.LAST_USED_REDIS_KEY, name, repr(later))

    keycache.flush_uses()

    delivered = client.hgetall(keycache.LAST_USED_REDIS_KEY)
    client.close()
    assert float(delivered[name.encode()]) == later
    # The key's time, which nobody wrote meanwhile, is the one held back.
    key_name = f"key:{used.provider_keys['openai'].secret_id}"
    assert float(delivered[key_name.encode()]) >= before
