"""PostgreSQL restarted, stopped and frozen under a running Costr, on a cluster of this module's
own (``tests.outage.PostgresCluster``; the shared server is never touched).

The processes are real: the proxy is ``uvicorn costr.asgi:application`` in its own process,
in front of the fake provider, with ``DATABASE_URL`` on the throwaway cluster; in the Redis mode
``manage.py run_usage_writer`` runs beside it. What is checked is what DESIGN.md promises:
Costr's database trouble never blocks a request that could be forwarded, Costr recovers by
itself without a restart (Promise 5), and every forwarded request is exactly one usage event
(Promise 6).
"""

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import environ
import httpx
import psycopg
import pytest
from django.db import InterfaceError, OperationalError, connections, transaction

from costr.db import run_outside_request
from tests.outage import ROOT, ChildProcess, PostgresCluster, RedisServer, free_port, wait_until

# How long a test may wait for recovery before it fails: a limit on hanging, not a
# performance threshold (recovery itself takes well under a second).
RECOVERY_TIMEOUT = 20.0
# A request to a proxy whose database is frozen must be answered; one that takes longer than
# this is hanging on the database.
FROZEN_REQUEST_TIMEOUT = 15.0
# The proxy's key cache TTL in these tests: short, so entries expire during an outage and the
# proxy has to go back to the database for them.
KEYCACHE_TTL = "1"

SEED = """
import json
from apps.accounts.services import user_signup
from apps.keys.services import provider_key_create, proxy_token_create

seeded = {}
for slug in ("fault-a", "fault-b"):
    owner, organization = user_signup(
        email=f"owner@{slug}.test", password=None, organization_name=slug, organization_slug=slug
    )
    provider_key_create(organization=organization, provider="openai", key=KEY, actor=None)
    seeded[slug] = {
        role: proxy_token_create(
            organization=organization, name=f"{role}-{n}", scopes=["proxy"], actor=None
        ).plaintext
        for n, role in enumerate(ROLES)
    }
print(json.dumps(seeded))
"""
# Each test uses its own tokens, so one test's revocations and cache never meet another's.
ROLES = [
    f"{test}-{role}"
    for test in ("restart", "pause", "writer-embedded", "writer-redis")
    for role in ("known", "new", "doomed")
]


@dataclass
class Costr:
    """The cluster with Costr's schema and two organizations, and how to run Costr on it."""

    cluster: PostgresCluster
    url: str
    env: dict[str, str]
    tokens: dict[str, dict[str, str]]

    def events(self) -> list[str]:
        """Request ids of the stored usage events, once per row (a duplicate would show)."""
        with psycopg.connect(self.url, connect_timeout=5) as db:
            rows = db.execute("SELECT request_id FROM usage_usageevent").fetchall()
        return [row[0] for row in rows]

    def describe(self, request_ids: list[str]) -> list[tuple]:
        with psycopg.connect(self.url, connect_timeout=5) as db:
            return db.execute(
                "SELECT request_id, token_id, status, outcome, timestamp FROM usage_usageevent"
                " WHERE request_id = ANY(%s) ORDER BY timestamp",
                [request_ids],
            ).fetchall()

    def revoke(self, token: str) -> None:
        """Revoke behind the proxy's back: only its own lookup can learn of it."""
        import hashlib

        digest = hashlib.sha256(token.encode()).hexdigest()
        with psycopg.connect(self.url, connect_timeout=5) as db:
            db.execute(
                "UPDATE keys_proxytoken SET revoked_at = now() WHERE token_hash = %s", [digest]
            )


