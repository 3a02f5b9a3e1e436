"""Every periodic task in one place, on crontab schedules, so what runs when is read in one file."""

BEAT_SCHEDULE: dict[str, dict] = {}
