"""The embedded default and the production guard rails."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run_with_settings(settings_module, extra_env, tmp_path, code=None):
    """Import Django in a fresh interpreter, as a server would, with only the given environment."""
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": settings_module,
        "COSTR_VAR_DIR": str(tmp_path / "var"),
        **extra_env,
    }
    code = code or "import django; django.setup()"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )


PRODUCTION_ENV = {
    "SECRET_KEY": "x" * 60,
    "DATABASE_URL": "postgres://x@127.0.0.1/x",
    "COSTR_ENCRYPTION_KEYS": "k1:" + "A" * 43 + "=",
}


@pytest.mark.parametrize("missing", ["SECRET_KEY", "COSTR_ENCRYPTION_KEYS", "DATABASE_URL"])
def test_production_refuses_to_start_without_its_secrets(tmp_path, missing):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}

    result = _run_with_settings("costr.settings.production", env, tmp_path)

    assert result.returncode != 0
    assert f"{missing} must be set" in result.stderr


def test_production_turns_debug_off_and_secures_cookies(tmp_path):
    env = {**PRODUCTION_ENV, "DEBUG": "True"}
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS > 0)"
    )
    result = _run_with_settings("costr.settings.production", env, tmp_path, code)

    assert result.stdout.split() == ["False", "True", "True", "True"], result.stderr


def test_embedded_mode_generates_a_private_secret_key_once(tmp_path):
    first = _run_with_settings("costr.settings.local", {}, tmp_path)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "var" / "secret_key"
    value = key_file.read_text()

    second = _run_with_settings("costr.settings.local", {}, tmp_path)

    assert second.returncode == 0
    assert key_file.read_text() == value
    assert len(value.strip()) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_embedded_mode_uses_sqlite_under_var_and_eager_celery(tmp_path):
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DATABASES['default']['NAME'], s.CELERY_TASK_ALWAYS_EAGER, "
        "s.CACHES['default']['BACKEND'])"
    )
    result = _run_with_settings("costr.settings.local", {}, tmp_path, code)

    name, eager, cache = result.stdout.split()
    assert name == str(tmp_path / "var" / "costr.sqlite3")
    assert eager == "True"
    assert cache.endswith("LocMemCache")


@pytest.mark.parametrize("path", ["/healthz"])
def test_health_check_answers_before_django(path):
    import asyncio

    from costr.asgi import application

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    asyncio.run(application(scope, receive, send))

    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b'{"status":"ok"}'
