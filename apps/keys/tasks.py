import functools

from celery import shared_task
from django.conf import settings

from apps.keys import keycache
from apps.keys.last_used import last_used_apply
from costr.db import TASK_RETRY_ON_CONNECTION_ERRORS, run_outside_request


@shared_task(
    name="keys.last_used_flush",
    **TASK_RETRY_ON_CONNECTION_ERRORS,
    time_limit=120,
    soft_time_limit=100,
)
def last_used_flush() -> int:
    """Apply the last-use times that proxy processes collected in Redis."""
    if not settings.REDIS_URL:
        return 0
    client = keycache._redis()
    with client.pipeline() as pipe:
        pipe.hgetall(keycache.LAST_USED_REDIS_KEY)
        pipe.delete(keycache.LAST_USED_REDIS_KEY)
        raw, _ = pipe.execute()
    uses = {name.decode(): float(when) for name, when in raw.items()}
    # The times are already gone from Redis: a task failed now would lose them, so a connection
    # lost mid-write is retried here (moving a time forward twice changes nothing).
    return run_outside_request(functools.partial(last_used_apply, uses), idempotent=True)
