"""Settings shared by every mode. Each variable's default is what the embedded mode needs."""

from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured

from costr.env import (
    BASE_DIR,
    VAR_DIR,
    env,
    generate_local_encryption_key,
    generate_secret_key,
    read_or_create_secret_file,
)
from costr.settings.celery import *  # noqa: F403
from costr.settings.stripe import *  # noqa: F403

SECRET_KEY = env.str("SECRET_KEY", default="") or read_or_create_secret_file(
    "secret_key", generate_secret_key
)
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# The keyring that wraps every stored secret: "id:base64,…", the first entry is primary. Without
# it, a key is generated once into var/ and every page that handles keys says so.
COSTR_ENCRYPTION_KEYS_GENERATED = not env.str("COSTR_ENCRYPTION_KEYS", default="")
COSTR_ENCRYPTION_KEYS = env.str("COSTR_ENCRYPTION_KEYS", default="") or read_or_create_secret_file(
    "encryption_keys", generate_local_encryption_key
)
# How long a worker trusts what it knows of a token before asking the database again; it bounds
# how long a revoked token keeps working on a worker that missed the invalidation message.
COSTR_KEYCACHE_TTL_SECONDS = env.float("COSTR_KEYCACHE_TTL_SECONDS", default=3.0)

# The proxy: where each provider lives, how long to wait for it, what it may be sent.
COSTR_UPSTREAM_OPENAI = env.str("COSTR_UPSTREAM_OPENAI", default="https://api.openai.com")
COSTR_UPSTREAM_ANTHROPIC = env.str("COSTR_UPSTREAM_ANTHROPIC", default="https://api.anthropic.com")
COSTR_UPSTREAM_GOOGLE = env.str(
    "COSTR_UPSTREAM_GOOGLE", default="https://generativelanguage.googleapis.com"
)
COSTR_UPSTREAM_CONNECT_TIMEOUT = env.float("COSTR_UPSTREAM_CONNECT_TIMEOUT", default=10.0)
COSTR_UPSTREAM_READ_TIMEOUT = env.float("COSTR_UPSTREAM_READ_TIMEOUT", default=600.0)
COSTR_PROXY_MAX_BODY_BYTES = env.int("COSTR_PROXY_MAX_BODY_BYTES", default=50 * 1024 * 1024)
# Request bodies up to this size are read whole before forwarding, to learn model and stream
# flag (and for the include_usage change); larger ones are streamed through unread.
COSTR_PROXY_INSPECT_BYTES = env.int("COSTR_PROXY_INSPECT_BYTES", default=4 * 1024 * 1024)
# After a client disconnects, how long the proxy keeps reading the upstream for its usage.
COSTR_PROXY_DRAIN_SECONDS = env.float("COSTR_PROXY_DRAIN_SECONDS", default=300.0)
# The most a compressed response body is decoded to for usage reading; past it the body still
# goes to the client as it came and the event gets no usage. 64 MiB holds every answer the SDKs
# ask for (the largest, a 2048-input embeddings batch in the SDKs' default base64, is ~34 MB)
# while a decompression bomb costs a worker at most ~0.3 s of CPU (measured), spread over many
# loop turns. costr/net/decoding.py bounds the work per chunk.
COSTR_PROXY_MAX_DECODED_BYTES = env.int("COSTR_PROXY_MAX_DECODED_BYTES", default=64 * 1024 * 1024)
# A slow client gets 408: the request head must be complete within the first timeout (held by
# costr.server's protocol), and each piece of the body arrive within the second.
COSTR_PROXY_HEADER_READ_TIMEOUT = env.float("COSTR_PROXY_HEADER_READ_TIMEOUT", default=30.0)
COSTR_PROXY_BODY_READ_TIMEOUT = env.float("COSTR_PROXY_BODY_READ_TIMEOUT", default=60.0)
# The largest WebSocket message the relay passes on, either way (OpenAI Realtime, Gemini Live); a
# larger one closes the session with 1009 on both sides. The ASGI server bounds what clients send
# too (uvicorn's --ws-max-size, 16 MiB by default): the smaller of the two holds.
COSTR_PROXY_MAX_WS_FRAME_BYTES = env.int("COSTR_PROXY_MAX_WS_FRAME_BYTES", default=16 * 1024 * 1024)

# Absolute origin used where no request is at hand (links printed by commands, e-mails).
COSTR_BASE_URL = env.str("COSTR_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")

