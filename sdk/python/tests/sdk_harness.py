"""A real Costr server as a child process (stopped and started again on the same port) in front
of the fake provider, which is also where direct calls go; an organization with a token of the
``proxy`` and ``ingest`` scopes; the SDK configured for it with a spool of the test's own.

Costr runs in its embedded mode on the test database, so its events are read back from there;
test data is committed (``transaction=True``) because the server is another process.
"""

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fakes.provider import FakeProvider
from tests.outage import ROOT, child_env, free_port, wait_until

SDK_ROOT = Path(__file__).resolve().parent.parent


class CostrProcess:
    """``uvicorn costr.asgi:application`` as ``make run`` serves it, on a port kept across
    restarts."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env, self.log = env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "costr.asgi:application",
                    "--port",
                    str(self.port),
                    "--http",
                    "costr.server:HttpToolsProtocol",
                    "--no-access-log",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

        def healthy():
            assert self.process.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=60, message=lambda: self.log.read_text())

    def stop(self) -> None:
        """SIGTERM: the lifespan's shutdown stores the usage it still holds; the port is then
        closed (connection refused), as when Costr is down."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        self.process = None


@dataclass
class Setup:
    costr: CostrProcess
    organization: object
    token: str
    fake: object  # Costr's upstream
    direct: object  # where direct calls go: another fake provider with the same keys
    spool_dir: Path

    def sdk_settings(self, **overrides) -> dict:
        fake = self.direct
        settings = {
            "url": self.costr.url,
            "org": self.organization.slug,
            "token": self.token,
            "fallback_keys": dict(fake.keys),
            "fallback_base_urls": {
                "openai": f"{fake.url}/v1",
                "anthropic": fake.url,
                "google": fake.url,
            },
            "spool_dir": self.spool_dir,
            # Long enough that the probe never closes the breaker during a test: recovery is
            # what flush() (a delivery to the ingest API) proves.
            "breaker_seconds": 600,
        }
        settings.update(overrides)
        return settings

    def child_env(self) -> dict[str, str]:
        """The environment variables DESIGN.md names, for a process using the SDK."""
        fake = self.direct
        return {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(SDK_ROOT),
            "COSTR_URL": self.costr.url,
            "COSTR_ORG": self.organization.slug,
            "COSTR_TOKEN": self.token,
            "COSTR_FALLBACK_OPENAI_KEY": fake.keys["openai"],
            "COSTR_FALLBACK_OPENAI_BASE_URL": f"{fake.url}/v1",
            "COSTR_SDK_SPOOL_DIR": str(self.spool_dir),
            "COSTR_SDK_CONNECT_TIMEOUT": "2",
        }


@pytest.fixture
def setup(fake_provider, settings, tmp_path, transactional_db):
    import costr_sdk

    from apps.proxy.tests.conftest import organization_with_token

    organization, created = organization_with_token(fake_provider, scopes=("proxy", "ingest"))
    env = child_env(
        settings,
        COSTR_UPSTREAM_OPENAI=fake_provider.url,
        COSTR_UPSTREAM_ANTHROPIC=fake_provider.url,
        COSTR_UPSTREAM_GOOGLE=fake_provider.url,
    )
    costr = CostrProcess(env, tmp_path / "costr.log")
    costr.start()
    fake_provider.clear()
    direct = FakeProvider(**{f"{name}_key": key for name, key in fake_provider.keys.items()})
    direct.start()
    setup = Setup(costr, organization, created.plaintext, fake_provider, direct, tmp_path / "spool")
    costr_sdk.configure(**setup.sdk_settings())
    try:
        yield setup
    finally:
        costr_sdk.runtime().close()
        costr.stop()
        direct.stop()