def _python(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def costr(fake_provider):
    cluster = PostgresCluster().create()
    try:
        # A name of this run's own: a process left from another run that reaches this port
        # (ports are reused) finds no database of that name, rather than writing into it.
        name = f"costr_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(cluster.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        url = cluster.url(name)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(ROOT)),
            "DJANGO_SETTINGS_MODULE": "costr.settings.test",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "COSTR_ENCRYPTION_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "DATABASE_URL": url,
            "COSTR_UPSTREAM_OPENAI": fake_provider.url,
            "COSTR_KEYCACHE_TTL_SECONDS": KEYCACHE_TTL,
            "LOG_LEVEL": "INFO",
        }
        _python(["manage.py", "migrate", "--noinput"], env)
        seed = f"KEY = {fake_provider.keys['openai']!r}\nROLES = {ROLES!r}\n{SEED}"
        seeded = _python(["manage.py", "shell", "-c", seed], env)
        tokens = json.loads(seeded.stdout.strip().splitlines()[-1])
        yield Costr(cluster=cluster, url=url, env=env, tokens=tokens)
    finally:
        cluster.destroy()


class Proxy:
    """``uvicorn costr.asgi:application`` in its own process, on the cluster."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self._log_handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "costr.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--lifespan",
                "on",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
        wait_until(self._healthy, timeout=60, message=self.output)

    def _healthy(self) -> bool:
        assert self.process.poll() is None, self.output()
        try:
            return self.client.get(f"{self.base}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def output(self) -> str:
        """The end of the server's log, for a failure message."""
        return self.log_text()[-6000:]

    def chat(self, org: str, token: str, *, timeout: float | None = None) -> httpx.Response:
        return self.client.post(
            f"{self.base}/p/{org}/openai/v1/chat/completions",
            headers={"authorization": f"Bearer {token}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
            timeout=timeout or self.client.timeout,
        )

    def stop(self) -> None:
        """SIGTERM: the lifespan shutdown flushes the usage sink, as on a deploy."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_handle.close()


@dataclass
class Traffic:
    """Requests sent in a loop from a thread, and what came back."""

    proxy: Proxy
    tokens: list[tuple[str, str]]  # (org slug, token)
    forwarded: list[str] = field(default_factory=list)  # request ids of answered requests
    refused: list[tuple[int, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Traffic":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for org, token in self.tokens:
                try:
                    response = self.proxy.chat(org, token)
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                    continue
                _note(response, self.forwarded, self.refused)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)


def _note(response: httpx.Response, forwarded: list[str], refused: list) -> None:
    """A response with Costr's request id was forwarded upstream (and must be one event);
    anything else was refused by Costr before forwarding."""
    if response.status_code == 200:
        forwarded.append(response.headers["x-costr-request-id"])
    else:
        refused.append((response.status_code, response.headers.get("x-costr-error", "")))


def _status(proxy: Proxy, org: str, token: str, forwarded: list[str], **kwargs) -> int:
    """One request's status; its request id joins ``forwarded`` if it was forwarded."""
    response = proxy.chat(org, token, **kwargs)
    _note(response, forwarded, [])
    return response.status_code


def _served(proxy: Proxy, org: str, token: str, forwarded: list[str]) -> bool:
    return _status(proxy, org, token, forwarded) == 200


def _all_stored_once(costr: Costr, forwarded: list[str], proxy: Proxy):
    def check():
        stored = costr.events()
        assert len(stored) == len(set(stored)), "an event was stored twice"
        return set(forwarded) <= set(stored)

    wait_until(check, timeout=RECOVERY_TIMEOUT, message=proxy.output)
    stored = costr.events()
    assert len(set(forwarded)) == len(forwarded)
    extra = sorted(set(stored) - set(forwarded))
    assert extra == [], costr.describe(extra)
    assert sorted(stored) == sorted(forwarded)


@pytest.fixture
def proxy_for(costr, tmp_path):
    started = []

    def start(**extra: str) -> Proxy:
        proxy = Proxy({**costr.env, **extra}, tmp_path / f"proxy-{len(started)}.log")
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def _tokens(costr: Costr, test: str, role: str) -> list[tuple[str, str]]:
    return [(org, costr.tokens[org][f"{test}-{role}"]) for org in ("fault-a", "fault-b")]


def _no_events_yet(costr: Costr) -> None:
    """Each test counts its own events: the tables start empty for it."""
    with psycopg.connect(costr.url, connect_timeout=5) as db:
        db.execute("DELETE FROM usage_usageevent")
        db.execute("DELETE FROM usage_customer")
        db.commit()


def test_a_postgresql_restart_under_load_heals_without_restarting_the_proxy(costr, proxy_for):
    _no_events_yet(costr)
    proxy = proxy_for()
    known = _tokens(costr, "restart", "known")
    new = _tokens(costr, "restart", "new")
    doomed = _tokens(costr, "restart", "doomed")
    forwarded: list[str] = []
    for org, token in known + doomed:
        assert _served(proxy, org, token, forwarded), proxy.output()

    traffic = Traffic(proxy, known).start()
    wait_until(lambda: len(traffic.forwarded) >= 4, timeout=RECOVERY_TIMEOUT)
    costr.cluster.restart()
    try:
        # Tokens the proxy never saw: their first lookup is on the restarted server.
        for org, token in new:
            wait_until(
                lambda org=org, token=token: _served(proxy, org, token, forwarded),
                timeout=RECOVERY_TIMEOUT,
                message=proxy.output,
            )
        # Tokens it knew are checked again, not served from what it knew before the restart:
        # revoked now, they are refused as soon as their cache entry expires.
        for _, token in doomed:
            costr.revoke(token)
        for org, token in doomed:
            wait_until(
                lambda org=org, token=token: _status(proxy, org, token, forwarded) == 401,
                timeout=RECOVERY_TIMEOUT,
                message=proxy.output,
            )
        count = len(traffic.forwarded)
        wait_until(lambda: len(traffic.forwarded) >= count + 4, timeout=RECOVERY_TIMEOUT)
    finally:
        traffic.stop()

    # Known tokens were served throughout (fail-open), and nothing was lost.
    assert traffic.refused == [] and traffic.failures == [], (traffic.refused, traffic.failures)
    _all_stored_once(costr, forwarded + traffic.forwarded, proxy)


def test_a_frozen_postgresql_does_not_stop_known_tokens(costr, proxy_for):
    _no_events_yet(costr)
    proxy = proxy_for()
    known = _tokens(costr, "pause", "known")
    new = _tokens(costr, "pause", "new")
    forwarded: list[str] = []
    for org, token in known:
        assert _served(proxy, org, token, forwarded), proxy.output()

    costr.cluster.pause()
    try:
        # Every cache entry expires: each known token now needs a lookup, which cannot answer.
        time.sleep(float(KEYCACHE_TTL) + 0.5)
        for _ in range(3):
            for org, token in known:
                status = _status(proxy, org, token, forwarded, timeout=FROZEN_REQUEST_TIMEOUT)
                assert status == 200, proxy.output()
        # A token never seen cannot be checked: refused with Costr's mark, so an SDK falls
        # back to the provider, rather than left hanging.
        for org, token in new:
            response = proxy.chat(org, token, timeout=FROZEN_REQUEST_TIMEOUT)
            assert response.status_code == 503, response.text
            assert response.headers["x-costr-error"] == "costr_unavailable"
    finally:
        costr.cluster.resume()

    for org, token in new:
        wait_until(
            lambda org=org, token=token: _served(proxy, org, token, forwarded),
            timeout=RECOVERY_TIMEOUT,
            message=proxy.output,
        )
    _all_stored_once(costr, forwarded, proxy)


@pytest.mark.parametrize("mode", ["embedded", "redis"])
def test_the_usage_writer_keeps_its_batch_while_postgresql_is_down(
    costr, proxy_for, mode, tmp_path
):
    """Embedded: the proxy's own writer thread stores usage. Redis: the proxy appends to a
    stream and ``run_usage_writer`` stores it. Either holds its batch through the outage and
    stores it, once, when the database is back."""
    _no_events_yet(costr)
    extra: dict[str, str] = {}
    redis_server = writer = None
    if mode == "redis":
        redis_server = RedisServer(tmp_path / "redis")
        redis_server.start()
        extra = {
            "COSTR_USAGE_REDIS_URL": redis_server.url,
            "COSTR_USAGE_STREAM": f"costr-test:usage:{uuid.uuid4().hex}",
            "COSTR_USAGE_SPOOL_DIR": str(tmp_path / "spool"),
        }
    try:
        proxy = proxy_for(**extra)
        if mode == "redis":
            writer = ChildProcess(
                ["run_usage_writer", "--max-backoff", "0.5"],
                env={**costr.env, **extra},
                log=tmp_path / "writer.log",
            )
            writer.wait_for_output("reading")
        known = _tokens(costr, f"writer-{mode}", "known")
        forwarded: list[str] = []
        for org, token in known:
            assert _served(proxy, org, token, forwarded), proxy.output()
        # The writer has written once, so it holds a connection the outage will kill.
        wait_until(lambda: set(forwarded) <= set(costr.events()), timeout=RECOVERY_TIMEOUT)

        # What each writer logs when it keeps a batch because the database is down.
        writer_log, kept = (
            (writer.output, "unreachable") if writer else (proxy.log_text, "not delivered")
        )
        failures_before = writer_log().count(kept)
        costr.cluster.stop()
        try:
            for _ in range(5):
                for org, token in known:
                    assert _served(proxy, org, token, forwarded), proxy.output()
            # The writer has met the outage with a batch in hand (it says so in its log).
            wait_until(
                lambda: writer_log().count(kept) > failures_before,
                timeout=RECOVERY_TIMEOUT,
                message=writer_log,
            )
        finally:
            costr.cluster.start()

        _all_stored_once(costr, forwarded, proxy)
        if writer is not None:
            writer.signal(signal.SIGTERM)
            assert writer.wait(30) == 0, writer.output()
    finally:
        if writer is not None:
            writer.kill()
        if redis_server is not None:
            redis_server.stop()


EXPIRED_EVENT = """
from datetime import UTC, datetime, timedelta
from apps.accounts.models import Organization
from apps.usage.tests.factories import store_usage

organization = Organization.objects.get(slug="fault-a")
long_ago = (datetime.now(UTC) - timedelta(days=organization.retention_days + 30)).isoformat()
store_usage(organization, timestamp=long_ago, request_id=REQUEST_ID)
print(organization.pk)
"""


def test_a_celery_task_that_meets_a_stopped_database_runs_again_when_it_is_back(costr, tmp_path):
    """A real worker (Celery's Django fixup closes connections around each task) takes the
    retention purge while PostgreSQL is stopped: the task is queued again, not lost, and the
    expired event is gone once the database is back."""
    from celery import Celery

    _no_events_yet(costr)
    request_id = f"req_expired_{uuid.uuid4().hex}"
    seeded = _python(
        ["manage.py", "shell", "-c", f"REQUEST_ID = {request_id!r}\n{EXPIRED_EVENT}"], costr.env
    )
    organization_id = int(seeded.stdout.strip().splitlines()[-1])
    assert costr.events() == [request_id]

    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    log = tmp_path / "worker.log"
    with open(log, "wb") as log_handle:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "--app",
                "costr",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            # The settings a deployment's worker has (the test settings run every task eagerly,
            # which a worker that re-queues a task must not).
            env={
                **costr.env,
                "DJANGO_SETTINGS_MODULE": "costr.settings.local",
                "DEBUG": "False",
                "REDIS_URL": redis_server.url,
            },
            stdout=log_handle,
            stderr=subprocess.STDOUT,
        )
    sender = Celery(broker=redis_server.url)
    try:
        wait_until(lambda: "ready" in log.read_text(), timeout=60, message=log.read_text)
        costr.cluster.stop()
        try:
            sender.send_task("usage.purge_expired", args=[organization_id])
            wait_until(
                lambda: "retry: Retry in" in log.read_text(),
                timeout=RECOVERY_TIMEOUT,
                message=log.read_text,
            )
        finally:
            costr.cluster.start()
        wait_until(lambda: costr.events() == [], timeout=RECOVERY_TIMEOUT, message=log.read_text)
    finally:
        sender.close()
        worker.terminate()
        worker.wait(30)
        redis_server.stop()


