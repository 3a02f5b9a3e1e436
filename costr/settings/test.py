"""Test settings: the same services as the environment names, fast hashing, mail kept in memory."""

import os
import tempfile
from pathlib import Path

from costr.settings.base import *  # noqa: F403

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
CELERY_TASK_ALWAYS_EAGER = True
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# The usage sink stays embedded even when REDIS_URL is set, so a test reads its events back after
# sink.flush(); the tests of the Redis transport set COSTR_USAGE_REDIS_URL themselves.
COSTR_USAGE_REDIS_URL = env.str("COSTR_USAGE_REDIS_URL", default="")  # noqa: F405
# A run's spooled or set-aside records never land in var/spool, where `make run` would replay
# them into the developer's own database.
COSTR_USAGE_SPOOL_DIR = env.str(  # noqa: F405
    "COSTR_USAGE_SPOOL_DIR",
    default=str(Path(tempfile.gettempdir()) / f"costr-test-spool-{os.getpid()}"),
)
if CACHES["default"]["BACKEND"].endswith("RedisCache"):  # noqa: F405
    CACHES["default"]["KEY_PREFIX"] = "costr-test"  # noqa: F405
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    # A file, not memory, so a second process (the cross-process cache test) sees the same data;
    # one per test run, so two runs side by side never share it.
    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": str(VAR_DIR / f"test-costr-{os.getpid()}.sqlite3")  # noqa: F405
    }
