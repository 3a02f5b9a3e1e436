"""Celery settings. Without Redis, tasks run in the calling process (embedded mode)."""

from costr.env import VAR_DIR, env
from costr.schedule import BEAT_SCHEDULE

_redis_url = env.str("REDIS_URL", default="")

CELERY_BROKER_URL = _redis_url or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not _redis_url
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = 15 * 60
CELERY_TASK_SOFT_TIME_LIMIT = 14 * 60
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Every command to the broker gives up after a second (kombu's Redis transport waits forever by
# default), so a frozen Redis cannot hold a publish, and with it a request, indefinitely: a
# publish from a request (costr.tasks.enqueue_on_commit) fails within a few seconds and the
# work is left to its periodic sweep. Redis answers in milliseconds when it is well; the
# worker's BRPOP is read only once its reply has arrived, so this does not cut it short.
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = BEAT_SCHEDULE
# Beat's state beside Costr's other local state, never in the working directory (the image's
# /app is read-only to its user; var/ is its writable volume).
CELERY_BEAT_SCHEDULE_FILENAME = env.str(
    "CELERY_BEAT_SCHEDULE_FILENAME", default=str(VAR_DIR / "celerybeat-schedule")
)
