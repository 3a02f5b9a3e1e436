"""Embedded mode for a newcomer: SQLite under var/, no Redis, debug pages on."""

from costr.env import env
from costr.settings.base import *  # noqa: F403

DEBUG = env.bool("DEBUG", default=True)
# WhiteNoise serves static files straight from the source folders, so no collectstatic is needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