# How long usage metadata is kept for a new organization (each org can change its own; the
# choices on the retention page run from 7 days to 2 years).
# Budgets (DESIGN.md "Budgets, limits and alerts"): how long a request waits for the budget
# store before it is treated as unavailable, and the spend-anomaly rule (a customer's spend
# today over FACTOR times its trailing 7-day daily mean, and over FLOOR_USD).
COSTR_BUDGET_STORE_TIMEOUT_SECONDS = env.float("COSTR_BUDGET_STORE_TIMEOUT_SECONDS", default=0.5)
COSTR_ANOMALY_FACTOR = env.float("COSTR_ANOMALY_FACTOR", default=3.0)
COSTR_ANOMALY_FLOOR_USD = env.float("COSTR_ANOMALY_FLOOR_USD", default=10.0)
# Alert webhooks and Slack: how long one delivery attempt may wait for an answer, and whether
# URLs may point at private, loopback or link-local addresses or use plain http (off: a
# webhook cannot be aimed at the deployment's own network; tests and self-hosters on a private
# network turn it on).
COSTR_WEBHOOK_TIMEOUT_SECONDS = env.float("COSTR_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = env.bool("COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS", default=False)
COSTR_DEFAULT_RETENTION_DAYS = env.int("COSTR_DEFAULT_RETENTION_DAYS", default=90)
if not 7 <= COSTR_DEFAULT_RETENTION_DAYS <= 730:
    raise ImproperlyConfigured("COSTR_DEFAULT_RETENTION_DAYS must be between 7 and 730 days.")
# Named as the hosting sub-processor on the DPA page; a self-hoster names their own provider.
COSTR_HOSTING_PROVIDER = env.str(
    "COSTR_HOSTING_PROVIDER", default="The operator of this deployment (self-hosted)"
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "apps.accounts",
    "apps.keys",
    "apps.usage",
    "apps.billing",
    "apps.budgets",
    "apps.reporting",
    "apps.demo",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a login refused for too many failures into the 429 page (django-axes).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "costr.urls"
WSGI_APPLICATION = "costr.wsgi.application"
ASGI_APPLICATION = "costr.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.accounts.context_processors.organizations",
                "apps.reporting.context_processors.period_links",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'costr.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and IMMEDIATE transactions let the web process and the usage writer share the file
    # without "database is locked" errors under normal load.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
# A Redis that stops answering (frozen, cut off) fails a cache call within a second, which the
# throttles then pass over (fail-open), instead of hanging the request.
REDIS_CACHE_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 1}
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "costr",
            "OPTIONS": REDIS_CACHE_OPTIONS,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Usage metering transport (apps/usage/sink.py, `manage.py run_usage_writer`). With a Redis URL
# the web process appends usage records to a Redis stream and never writes them to the database
# itself; with "" an in-process writer thread stores them (the embedded mode). Its own setting so
# the stream can live on a Redis that never evicts (noeviction, AOF) apart from a cache Redis.
COSTR_USAGE_REDIS_URL = env.str("COSTR_USAGE_REDIS_URL", default=REDIS_URL)
COSTR_USAGE_STREAM = env.str("COSTR_USAGE_STREAM", default="costr:usage")
# Where a web process appends records while Redis does not answer (one file per process, replayed
# into the stream when Redis is back); local to the host, so keep it on a persistent volume.
COSTR_USAGE_SPOOL_DIR = env.str("COSTR_USAGE_SPOOL_DIR", default=str(VAR_DIR / "spool"))
COSTR_USAGE_SPOOL_SEGMENT_BYTES = env.int(
    "COSTR_USAGE_SPOOL_SEGMENT_BYTES", default=64 * 1024 * 1024
)
# Usage records a web process keeps in memory waiting for the database (embedded) or Redis; past
# it they go to the spool above and are stored when the writer catches up. About 1 KB each.
COSTR_USAGE_QUEUE_MAX_RECORDS = env.int("COSTR_USAGE_QUEUE_MAX_RECORDS", default=10_000)

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "app"
LOGOUT_REDIRECT_URL = "landing"

# Abuse throttles (DESIGN.md, "Limits"), counted in Redis when REDIS_URL is set (shared by every
# process), in each process's memory otherwise; each answers 429 with Retry-After.
# Failed logins, per account (e-mail address) and per client address, by django-axes: past the
# limit, every login for that account or from that address is refused until the lockout ends.
COSTR_THROTTLE_LOGIN_FAILURES = env.int("COSTR_THROTTLE_LOGIN_FAILURES", default=10)
COSTR_THROTTLE_LOGIN_LOCKOUT_SECONDS = env.int("COSTR_THROTTLE_LOGIN_LOCKOUT_SECONDS", default=900)
# Password-reset requests (rates in the `limits` notation: "N/second|minute|hour|day"), per
# e-mail address asked for, existing or not, and per client address.
COSTR_THROTTLE_PASSWORD_RESET_PER_EMAIL = env.str(
    "COSTR_THROTTLE_PASSWORD_RESET_PER_EMAIL", default="3/hour"
)
COSTR_THROTTLE_PASSWORD_RESET_PER_ADDRESS = env.str(
    "COSTR_THROTTLE_PASSWORD_RESET_PER_ADDRESS", default="20/hour"
)
# Requests with an unknown, revoked, expired or malformed token, on the proxy and the API
# together, per client address; past it, that address is refused until the window allows more.
COSTR_THROTTLE_INVALID_TOKENS_PER_ADDRESS = env.str(
    "COSTR_THROTTLE_INVALID_TOKENS_PER_ADDRESS", default="30/minute"
)
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out account or address before any password is checked.
    "apps.accounts.throttling.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# The Django cache (Redis when configured), through axes' cache handler made to fail open.
AXES_HANDLER = "apps.accounts.throttling.FailOpenCacheHandler"
AXES_FAILURE_LIMIT = COSTR_THROTTLE_LOGIN_FAILURES
AXES_COOLOFF_TIME = timedelta(seconds=COSTR_THROTTLE_LOGIN_LOCKOUT_SECONDS)
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]  # each on its own, not the pair
AXES_USERNAME_FORM_FIELD = "username"
AXES_USERNAME_CALLABLE = "apps.accounts.throttling.login_account"
# The socket's peer (uvicorn's --proxy-headers sets it from a trusted proxy), never a header.
AXES_CLIENT_IP_CALLABLE = "apps.accounts.throttling.login_client_address"
AXES_LOCKOUT_CALLABLE = "apps.accounts.throttling.login_locked_out"
# A lockout lasts its window from the failure that reached the limit; attempts during it do not
# extend it, so the rightful owner can log in once it ends.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_ENABLE_ADMIN = False  # the cache handler keeps no rows to show
SILENCED_SYSTEM_CHECKS: list[str] = []

