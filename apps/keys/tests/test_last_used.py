import time

import pytest

from apps.keys import keycache, last_used, services, tasks
from apps.keys.models import ProviderKey, ProxyToken
from apps.keys.tests.factories import openai_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def used(org):
    services.provider_key_create(organization=org, provider="openai", key=openai_key(), actor=None)
    created = services.proxy_token_create(organization=org, name="t", scopes=["proxy"], actor=None)
    keycache.drain_uses()
    resolved = keycache.resolve(services.token_hash(created.plaintext))
    return created.token, resolved


def _last_used(org):
    return (
        ProxyToken.objects.for_org(org).get().last_used_at,
        ProviderKey.objects.for_org(org).get().last_used_at,
    )


def test_use_is_counted_in_memory_and_written_only_by_a_flush(org, settings, used):
    settings.REDIS_URL = ""
    _, resolved = used
    before = time.time()

    keycache.record_use(resolved, "openai")

    assert _last_used(org) == (None, None)
    keycache.flush_uses()
    token_used, key_used = _last_used(org)
    assert token_used.timestamp() >= before and key_used.timestamp() >= before
    assert keycache.drain_uses() == {}


def test_an_older_time_never_moves_last_use_back(org, used):
    token, _ = used
    last_used.last_used_apply({f"token:{token.pk}": 2_000_000_000.0})

    assert last_used.last_used_apply({f"token:{token.pk}": 1_900_000_000.0}) == 0
    assert _last_used(org)[0].timestamp() == 2_000_000_000.0


def test_with_redis_the_periodic_task_applies_what_processes_collected(org, redis_url, used):
    _, resolved = used
    keycache._redis().delete(keycache.LAST_USED_REDIS_KEY)

    keycache.record_use(resolved, "openai")
    keycache.flush_uses()
    assert _last_used(org) == (None, None)  # collected, not yet applied
    assert tasks.last_used_flush.delay().get() == 2

    assert None not in _last_used(org)
    assert keycache._redis().hlen(keycache.LAST_USED_REDIS_KEY) == 0
