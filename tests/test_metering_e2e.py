"""Metering end to end in the Redis mode: requests through the real proxy (the ASGI app under
uvicorn, in front of the fake provider) → the sink → a Redis stream → ``manage.py
run_usage_writer`` in its own process → exactly one event per request, also when Redis was down
while the requests were served."""

import signal
import subprocess
import sys

import httpx
import pytest
import redis

from apps.proxy.tests.conftest import (  # noqa: F401 - fixtures, used by name
    committed_db,
    costr_server,
    http,
    proxy,
    sdk,
)
from apps.usage.metering import sink
from apps.usage.metering import stream as usage_stream
from apps.usage.models import UsageEvent
from tests.outage import (
    ROOT,
    ChildProcess,
    RedisServer,
    drop_usage_stream,
    free_port,
    usage_writer_env,
    use_usage_stream,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


def _chat(http, proxy) -> str:  # noqa: F811
    response = http.post(
        f"{proxy.url('openai')}/chat/completions",
        headers={"authorization": f"Bearer {proxy.token}"},
        json=CHAT,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-costr-request-id"]


def _run_writer(settings, tmp_path) -> None:
    writer = ChildProcess(
        ["run_usage_writer", "--until-empty"],
        env=usage_writer_env(settings),
        log=tmp_path / "writer.log",
    )
    assert writer.wait(timeout=120) == 0, writer.output()


def _stored(organization) -> list[str]:
    return sorted(UsageEvent.objects.for_org(organization).values_list("request_id", flat=True))


def test_each_proxied_request_has_one_event_once_the_writer_ran(
    http,  # noqa: F811
    proxy,  # noqa: F811
    settings,
    redis_url,
    tmp_path,
):
    stream = use_usage_stream(settings, redis_url, tmp_path / "spool")
    try:
        ids = [_chat(http, proxy) for _ in range(40)]
        assert sink.flush(timeout=10)
        # Served and handed over; the web process wrote nothing to the database itself.
        assert _stored(proxy.organization) == []

        _run_writer(settings, tmp_path)

        assert _stored(proxy.organization) == sorted(ids)
    finally:
        sink.flush(timeout=10)
        drop_usage_stream(redis_url, stream)


def test_requests_served_while_redis_is_down_are_metered_once_it_is_back(
    http,  # noqa: F811
    proxy,  # noqa: F811
    settings,
    tmp_path,
):
    server = RedisServer(tmp_path / "redis")
    server.start()
    spool_dir = tmp_path / "spool"
    stream = use_usage_stream(settings, server.url, spool_dir)
    try:
        before = [_chat(http, proxy) for _ in range(10)]
        assert sink.flush(timeout=10)

        server.stop()
        # The proxy keeps answering (each _chat asserts its 200); usage goes to the spool.
        during = [_chat(http, proxy) for _ in range(30)]
        assert sink.flush(timeout=10)
        assert list(spool_dir.glob("*.jsonl"))

        server.start()
        wait_until(lambda: not list(spool_dir.glob("*.jsonl")), message="spool not replayed")
        after = [_chat(http, proxy) for _ in range(10)]
        assert sink.flush(timeout=10)

        _run_writer(settings, tmp_path)

        assert _stored(proxy.organization) == sorted(before + during + after)
        assert redis.Redis(port=server.port).xlen(stream) == 0
    finally:
        sink.flush(timeout=10)
        server.stop()


def test_a_web_process_stopped_with_sigterm_hands_over_everything_it_served(
    fake_provider, settings, redis_url, tmp_path
):
    """The ASGI lifespan's shutdown flushes the sink: a record still lingering in memory when
    the process is told to stop reaches the stream before the process exits."""
    from apps.proxy.tests.conftest import organization_with_token

    stream = use_usage_stream(settings, redis_url, tmp_path / "spool")
    organization, created = organization_with_token(fake_provider, providers=("openai",))
    port = free_port()
    env = usage_writer_env(
        settings,
        COSTR_UPSTREAM_OPENAI=fake_provider.url,
        COSTR_UPSTREAM_ANTHROPIC=fake_provider.url,
        COSTR_UPSTREAM_GOOGLE=fake_provider.url,
    )
    log = tmp_path / "web.log"
    with open(log, "wb") as output:
        web = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "costr.asgi:application", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}/p/{organization.slug}/openai/v1"
        wait_until(
            lambda: b"Application startup complete" in log.read_bytes(), message=log.read_text
        )
        with httpx.Client(timeout=30) as client:
            ids = []
            for _ in range(20):
                response = client.post(
                    f"{base}/chat/completions",
                    headers={"authorization": f"Bearer {created.plaintext}"},
                    json=CHAT,
                )
                assert response.status_code == 200, response.text
                ids.append(response.headers["x-costr-request-id"])
        web.send_signal(signal.SIGTERM)  # at once: the last records are still lingering
        # uvicorn re-raises the signal once it has shut down gracefully: -SIGTERM is a clean exit.
        assert web.wait(60) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()

        in_stream = [
            record["request_id"]
            for _, fields in redis.Redis.from_url(redis_url).xrange(stream)
            for record in usage_stream.decode(fields)[1]
        ]
        # As a set: a batch whose send was in flight at the shutdown is sent twice (flush() cannot
        # wait for the loop it blocks); the writer's unique request id stores it once.
        assert set(in_stream) == set(ids)
    finally:
        if web.poll() is None:
            web.kill()
            web.wait()
        drop_usage_stream(redis_url, stream)
