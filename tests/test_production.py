"""The production shape, built and run as the Dockerfile and the Procfile say.

There is a Docker client but no engine on the machines that run this suite, so the Dockerfile's
build steps run here as commands (collectstatic and the deploy checks under
``costr.settings.production``), and the Procfile's processes run as child processes: ``release``
(migrations) on a fresh PostgreSQL database, ``web`` (gunicorn with uvicorn workers), the usage
writer, the Celery worker and beat, all with Redis. Then a page renders with its hashed static
files, and requests through the proxy become usage events in PostgreSQL by way of the Redis
stream and the writer.
"""

import base64
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import psycopg
import pytest
import redis
import websockets.sync.client

from tests.outage import ROOT, free_port, wait_until

VENV_BIN = Path(sys.executable).parent
PROCFILE = ROOT / "Procfile"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def _server_url() -> str:
    """The maintenance database of this run's PostgreSQL server (the environment's
    DATABASE_URL's server, else the local one)."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        return _with_database(url, "postgres")
    url = "postgres://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 and DATABASE_URL unset")
    return url


@pytest.fixture(scope="module")
def database():
    """A fresh, empty PostgreSQL database for this module, dropped afterwards."""
    server = _server_url()
    name = f"costr_production_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def redis_db_url():
    """Redis on a database of its own, emptied before and after (Celery's queues live there)."""
    base = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    url = re.sub(r"/\d*$", "", base.rstrip("/")) + "/11"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("REDIS_URL"):
            raise
        pytest.skip("no Redis on 127.0.0.1:6379 and REDIS_URL unset")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def _production_env(**extra: str) -> dict[str, str]:
    """What a deployment sets, and nothing from this test process's own environment."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    env = {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "DJANGO_SETTINGS_MODULE": "costr.settings.production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "COSTR_ENCRYPTION_KEYS": f"k1:{key}",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "INFO",
    }
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    env.update(extra)
    return env


def _procfile() -> dict[str, str]:
    processes = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            processes[name.strip()] = command.strip()
    return processes


def _dockerfile_collectstatic_env() -> dict[str, str]:
    """The variables the Dockerfile's collectstatic step sets, read from the Dockerfile."""
    text = DOCKERFILE.read_text()
    step = re.search(r"RUN (SECRET_KEY=.*?)python manage.py collectstatic", text, re.S)
    assert step, "the Dockerfile no longer runs collectstatic"
    words = shlex.split(step.group(1).replace("\\\n", " "))
    return dict(word.split("=", 1) for word in words)


def _run(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


class Process:
    """One Procfile process, run through a shell as a process manager would run it."""

    def __init__(self, command: str, env: dict[str, str], log: Path):
        self.log = log
        self._handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            cwd=ROOT,
            env=env,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM, as a platform stops a process, then its exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise
        finally:
            self._handle.close()


def test_the_dockerfile_build_steps_pass_with_production_settings(tmp_path):
    env = _production_env(**_dockerfile_collectstatic_env(), STATIC_ROOT=str(tmp_path / "static"))
    _run([str(VENV_BIN / "python"), "manage.py", "collectstatic", "--noinput"], env)
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())["paths"]
    # Every asset the pages name is in the manifest, with a content hash in its name.
    for asset in (
        "css/costr.css",
        "js/costr.js",
        "js/charts.js",
        "vendor/chartjs/chart.umd.min.js",
    ):
        stem, suffix = asset.rsplit(".", 1)
        assert re.fullmatch(rf"{re.escape(stem)}\.[0-9a-f]{{12}}\.{suffix}", manifest[asset])

    deploy_env = _production_env(
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    _run(
        [str(VENV_BIN / "python"), "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        deploy_env,
    )


def test_the_procfile_processes_serve_pages_and_meter_requests(
    database, redis_db_url, fake_provider, tmp_path
):
    processes = _procfile()
    assert {"release", "web", "usage_writer", "worker", "beat"} <= processes.keys()
    port = free_port()
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    env = _production_env(
        DATABASE_URL=database,
        REDIS_URL=redis_db_url,
        PORT=str(port),
        WEB_CONCURRENCY="2",
        STATIC_ROOT=str(tmp_path / "static"),
        COSTR_UPSTREAM_OPENAI=fake_provider.url,
        # The image's writable volume (beat's schedule, the usage spool).
        COSTR_VAR_DIR=str(var_dir),
        COSTR_USAGE_SPOOL_DIR=str(var_dir / "spool"),
        # Plain HTTP on loopback: the platform's TLS terminator is not part of this test.
        SECURE_SSL_REDIRECT="False",
        # Above uvicorn's own 16 MiB default: the worker must apply Costr's bound.
        COSTR_PROXY_MAX_WS_FRAME_BYTES=str(20 * 1024 * 1024),
    )
    python = str(VENV_BIN / "python")
    _run([python, "manage.py", "collectstatic", "--noinput"], env)
    _run(["/bin/sh", "-c", f"exec {processes['release']}"], env)

    _run([python, "manage.py", "createorg", "acme", "--owner-email", "founder@acme.test"], env)
    _run(
        [python, "manage.py", "addproviderkey", "acme", "openai", "--key-stdin"],
        env,
        input=fake_provider.keys["openai"],
    )
    created = _run([python, "manage.py", "createtoken", "acme", "--scope", "proxy"], env)
    token = created.stdout.strip().splitlines()[-1]

    running = {
        name: Process(processes[name], env, tmp_path / f"{name}.log")
        for name in ("web", "usage_writer", "worker", "beat")
    }
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy():
            assert running["web"].alive(), running["web"].output()
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=90, message=running["web"].output)

        # A page renders under the manifest storage and its hashed assets are served.
        page = httpx.get(f"{base}/login/", timeout=10)
        assert page.status_code == 200, page.text[:2000]
        stylesheet = re.search(r'href="(/static/css/costr\.[0-9a-f]{12}\.css)"', page.text)
        assert stylesheet, page.text[:2000]
        asset = httpx.get(base + stylesheet.group(1), timeout=10)
        assert asset.status_code == 200
        assert asset.content == (ROOT / "static/css/costr.css").read_bytes()

        client = openai.OpenAI(base_url=f"{base}/p/acme/openai/v1", api_key=token, max_retries=0)
        request_ids = {}
        for index in range(12):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Hello {index}"}],
                extra_headers={"X-Costr-Customer": f"customer-{index % 3}"},
            )
            completion = raw.parse()
            request_ids[raw.headers["x-costr-request-id"]] = (
                f"customer-{index % 3}",
                completion.usage.prompt_tokens,
                completion.usage.completion_tokens,
            )
        with client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Stream"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            chunks = list(stream)
        usage = chunks[-1].usage
        streamed_id = stream.response.headers["x-costr-request-id"]
        request_ids[streamed_id] = (None, usage.prompt_tokens, usage.completion_tokens)

        # The web workers write nothing themselves: the events arrive through Redis and the
        # writer process.
        def stored():
            with psycopg.connect(database) as connection:
                return connection.execute(
                    "SELECT e.request_id, c.external_id, e.input_tokens, e.output_tokens,"
                    " e.cost_usd, e.outcome, e.status"
                    " FROM usage_usageevent e LEFT JOIN usage_customer c"
                    " ON c.id = e.customer_id"
                ).fetchall()

        wait_until(
            lambda: len(stored()) >= len(request_ids),
            timeout=60,
            message=lambda: running["usage_writer"].output(),
        )
        rows = {row[0]: row[1:] for row in stored()}
        assert rows.keys() == request_ids.keys()
        for request_id, (customer, input_tokens, output_tokens) in request_ids.items():
            stored_customer, stored_input, stored_output, cost, outcome, status = rows[request_id]
            assert (stored_customer, stored_input, stored_output) == (
                customer,
                input_tokens,
                output_tokens,
            )
            assert (outcome, status) == ("ok", 200)
            assert cost is not None and cost > 0

        # A WebSocket message larger than uvicorn's default bound, within Costr's, relayed both
        # ways by the Procfile's web worker.
        message = os.urandom(17 * 1024 * 1024)
        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{port}/p/acme/openai/v1/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {token}", "X-Fake-Ws-Echo": "1"},
            max_size=None,
            open_timeout=10,
        ) as socket:
            socket.send(message)
            assert socket.recv(timeout=30) == message

        # The Celery worker answers on the broker; beat has started its schedule.
        wait_until(
            lambda: " ready." in running["worker"].output() or not running["worker"].alive(),
            timeout=90,
            message=running["worker"].output,
        )
        ping = _run(["/bin/sh", "-c", "exec celery --app costr inspect ping --timeout 10"], env)
        assert "pong" in ping.stdout
        wait_until(
            lambda: list(var_dir.glob("celerybeat-schedule*")),
            timeout=60,
            message=running["beat"].output,
        )
        assert running["beat"].alive(), running["beat"].output()
    finally:
        statuses = {name: process.stop() for name, process in running.items()}
    # Each stops cleanly on SIGTERM, as on a deploy.
    assert statuses["web"] == 0, running["web"].output()
    assert statuses["usage_writer"] == 0, running["usage_writer"].output()
