"""Embedded mode for a newcomer: SQLite under var/, no Redis.

DEBUG is off unless asked for (``DEBUG=1 make run``): a newcomer meets Costr's own 404 and 500
pages, not Django's debug pages, and the debug pages stay one variable away for development.
"""

from costr.env import env
from costr.settings.base import *  # noqa: F403

DEBUG = env.bool("DEBUG", default=False)
# WhiteNoise serves static files straight from the source folders, so no collectstatic is needed
# (with DEBUG off too); with DEBUG on it also picks up files changed while the server runs.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
