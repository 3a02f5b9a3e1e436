"""One tenant cannot hurt another (DESIGN.md Promises 5, 6, 10 and "Limits"): a hostile string in
any field of one record is stored cleaned and never costs the records beside it, and no backlog
(the database down, Redis paused) grows a web process's memory without bound or loses a record.

Real stores and real processes: the test database (PostgreSQL or SQLite), a redis-server of the
test's own that is paused with SIGSTOP, ``manage.py run_usage_writer`` and a web process that
emits usage as children. Expected values are written out here, never computed by the code under
test.
"""

import asyncio
import json
import signal
import sys
import textwrap

import pytest
import redis

from apps.usage.metering import sink
from apps.usage.metering import stream as usage_stream
from apps.usage.models import DailyRollup, UsageEvent
from apps.usage.tests.test_writer import _record
from tests.outage import (
    ROOT,
    ChildProcess,
    DatabaseOutage,
    RedisServer,
    child_env,
    drop_usage_stream,
    usage_writer_env,
    use_usage_stream,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)

# A lone surrogate: what a JSON "\ud800" escape in a request body or header decodes to.
SURROGATE = "\ud800"
NUL = "\x00"
FFFD = "\ufffd"


@pytest.fixture(autouse=True)
def embedded_spool(settings, tmp_path):
    settings.COSTR_USAGE_SPOOL_DIR = str(tmp_path / "spool")
    return tmp_path / "spool"


def _stored(org) -> list[str]:
    return sorted(UsageEvent.objects.for_org(org).values_list("request_id", flat=True))


def _requests_in_rollups(org) -> int:
    return sum(DailyRollup.objects.for_org(org).values_list("requests", flat=True))


def _writer_until_empty(settings, tmp_path) -> ChildProcess:
    writer = ChildProcess(
        ["run_usage_writer", "--until-empty", "--max-backoff", "0.2"],
        env=usage_writer_env(settings),
        log=tmp_path / "writer.log",
    )
    assert writer.wait(120) == 0, writer.output()
    return writer


def test_a_hostile_model_in_the_stream_costs_no_other_organization_its_usage(
    org, other_org, settings, redis_url, tmp_path
):
    """Redis mode, end to end: the web process's sink packs one batch (one stream entry) holding
    a record with a lone surrogate among other organizations' records; the writer (a child
    process) stores every record, the hostile one with its model cleaned."""
    stream = use_usage_stream(settings, redis_url, tmp_path / "redis-spool")
    try:
        theirs = [_record(other_org, f"req_theirs_{n}") for n in range(5)]
        hostile = _record(org, "req_hostile", model=f"gpt-4o{SURROGATE}", customer=f"a{SURROGATE}")

        async def serve() -> None:  # on a loop, as the proxy does: one batch, one entry
            for record in [*theirs[:2], hostile, *theirs[2:]]:
                sink.emit(record)

        asyncio.run(serve())
        assert sink.flush(timeout=10)

        writer = _writer_until_empty(settings, tmp_path)

        assert _stored(other_org) == [f"req_theirs_{n}" for n in range(5)]
        event = UsageEvent.objects.for_org(org).get(request_id="req_hostile")
        assert event.model == "gpt-4o\ufffd"
        assert event.customer.external_id == "a\ufffd"
        client = redis.Redis.from_url(redis_url)
        assert client.xlen(usage_stream.dead_letter_stream(stream)) == 0, writer.output()
        client.close()
    finally:
        drop_usage_stream(redis_url, stream)


def test_an_entry_an_earlier_sink_wrote_with_a_lone_surrogate_is_stored_not_set_aside(
    org, other_org, settings, redis_url, tmp_path
):
    """A stream entry (or spool line) written before strings were cleaned holds a "\\ud800"
    escape that orjson refuses: its other records are stored, the hostile one cleaned."""
    stream = use_usage_stream(settings, redis_url, tmp_path / "redis-spool")
    client = redis.Redis.from_url(redis_url)
    try:
        good = _record(other_org, "req_neighbour")
        keys = list(good)
        hostile_row = [
            f"gpt{SURROGATE}" if key == "model" else value
            for key, value in _record(org, "req_old_hostile").items()
        ]
        # As json.dumps (ensure_ascii) wrote it: the escape, not the character.
        data = json.dumps([[keys, [list(good.values()), hostile_row]]])
        assert "\\ud800" in data
        client.xadd(stream, {"kind": "events", "v": usage_stream.FORMAT_VERSION, "data": data})

        _writer_until_empty(settings, tmp_path)

        assert _stored(other_org) == ["req_neighbour"]
        assert (
            UsageEvent.objects.for_org(org).get(request_id="req_old_hostile").model == "gpt\ufffd"
        )
        assert client.xlen(usage_stream.dead_letter_stream(stream)) == 0
    finally:
        client.close()
        drop_usage_stream(redis_url, stream)