# Invitations are single-use and expire; the link carries a signed invitation id.
COSTR_INVITATION_MAX_AGE_DAYS = env.int("COSTR_INVITATION_MAX_AGE_DAYS", default=7)

EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Costr <no-reply@localhost>")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Token first: its WWW-Authenticate header is what a 401 carries.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.keys.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "apps.accounts.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Costr API",
    "DESCRIPTION": (
        "Reporting and ingest API for AI spend per customer.\n\n"
        "**Authentication.** Send a Costr token: `Authorization: Bearer costr_…`, with the "
        "`read` scope for reporting endpoints and to read budgets, the `manage` scope to create, "
        "change or delete budgets, and the `ingest` scope for `POST /api/v1/ingest/`. "
        "A person logged in to the dashboards may call the reporting endpoints with their "
        "session instead; API URLs name no organization, so they add `?org=<slug>` (needed "
        "only when they belong to more than one organization; an organization they are not a "
        "member of answers 404); changing budgets with a session needs the admin role.\n\n"
        "**Errors.** Every error has the body "
        '`{"error": {"code": "…", "message": "…", "details": …}}`; `details` is present for '
        "validation errors (field → messages) and a few others. Another organization's objects "
        "answer 404, as if they did not exist."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {
        "permission_denied": {"()": "costr.log_filters.PermissionDeniedWithoutTraceback"},
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        # Django's own: errors e-mailed to ADMINS when DEBUG is off.
        "mail_admins": {
            "level": "ERROR",
            "filters": ["require_debug_false"],
            "class": "django.utils.log.AdminEmailHandler",
        },
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # One line per event: Django gives its "django" logger a console handler of its own (with
        # DEBUG on), which printed every request warning a second time beside the root's; only
        # its mail to ADMINS is kept.
        "django": {"handlers": ["mail_admins"], "propagate": True},
        "django.request": {"filters": ["permission_denied"]},
        "django.db.backends": {"level": "INFO"},
        # httpx logs every request URL at INFO: on the proxy that is a line per request, and a
        # Gemini URL may carry the provider key in ?key=.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # The Stripe SDK logs every response body at DEBUG (customers' names and e-mails).
        "stripe": {"level": "WARNING"},
    },
}

DEFAULT_EXCEPTION_REPORTER_FILTER = "costr.debug.AlwaysSafeExceptionReporterFilter"

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
