"""Production only tightens the base settings; it refuses to start with embedded-mode secrets."""

from django.core.exceptions import ImproperlyConfigured

from costr.env import env
from costr.settings.base import *  # noqa: F403

if not env.str("SECRET_KEY", default=""):
    raise ImproperlyConfigured("SECRET_KEY must be set in production (a long random string).")
if not env.str("COSTR_ENCRYPTION_KEYS", default=""):
    raise ImproperlyConfigured(
        "COSTR_ENCRYPTION_KEYS must be set in production: 'id:<base64 of 32 random bytes>', e.g. "
        "python -c \"import base64,os;print('k1:'+base64.b64encode(os.urandom(32)).decode())\""
    )
if not env.str("DATABASE_URL", default=""):
    raise ImproperlyConfigured("DATABASE_URL must be set in production (postgres://…).")

DEBUG = False
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
if not SECURE_HSTS_PRELOAD:
    # Preloading is the operator's choice (leaving the browsers' list takes months), so
    # `check --deploy --fail-level WARNING`, run in CI, does not ask for it.
    SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, "security.W021"]  # noqa: F405
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