def test_embedded_a_poisoned_record_does_not_stop_the_records_after_it(org, other_org):
    sink.emit(_record(org, "req_poisoned", model=f"claude{SURROGATE}"))
    later = [f"req_later_{n}" for n in range(20)]
    for request_id in later:
        sink.emit(_record(other_org, request_id))

    assert sink.flush(timeout=20)

    assert _stored(other_org) == sorted(later)
    assert UsageEvent.objects.for_org(org).get(request_id="req_poisoned").model == "claude\ufffd"


HOSTILE_FIELDS = {
    "endpoint": f"chat{NUL}",
    "model": f"gpt-4o{NUL}mini{SURROGATE}",
    "requested_model": f"{NUL}gpt",
    "customer": f"acme{NUL}corp",
    "service_tier": f"flex{NUL}",
    "properties": {f"fea{NUL}ture": f"ch{NUL}at{SURROGATE}", "plain": "ok"},
    "raw_usage": {"prompt_tokens": 1200, f"no{NUL}te": [f"x{NUL}y", {"z": f"{SURROGATE}"}]},
}
# What each field must read back as: every NUL and lone surrogate one U+FFFD, nothing else changed.
CLEANED_FIELDS = {
    "endpoint": "chat\ufffd",
    "model": "gpt-4o\ufffdmini\ufffd",
    "requested_model": "\ufffdgpt",
    "customer": "acme\ufffdcorp",
    "service_tier": "flex\ufffd",
    "properties": {"fea\ufffdture": "ch\ufffdat\ufffd", "plain": "ok"},
    "raw_usage": {"prompt_tokens": 1200, "no\ufffdte": ["x\ufffdy", {"z": "\ufffd"}]},
}


def _assert_stored_cleaned(org, request_id: str) -> None:
    event = UsageEvent.objects.for_org(org).get(request_id=request_id)
    stored = {
        "endpoint": event.endpoint,
        "model": event.model,
        "requested_model": event.requested_model,
        "customer": event.customer.external_id,
        "service_tier": event.service_tier,
        "properties": event.properties,
        "raw_usage": event.raw_usage,
    }
    assert stored == CLEANED_FIELDS


def test_nul_and_lone_surrogates_in_every_string_field_are_stored_cleaned_through_the_sink(
    org, other_org
):
    sink.emit(_record(org, "req_every_field", **HOSTILE_FIELDS))
    sink.emit(_record(other_org, "req_beside_every_field"))

    assert sink.flush(timeout=20)

    _assert_stored_cleaned(org, "req_every_field")
    assert _stored(other_org) == ["req_beside_every_field"]
    rollup = DailyRollup.objects.for_org(org).get()
    assert (rollup.model, rollup.customer, rollup.requests) == (
        "gpt-4o\ufffdmini\ufffd",
        "acme\ufffdcorp",
        1,
    )


def test_nul_in_every_string_field_read_from_the_stream_is_stored_cleaned(
    org, other_org, settings, redis_url, tmp_path
):
    """The writer cleans what it reads, whoever wrote it (an earlier sink, an old spool file)."""
    stream = use_usage_stream(settings, redis_url, tmp_path / "redis-spool")
    client = redis.Redis.from_url(redis_url)
    try:
        records = [_record(org, "req_every_field_stream"), _record(other_org, "req_next")]
        records[0].update(HOSTILE_FIELDS)
        rows = [json.dumps(list(record.values())) for record in records]
        data = "[[" + json.dumps(list(records[0])) + ",[" + ",".join(rows) + "]]]"
        client.xadd(stream, {"kind": "events", "v": usage_stream.FORMAT_VERSION, "data": data})

        _writer_until_empty(settings, tmp_path)

        _assert_stored_cleaned(org, "req_every_field_stream")
        assert _stored(other_org) == ["req_next"]
        assert client.xlen(usage_stream.dead_letter_stream(stream)) == 0
    finally:
        client.close()
        drop_usage_stream(redis_url, stream)


WEB_PROCESS = textwrap.dedent(
    """
    import sys
    from types import SimpleNamespace
    import django
    django.setup()
    from apps.usage.metering import sink
    from apps.usage.tests.test_writer import _record
    organization = SimpleNamespace(pk=int(sys.argv[1]))
    prefix, count = sys.argv[2], int(sys.argv[3])
    for n in range(count):
        sink.emit(_record(organization, f"{prefix}_{n}"))
    print("handed over", sink.flush(timeout=60), flush=True)
    sys.stdin.readline()  # the test says when to store: the database is back
    print("stored", sink.flush(timeout=60), flush=True)
    while True:
        sys.stdin.readline()
        print("flushed", sink.flush(timeout=60), flush=True)
    """
)


