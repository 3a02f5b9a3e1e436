"""Real outages for tests of what survives them: a database connection that can be cut, a Redis
server that can be stopped and started again, a PostgreSQL cluster of a test's own that can be
restarted and frozen, and the environment a child process (a usage writer) needs to reach the
test database. No mocks: the code under test meets a refused connection, a reset socket, a
server that went away or stopped answering, a missing database file, exactly as in production.
"""

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, *, timeout: float = 60.0, interval: float = 0.05, message=""):
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` (a limit on how
    long a test may hang, not a performance threshold). ``message`` may be a callable (e.g. a
    child's log, read when the wait fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(text or f"timed out waiting for {predicate}")
        time.sleep(interval)


def database_url(settings_dict: dict, *, host: str | None = None, port: int | None = None) -> str:
    """A DATABASE_URL for the database a test runs on (pytest-django's test database)."""
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or "postgres"
    password = settings_dict.get("PASSWORD")
    auth = f"{user}:{password}" if password else user
    host = host or settings_dict.get("HOST") or "127.0.0.1"
    port = port or settings_dict.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{settings_dict['NAME']}"


def child_env(settings, **extra: str) -> dict[str, str]:
    """Environment for a ``manage.py`` child that shares this test's settings and database."""
    from django.db import connection

    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "costr.settings.test",
        "SECRET_KEY": settings.SECRET_KEY,
        "COSTR_ENCRYPTION_KEYS": settings.COSTR_ENCRYPTION_KEYS,
        "DATABASE_URL": database_url(connection.settings_dict),
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


def use_usage_stream(settings, redis_url: str, spool_dir: Path) -> str:
    """Switch this process's usage sink to the Redis mode, on a stream no other test uses."""
    stream = f"costr-test:usage:{uuid.uuid4().hex}"
    settings.COSTR_USAGE_REDIS_URL = redis_url
    settings.COSTR_USAGE_STREAM = stream
    settings.COSTR_USAGE_SPOOL_DIR = str(spool_dir)
    return stream


def drop_usage_stream(redis_url: str, stream: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
    try:
        client.delete(stream, f"{stream}:dead-letter")
    except redis.RedisError:
        pass
    finally:
        client.close()


def usage_writer_env(settings, **extra: str) -> dict[str, str]:
    """``child_env`` plus the usage stream settings of this process (see use_usage_stream)."""
    stream_settings = {
        "COSTR_USAGE_REDIS_URL": settings.COSTR_USAGE_REDIS_URL,
        "COSTR_USAGE_STREAM": settings.COSTR_USAGE_STREAM,
        "COSTR_USAGE_SPOOL_DIR": str(settings.COSTR_USAGE_SPOOL_DIR),
    }
    return child_env(settings, **{**stream_settings, **extra})


class ChildProcess:
    """``python manage.py …`` in its own process, output to a file (no pipe to fill up)."""

    def __init__(self, args: list[str], *, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_handle = open(log, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        wait_until(
            lambda: text in self.output() or self.process.poll() is not None,
            timeout=timeout,
            message=self.output,
        )
        assert text in self.output(), self.output()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log_handle.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


class TcpRelay:
    """A TCP port that forwards to ``target`` while up and refuses connections while down.

    ``down()`` also resets every connection open through it, as a database restart or a network
    cut would.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        # shutdown() before close(): a thread blocked in accept() or recv() on a socket keeps it
        # alive (and listening) through a bare close(); shutdown wakes it.
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class DatabaseOutage:
    """The test database as a child process reaches it, through a path that can be cut.

    PostgreSQL: through a ``TcpRelay`` (down: connection refused, open connections reset).
    SQLite: through a symlinked directory (down: the link is gone, so the file cannot be opened).
    """

    def __init__(self, settings_dict: dict) -> None:
        self.settings_dict = settings_dict
        self.sqlite = settings_dict["ENGINE"].endswith("sqlite3")
        if self.sqlite:
            self._scratch = Path(tempfile.mkdtemp(prefix="costr-db-outage-"))
            self._link = self._scratch / "db"
            real = Path(settings_dict["NAME"]).resolve()
            self._target = real.parent
            self.url = f"sqlite:///{self._link / real.name}"
        else:
            host = settings_dict.get("HOST") or "127.0.0.1"
            self.relay = TcpRelay(host, int(settings_dict.get("PORT") or 5432))
            self.url = database_url(settings_dict, host="127.0.0.1", port=self.relay.port)

    def up(self) -> None:
        if self.sqlite:
            self._link.symlink_to(self._target, target_is_directory=True)
        else:
            self.relay.up()

    def down(self) -> None:
        if self.sqlite:
            self._link.unlink(missing_ok=True)
        else:
            self.relay.down()

    def close(self) -> None:
        self.down()
        if self.sqlite:
            shutil.rmtree(self._scratch, ignore_errors=True)


class RedisServer:
    """A real redis-server of its own on a free port, with an append-only file, so it can be
    stopped (the sink then meets a refused connection) and started again with its data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def answers():
            try:
                return client.ping()
            except redis.RedisError:
                return False

        wait_until(answers, timeout=20, message="redis-server did not start")
        client.close()

    def stop(self) -> None:
        """SIGTERM: Redis shuts down cleanly, its AOF complete."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.process = None


class PostgresCluster:
    """A PostgreSQL cluster of its own (``initdb`` into a temporary directory, a free port, trust
    authentication), so a test can stop, restart and freeze the very server its processes use.
    The shared server on 5432 is never touched.

    initdb refuses to run as root, so the cluster belongs to the ``postgres`` OS user when the
    tests run as root. ``pause()`` freezes the postmaster and every backend (SIGSTOP), which is
    what a stalled host or a network that drops packets looks like to a client: connections stay
    open and nothing answers.
    """

    def __init__(self) -> None:
        # Its own directory under the system temp dir: the postgres user cannot enter pytest's
        # (root-only) temporary directories.
        self.directory = Path(tempfile.mkdtemp(prefix="costr-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = free_port()
        self.bin = self._binaries()
        self._owner = "postgres" if os.geteuid() == 0 else None
        self._paused: list[int] = []

    @staticmethod
    def _binaries() -> Path:
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3])
        )
        if not found:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        return found[-1].parent

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._owner:
            command = ["runuser", "-u", self._owner, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=self.directory
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def create(self) -> "PostgresCluster":
        if self._owner:
            shutil.chown(self.directory, user=self._owner)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            # No socket file in a shared directory: TCP on 127.0.0.1 only.
            "unix_socket_directories": f"'{self.directory}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "16MB",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        return self.start()

    def start(self) -> "PostgresCluster":
        self._run("pg_ctl", "--pgdata", str(self.data), "--log", str(self.log), "--wait", "start")
        return self

    def stop(self) -> None:
        """Fast shutdown: open transactions roll back, every client's connection is cut."""
        self.resume()
        self._run("pg_ctl", "--pgdata", str(self.data), "--mode", "fast", "--wait", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def _processes(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, walwriter, …)."""
        postmaster = self.postmaster_pid()
        children = subprocess.run(
            [shutil.which("pgrep") or "pgrep", "-P", str(postmaster)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        return [postmaster, *(int(pid) for pid in children)]

    def pause(self) -> None:
        """SIGSTOP the postmaster first (no new backend forks), then every child."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)
            self._paused.append(pid)

    def resume(self) -> None:
        paused, self._paused = self._paused, []
        for pid in reversed(paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, FileNotFoundError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        return self.create()

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()