# The helper itself, in this process, on a connection to the throwaway cluster.


@pytest.fixture
def cluster_connection(costr, django_db_blocker):
    """A connection alias on the cluster, with the given CONN_MAX_AGE, and a table to write to."""
    alias = "database-faults"
    configured = []

    def connect(max_age: int | None = 0):
        connections.settings[alias] = {
            **connections.settings["default"],
            **environ.Env.db_url_config(costr.url),
            "OPTIONS": {},
            "CONN_MAX_AGE": max_age,
        }
        configured.append(alias)
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS fault_writes (id serial PRIMARY KEY)")
            cursor.execute("TRUNCATE fault_writes")
        return connection

    with django_db_blocker.unblock():
        yield connect
        if configured:
            connections[alias].close()
            del connections.settings[alias]
            delattr(connections._connections, alias)


def _rows(connection) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM fault_writes")
        return cursor.fetchone()[0]


def _write_and_die(connection, attempts: list[int]) -> int:
    """Insert a row (autocommit: it is committed), then lose the connection on the first try."""
    attempts.append(1)
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO fault_writes DEFAULT VALUES")
        if len(attempts) == 1:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        cursor.execute("SELECT 42")
        return cursor.fetchone()[0]


@pytest.mark.parametrize("max_age", [0, None], ids=["closed-after-use", "persistent"])
def test_work_after_a_restart_gets_a_new_connection_before_it_starts(
    costr, cluster_connection, max_age
):
    connection = cluster_connection(max_age)
    connection.ensure_connection()
    costr.cluster.restart()  # the connection above is now dead, and nothing has noticed

    def write() -> int:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO fault_writes DEFAULT VALUES RETURNING id")
            return cursor.fetchone()[0]

    # Not idempotent, so never retried: it succeeds only if the dead connection was replaced
    # before its statement was sent.
    assert run_outside_request(write, idempotent=False, using=connection.alias) > 0
    assert _rows(connection) == 1