def test_embedded_past_the_queue_bound_records_are_spooled_then_all_stored_exactly_once(
    org, settings, tmp_path
):
    """A web process in the embedded mode with its database unreachable: past the bound its
    records go to the spool (flush() returns: nothing waits in memory), and once the database is
    back every one is stored exactly once, events and rollups."""
    import subprocess

    from django.db import connection

    outage = DatabaseOutage(connection.settings_dict)
    spool_dir = tmp_path / "web-spool"
    env = child_env(
        settings,
        DATABASE_URL=outage.url,
        COSTR_USAGE_REDIS_URL="",
        COSTR_USAGE_SPOOL_DIR=str(spool_dir),
        COSTR_USAGE_QUEUE_MAX_RECORDS="100",
    )
    log = tmp_path / "web.log"
    with open(log, "ab") as output:
        web = subprocess.Popen(
            [sys.executable, "-c", WEB_PROCESS, str(org.pk), "req_bound", "2000"],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "handed over" in log.read_text(), timeout=90, message=log.read_text)
        assert "handed over True" in log.read_text(), log.read_text()
        spooled = [
            record["request_id"]
            for path in spool_dir.glob("usage-*.jsonl")
            for line in path.read_text().splitlines()
            for record in usage_stream.decode(json.loads(line))[1]
        ]
        # All but what the queue may hold (its bound) and the batch in hand are on disk.
        assert len(set(spooled)) >= 2000 - 100 - sink.BATCH_SIZE
        assert _stored(org) == []

        outage.up()
        web.stdin.write(b"go\n")
        web.stdin.flush()
        wanted = sorted(f"req_bound_{n}" for n in range(2000))
        wait_until(lambda: _stored(org) == wanted, timeout=90, message=log.read_text)
        wait_until(lambda: not list(spool_dir.glob("usage-*.jsonl")), message=log.read_text)
        assert UsageEvent.objects.for_org(org).count() == 2000
        assert _requests_in_rollups(org) == 2000
    finally:
        web.kill()
        web.wait()
        outage.close()


def test_redis_paused_requests_keep_flowing_records_spool_and_arrive_once_after_resume(
    org, settings, tmp_path, monkeypatch
):
    """SIGSTOP: Redis accepts connections and never answers, so the sink thread waits in a call
    to it. Meanwhile the event loop keeps serving, what passes the queue's bound goes to the
    spool (memory stays bounded), and after SIGCONT every record reaches the database once."""
    # A long wait in the stopped Redis's socket makes the bound visible: without the overflow
    # thread, every record would wait in memory for it.
    monkeypatch.setattr(usage_stream, "SINK_SOCKET_TIMEOUT", 60.0)
    settings.COSTR_USAGE_QUEUE_MAX_RECORDS = 100
    server = RedisServer(tmp_path / "redis")
    server.start()
    spool_dir = tmp_path / "paused-spool"
    stream = use_usage_stream(settings, server.url, spool_dir)
    client = redis.Redis(port=server.port)
    try:
        before = [f"req_before_pause_{n}" for n in range(10)]
        for request_id in before:
            sink.emit(_record(org, request_id))
        assert sink.flush(timeout=10)
        assert client.xlen(stream) == 1

        server.process.send_signal(signal.SIGSTOP)
        # Outside a loop first: the sink thread takes this one and waits on the stopped Redis.
        sink.emit(_record(org, "req_first_in_pause"))
        during = [f"req_during_pause_{n}" for n in range(3000)]

        async def serve() -> None:
            for start in range(0, len(during), 100):
                for request_id in during[start : start + 100]:
                    sink.emit(_record(org, request_id))
                await asyncio.sleep(sink.LINGER_SECONDS / 4)

        # The loop is never blocked by the stopped Redis: it serves all of it and returns.
        asyncio.run(serve())

        def spooled() -> set[str]:
            return {
                record["request_id"]
                for path in spool_dir.glob("usage-*.jsonl")
                for line in path.read_text().splitlines()
                if line
                for record in usage_stream.decode(json.loads(line))[1]
            }

        # Still paused: all but the queue's bound and the batch in hand are already on disk.
        wait_until(
            lambda: len(spooled() & set(during)) >= len(during) - 100 - sink.BATCH_SIZE,
            timeout=30,
            message=lambda: f"{len(spooled())} of {len(during)} spooled",
        )
        # ... while the sink thread still waits on Redis with the first batch in hand.
        assert "req_first_in_pause" not in spooled()
        assert server.process.poll() is None

        server.process.send_signal(signal.SIGCONT)
        assert sink.flush(timeout=90)
        wait_until(lambda: not list(spool_dir.glob("usage-*.jsonl")), message="not replayed")

        _writer_until_empty(settings, tmp_path)
        expected = sorted([*before, "req_first_in_pause", *during])
        assert _stored(org) == expected
        assert _requests_in_rollups(org) == len(expected)
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        sink.flush(timeout=30)
        client.close()
        server.stop()
