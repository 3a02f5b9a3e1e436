"""Every periodic task in one place, on crontab schedules, so what runs when is read in one file."""

from celery.schedules import crontab

BEAT_SCHEDULE: dict[str, dict] = {
    "keys-last-used-flush": {"task": "keys.last_used_flush", "schedule": crontab(minute="*")},
}