def test_idempotent_work_that_loses_its_connection_runs_once_more(cluster_connection):
    connection = cluster_connection()
    attempts: list[int] = []

    result = run_outside_request(
        lambda: _write_and_die(connection, attempts), idempotent=True, using=connection.alias
    )

    assert (result, len(attempts)) == (42, 2)
    assert _rows(connection) == 2  # what a second run costs, hence idempotent work only


def test_other_work_that_reached_the_server_is_not_run_again(cluster_connection):
    connection = cluster_connection()
    attempts: list[int] = []

    with pytest.raises(OperationalError):
        run_outside_request(
            lambda: _write_and_die(connection, attempts), idempotent=False, using=connection.alias
        )

    assert len(attempts) == 1
    assert _rows(connection) == 1  # committed although its connection died: not written twice


def test_an_error_that_leaves_the_connection_alive_is_not_retried(cluster_connection):
    connection = cluster_connection()
    attempts: list[int] = []

    def too_slow() -> None:
        attempts.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = '10ms'")
            cursor.execute("SELECT pg_sleep(5)")

    with pytest.raises(OperationalError, match="statement timeout"):
        run_outside_request(too_slow, idempotent=True, using=connection.alias)
    assert len(attempts) == 1


def test_inside_a_transaction_the_connection_is_left_to_the_caller(cluster_connection):
    connection = cluster_connection()
    attempts: list[int] = []

    with transaction.atomic(using=connection.alias):
        opened = connection.connection
        with pytest.raises((OperationalError, InterfaceError)):
            run_outside_request(
                lambda: _write_and_die(connection, attempts),
                idempotent=True,
                using=connection.alias,
            )
        # Neither closed before the work (with CONN_MAX_AGE 0 it would be) nor run again.
        assert connection.connection is opened
        assert len(attempts) == 1
        connection.set_rollback(True)
