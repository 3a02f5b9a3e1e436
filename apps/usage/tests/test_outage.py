"""Nothing lost (issue #5): the database unreachable, Redis unreachable, the writer killed — in each
case, once things recover, every record handed to the sink has exactly one event.

Real processes and real outages: ``manage.py run_usage_writer`` runs as a child process on the
test database; the database is cut by a TCP relay (PostgreSQL) or a vanishing directory (SQLite);
Redis is a redis-server of the test's own, stopped and started again.
"""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from apps.usage.metering import sink
from apps.usage.metering import stream as usage_stream
from apps.usage.models import UsageEvent
from apps.usage.tests.test_writer import _record
from tests.outage import (
    ROOT,
    ChildProcess,
    DatabaseOutage,
    RedisServer,
    drop_usage_stream,
    usage_writer_env,
    use_usage_stream,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def usage_stream_name(settings, redis_url, tmp_path):
    stream = use_usage_stream(settings, redis_url, tmp_path / "spool")
    yield stream
    sink.flush(timeout=10)
    drop_usage_stream(redis_url, stream)


@pytest.fixture
def database_outage():
    from django.db import connection

    outage = DatabaseOutage(connection.settings_dict)
    yield outage
    outage.close()


@pytest.fixture
def writers(tmp_path):
    """Start ``run_usage_writer`` children; any still running at the end are killed."""
    started: list[ChildProcess] = []

    def start(env, *args) -> ChildProcess:
        log = tmp_path / f"writer-{len(started)}.log"
        child = ChildProcess(["run_usage_writer", "--max-backoff", "0.2", *args], env=env, log=log)
        started.append(child)
        child.wait_for_output("usage writer")  # its signal handlers are in place
        return child

    yield start
    for child in started:
        child.kill()


def _emit(org, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}_{n}" for n in range(count)]
    for request_id in ids:
        sink.emit(_record(org, request_id))
    assert sink.flush(timeout=30)
    return ids


def _stored(org) -> list[str]:
    return sorted(UsageEvent.objects.for_org(org).values_list("request_id", flat=True))


def _all_stored(org, ids):
    return lambda: len(_stored(org)) == len(ids)


def _group(client, stream) -> dict:
    return client.xpending(stream, usage_stream.GROUP)


def test_database_unreachable_during_traffic(
    org, settings, usage_stream_name, redis_url, database_outage, writers
):
    client = redis.Redis.from_url(redis_url)
    database_outage.up()
    writer = writers(usage_writer_env(settings, DATABASE_URL=database_outage.url))

    first = _emit(org, "req_before", 100)
    wait_until(_all_stored(org, first), message=writer.output)

    database_outage.down()
    during = _emit(org, "req_during", 300)
    # The writer has the batch in hand and keeps it: read from the stream, not acknowledged.
    wait_until(lambda: _group(client, usage_stream_name)["pending"] > 0, message=writer.output)
    wait_until(lambda: "database unreachable" in writer.output(), message=writer.output)
    assert _stored(org) == sorted(first)
    database_outage.up()
    after = _emit(org, "req_after", 100)

    expected = sorted(first + during + after)
    wait_until(_all_stored(org, expected), message=writer.output)
    wait_until(lambda: client.xlen(usage_stream_name) == 0)
    writer.signal(signal.SIGTERM)
    assert writer.wait() == 0, writer.output()
    assert _stored(org) == expected
    assert _group(client, usage_stream_name)["pending"] == 0


def test_redis_unreachable_during_traffic(org, settings, tmp_path, database_outage, writers):
    server = RedisServer(tmp_path / "redis")
    server.start()
    spool_dir = tmp_path / "spool"
    stream = use_usage_stream(settings, server.url, spool_dir)
    client = redis.Redis(port=server.port)
    try:
        before = _emit(org, "req_redis_up", 50)
        assert client.xlen(stream) > 0

        server.stop()
        during = _emit(org, "req_redis_down", 200)  # flush() returns: the records are spooled
        assert list(spool_dir.glob("*.jsonl"))

        server.start()
        # The sink replays its spool on its own once Redis answers, without new traffic.
        wait_until(lambda: not list(spool_dir.glob("*.jsonl")), message="spool not replayed")
        after = _emit(org, "req_redis_back", 50)

        database_outage.up()
        writer = writers(usage_writer_env(settings, DATABASE_URL=database_outage.url))
        expected = sorted(before + during + after)
        wait_until(_all_stored(org, expected), message=writer.output)
        wait_until(lambda: client.xlen(stream) == 0)
        writer.signal(signal.SIGTERM)
        assert writer.wait() == 0, writer.output()
        assert _stored(org) == expected
    finally:
        sink.flush(timeout=10)
        client.close()
        server.stop()


def test_redis_hanging_during_traffic(org, settings, tmp_path, database_outage, writers):
    """Redis accepts connections but does not answer (the process is stopped): the sink gives up
    after its socket timeout and spools. The commands it sent run when Redis resumes, and the
    spool is replayed too, so the stream holds some records twice: still one event each."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    spool_dir = tmp_path / "spool"
    stream = use_usage_stream(settings, server.url, spool_dir)
    client = redis.Redis(port=server.port)
    try:
        before = _emit(org, "req_before_hang", 20)
        server.process.send_signal(signal.SIGSTOP)
        during = _emit(org, "req_during_hang", 100)  # flush() returns: spooled after a timeout
        assert list(spool_dir.glob("*.jsonl"))
        server.process.send_signal(signal.SIGCONT)
        wait_until(lambda: not list(spool_dir.glob("*.jsonl")), message="spool not replayed")

        database_outage.up()
        writer = writers(usage_writer_env(settings, DATABASE_URL=database_outage.url))
        expected = sorted(before + during)
        wait_until(_all_stored(org, expected), message=writer.output)
        wait_until(lambda: client.xlen(stream) == 0)
        writer.signal(signal.SIGTERM)
        assert writer.wait() == 0, writer.output()
        assert _stored(org) == expected
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        sink.flush(timeout=30)
        client.close()
        server.stop()


WEB_PROCESS = textwrap.dedent(
    """
    import sys, time
    from types import SimpleNamespace
    import django
    django.setup()
    from apps.usage.metering import sink
    from apps.usage.tests.test_writer import _record
    organization = SimpleNamespace(pk=int(sys.argv[1]))
    prefix, count = sys.argv[2], int(sys.argv[3])
    for n in range(count):
        sink.emit(_record(organization, f"{prefix}_{n}"))
    assert sink.flush(timeout=30)
    print("spooled", flush=True)
    time.sleep(600)
    """
)


def _web_process_that_dies_with_a_spool(org, settings, prefix: str, count: int) -> list[str]:
    """A web process whose Redis never answered: it spools ``count`` records, then is killed."""
    env = usage_writer_env(settings, COSTR_USAGE_REDIS_URL="redis://127.0.0.1:1/0")
    child = subprocess.Popen(
        [sys.executable, "-c", WEB_PROCESS, str(org.pk), prefix, str(count)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "spooled"
    finally:
        child.kill()
        child.wait()
    return [f"{prefix}_{n}" for n in range(count)]


def test_a_spool_left_by_a_dead_web_process_is_replayed_by_the_writer_at_start(
    org, settings, usage_stream_name, database_outage, writers
):
    spool_dir = Path(settings.COSTR_USAGE_SPOOL_DIR)
    ids = _web_process_that_dies_with_a_spool(org, settings, "req_left_behind", 40)
    assert list(spool_dir.glob("*.jsonl"))

    database_outage.up()
    writer = writers(usage_writer_env(settings, DATABASE_URL=database_outage.url))

    wait_until(_all_stored(org, ids), message=writer.output)
    writer.signal(signal.SIGTERM)
    assert writer.wait() == 0, writer.output()
    assert _stored(org) == sorted(ids)
    assert not list(spool_dir.glob("*.jsonl"))


def test_a_spool_left_by_a_dead_web_process_is_replayed_by_the_next_web_process(
    org, settings, usage_stream_name, redis_url
):
    spool_dir = Path(settings.COSTR_USAGE_SPOOL_DIR)
    ids = _web_process_that_dies_with_a_spool(org, settings, "req_next_process", 40)

    # This process is the next one on the host: its first batch finds the orphan and sends it.
    sink.emit(_record(org, "req_new_traffic"))
    assert sink.flush(timeout=10)

    assert not list(spool_dir.glob("*.jsonl"))
    in_stream = [
        record["request_id"]
        for _, fields in redis.Redis.from_url(redis_url).xrange(usage_stream_name)
        for record in usage_stream.decode(fields)[1]
    ]
    assert sorted(in_stream) == sorted([*ids, "req_new_traffic"])


def test_sigterm_mid_batch_finishes_the_batch_acknowledges_it_and_exits_0(
    org, settings, usage_stream_name, redis_url, database_outage, writers
):
    client = redis.Redis.from_url(redis_url)
    # One stream entry (one web batch) per read; the database is down.
    writer = writers(usage_writer_env(settings, DATABASE_URL=database_outage.url), "--count", "1")
    first = _emit(org, "req_sigterm_first", 200)
    wait_until(lambda: "database unreachable" in writer.output(), message=writer.output)
    second = _emit(org, "req_sigterm_second", 200)
    assert _group(client, usage_stream_name)["pending"] == 1  # read, in hand, not written

    writer.signal(signal.SIGTERM)
    database_outage.up()

    assert writer.wait() == 0, writer.output()
    # It finished the batch it held (stored, acknowledged, deleted) and took no other.
    assert _stored(org) == sorted(first)
    assert _group(client, usage_stream_name)["pending"] == 0
    assert client.xlen(usage_stream_name) == 1

    restarted = writers(usage_writer_env(settings, DATABASE_URL=database_outage.url))
    wait_until(_all_stored(org, first + second), message=restarted.output)
    restarted.signal(signal.SIGTERM)
    assert restarted.wait() == 0, restarted.output()
    assert _stored(org) == sorted(first + second)
    assert client.xlen(usage_stream_name) == 0


def test_sigterm_during_a_backlog_then_restart_stores_everything_once(
    org, settings, usage_stream_name, redis_url, database_outage, writers
):
    client = redis.Redis.from_url(redis_url)
    ids = _emit(org, "req_backlog", 3000)
    database_outage.up()

    writer = writers(usage_writer_env(settings, DATABASE_URL=database_outage.url), "--count", "1")
    wait_until(lambda: _stored(org), message=writer.output)
    writer.signal(signal.SIGTERM)
    assert writer.wait() == 0, writer.output()
    # Whatever it had stored it acknowledged; nothing is left pending.
    assert _group(client, usage_stream_name)["pending"] == 0

    restarted = writers(usage_writer_env(settings, DATABASE_URL=database_outage.url))
    wait_until(_all_stored(org, ids), message=restarted.output)
    restarted.signal(signal.SIGTERM)
    assert restarted.wait() == 0, restarted.output()
    assert _stored(org) == sorted(ids)
    assert client.xlen(usage_stream_name) == 0


def test_sigkill_mid_batch_then_another_writer_claims_and_stores_it(
    org, settings, usage_stream_name, redis_url, database_outage, writers
):
    client = redis.Redis.from_url(redis_url)
    killed = writers(usage_writer_env(settings, DATABASE_URL=database_outage.url))  # db down
    ids = _emit(org, "req_sigkill", 500)
    wait_until(lambda: "database unreachable" in killed.output(), message=killed.output)
    assert _group(client, usage_stream_name)["pending"] > 0

    killed.signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert _stored(org) == []
    assert _group(client, usage_stream_name)["pending"] > 0  # still the dead writer's
    database_outage.up()

    successor = writers(
        usage_writer_env(settings, DATABASE_URL=database_outage.url), "--claim-idle", "0.5"
    )
    wait_until(_all_stored(org, ids), message=successor.output)
    wait_until(lambda: _group(client, usage_stream_name)["pending"] == 0)
    assert "claimed" in successor.output()
    successor.signal(signal.SIGTERM)
    assert successor.wait() == 0, successor.output()
    assert _stored(org) == sorted(ids)
    assert client.xlen(usage_stream_name) == 0
