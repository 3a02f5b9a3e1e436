"""The sink: records and refusal counts handed over are all delivered, once; flush() waits for
them; the caller's thread never does I/O, whether the transport is the database (embedded),
Redis, or the spool while Redis does not answer."""

import fcntl
import json
import os
import sys
import threading

import pytest

from apps.usage.metering import sink, transports
from apps.usage.metering import stream as usage_stream
from apps.usage.metering.spool import Spool
from apps.usage.models import RefusalCount, UsageEvent
from apps.usage.tests.test_writer import _record
from tests.outage import (
    RedisServer,
    drop_usage_stream,
    free_port,
    use_usage_stream,
    wait_until,
)

# The sink's thread uses its own connection: it only sees committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def spool_dir(settings, tmp_path):
    """Spool and dead letters of the embedded mode in the test's own directory."""
    settings.COSTR_USAGE_SPOOL_DIR = str(tmp_path / "embedded-spool")
    return tmp_path / "embedded-spool"


def test_every_record_handed_over_is_written_once_by_the_time_flush_returns(org):
    for index in range(50):
        sink.emit(_record(org, f"req_sink_{index}"))

    assert sink.flush(timeout=10)

    stored = UsageEvent.objects.for_org(org).values_list("request_id", flat=True)
    assert sorted(stored) == sorted(f"req_sink_{index}" for index in range(50))


def test_flush_with_nothing_pending_returns_at_once_and_again_after_more_work(org):
    assert sink.flush(timeout=10)

    sink.emit(_record(org, "req_late"))
    assert sink.flush(timeout=10)
    assert sink.flush(timeout=10)

    assert UsageEvent.objects.for_org(org).filter(request_id="req_late").count() == 1


def test_refusals_are_counted_per_org_day_status_and_code(org, other_org):
    for _ in range(4):
        sink.emit_refusal(org.slug, 401, "invalid_token")
    sink.emit_refusal(org.slug, 403, "missing_scope")
    sink.emit_refusal(other_org.slug, 401, "invalid_token")

    assert sink.flush(timeout=10)

    mine = {(r.status, r.code): r.count for r in RefusalCount.objects.for_org(org).all()}
    assert mine == {(401, "invalid_token"): 4, (403, "missing_scope"): 1}
    assert RefusalCount.objects.for_org(other_org).get().count == 1


def test_refusal_counters_are_bounded_between_hand_overs(org, other_org, monkeypatch, caplog):
    # The slug comes from the URL: a flood naming random organizations must not grow memory.
    assert sink.flush(timeout=10)
    monkeypatch.setattr(sink, "MAX_REFUSAL_KEYS", 1)
    sink.emit_refusal(org.slug, 401, "invalid_token")
    sink.emit_refusal(other_org.slug, 401, "invalid_token")
    sink.emit_refusal(org.slug, 401, "invalid_token")

    assert sink.flush(timeout=10)

    assert RefusalCount.objects.for_org(org).get().count == 2
    assert not RefusalCount.objects.for_org(other_org).exists()
    assert any("1 refusal counts dropped" in r.getMessage() for r in caplog.records)


def test_a_record_that_cannot_be_stored_is_set_aside_alone_and_the_others_are_stored(
    org, caplog, spool_dir
):
    broken = _record(org, "req_broken", timestamp="not a timestamp", customer="secret-name")
    sink.emit(_record(org, "req_fine_1"))
    sink.emit(broken)
    sink.emit(_record(org, "req_fine_2"))

    assert sink.flush(timeout=10)

    stored = sorted(UsageEvent.objects.for_org(org).values_list("request_id", flat=True))
    assert stored == ["req_fine_1", "req_fine_2"]
    # Kept with its reason in the dead-letter file; the log says so without the content.
    [line] = (spool_dir / transports.DEAD_LETTER_FILE).read_text().splitlines()
    dead = json.loads(line)
    assert dead["data"] == [broken]
    assert dead["error"].startswith("ValueError")
    set_aside = [r.getMessage() for r in caplog.records if r.name == "costr.usage.sink"]
    assert len(set_aside) == 1
    assert "req_broken" not in set_aside[0]
    assert "secret-name" not in set_aside[0]


def test_bad_arguments_never_raise_into_the_caller(org):
    sink.emit_refusal(org.slug, "not a status", "x")
    sink.emit({"organization_id": org.pk, "unserialisable": {1, 2}})

    assert sink.flush(timeout=10)


@pytest.fixture
def redis_stream(settings, redis_url, tmp_path):
    stream = use_usage_stream(settings, redis_url, tmp_path / "spool")
    yield stream
    sink.flush(timeout=10)
    drop_usage_stream(redis_url, stream)


def _stream_ids(redis_url, stream) -> list[str]:
    import redis

    return [
        record["request_id"]
        for _, fields in redis.Redis.from_url(redis_url).xrange(stream)
        for record in usage_stream.decode(fields)[1]
    ]


def test_in_the_redis_mode_records_and_counts_go_to_the_stream_not_the_database(
    org, redis_stream, redis_url
):
    import redis

    sink.emit(_record(org, "req_to_stream_1"))
    sink.emit(_record(org, "req_to_stream_2"))
    sink.emit_refusal(org.slug, 401, "invalid_token")

    assert sink.flush(timeout=10)

    entries = [
        usage_stream.decode(fields)
        for _, fields in redis.Redis.from_url(redis_url).xrange(redis_stream)
    ]
    events = [r["request_id"] for kind, items in entries if kind == "events" for r in items]
    refusals = [item for kind, items in entries if kind == "refusals" for item in items]
    assert sorted(events) == ["req_to_stream_1", "req_to_stream_2"]
    assert [(r["org_slug"], r["status"], r["code"], r["count"]) for r in refusals] == [
        (org.slug, 401, "invalid_token", 1)
    ]
    assert not UsageEvent.objects.for_org(org).exists()
    assert not RefusalCount.objects.for_org(org).exists()


def test_a_forked_child_delivers_its_own_records_and_leaves_the_parents_queue_to_the_parent(
    org, redis_stream, redis_url
):

    # Lingering at the fork: the first in the sink thread's hands, the others in its queue.
    before = [f"req_before_the_fork_{n}" for n in range(3)]
    for request_id in before:
        sink.emit(_record(org, request_id))
    pid = os.fork()
    if pid == 0:  # the child, as a server's worker is: a sink of its own, the parent's not
        try:
            sink.emit(_record(org, "req_in_the_child"))
            os._exit(0 if sink.flush(timeout=10) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert sink.flush(timeout=10)

    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(_stream_ids(redis_url, redis_stream)) == [*before, "req_in_the_child"]


class _ThreadIO:
    """Socket and file activity per thread while recording, seen through Python's audit hooks."""

    EVENTS = ("socket.", "open", "os.")
    installed = False
    recording = False
    seen: list[tuple[int, str]] = []

    @classmethod
    def start(cls) -> None:
        if not cls.installed:  # an audit hook cannot be removed: one per process, switched
            sys.addaudithook(cls._hook)
            cls.installed = True
        cls.seen = []
        cls.recording = True

    @classmethod
    def stop(cls) -> list[tuple[int, str]]:
        cls.recording = False
        return cls.seen

    @classmethod
    def _hook(cls, event: str, args) -> None:
        if cls.recording and event.startswith(cls.EVENTS):
            cls.seen.append((threading.get_ident(), event))


def test_with_redis_unreachable_emit_does_no_io_on_the_calling_thread_and_records_are_spooled(
    org, settings, tmp_path
):
    spool_dir = tmp_path / "spool"
    use_usage_stream(settings, f"redis://127.0.0.1:{free_port()}/0", spool_dir)  # nobody there
    caller = threading.get_ident()

    _ThreadIO.start()
    try:
        for index in range(200):
            sink.emit(_record(org, f"req_spooled_{index}"))
            sink.emit_refusal(org.slug, 401, "invalid_token")
        during_emit = [event for thread, event in _ThreadIO.seen if thread == caller]
        assert sink.flush(timeout=30)
    finally:
        seen = _ThreadIO.stop()

    # Not one socket or file call on the caller's thread, while the sink's thread tried Redis
    # and wrote the spool (and so would have been seen doing it here, had emit() done it inline).
    assert during_emit == []
    elsewhere = {event for thread, event in seen if thread != caller}
    assert {"socket.connect", "open"} <= elsewhere
    spooled = [
        json.loads(line)
        for path in sorted(spool_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    decoded = [usage_stream.decode(entry) for entry in spooled]
    events = [r["request_id"] for kind, items in decoded if kind == "events" for r in items]
    refused = sum(i["count"] for kind, items in decoded if kind == "refusals" for i in items)
    assert sorted(events) == sorted(f"req_spooled_{index}" for index in range(200))
    assert refused == 200
    assert not UsageEvent.objects.for_org(org).exists()


def test_the_spool_rotates_past_its_segment_size_and_replays_every_entry_in_order(tmp_path):
    spool = Spool(tmp_path, segment_bytes=300)
    entries = [usage_stream.encode("events", [{"request_id": f"req_{n}"}]) for n in range(12)]
    for entry in entries:
        spool.append([entry])

    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) > 1
    # Only the file being appended to is held; a rotated one is free for anyone to replay.
    assert [_held(path) for path in files] == [False] * (len(files) - 1) + [True]

    sent: list[dict] = []
    assert spool.replay(sent.extend) == 12

    assert sent == entries
    assert not list(tmp_path.glob("*.jsonl"))
    assert not spool.pending


def test_a_torn_last_line_is_logged_and_the_rest_of_the_file_replayed(tmp_path, caplog):
    spool = Spool(tmp_path)
    entry = usage_stream.encode("events", [{"request_id": "req_whole"}])
    spool.append([entry])
    spool.close()
    [path] = tmp_path.glob("*.jsonl")
    with open(path, "ab") as handle:
        handle.write(b'{"kind":"events","v":"1","da')  # power lost mid-append

    sent: list[dict] = []
    spool.replay(sent.extend)

    assert sent == [entry]
    assert any("unreadable line 2" in r.getMessage() for r in caplog.records)


def _held(path) -> bool:
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# On an event loop (the proxy): records wait on the loop, which appends their batch itself.


def test_on_an_event_loop_the_loop_appends_the_batch_to_the_stream_without_waiting_for_it(
    org, redis_stream, redis_url
):
    import asyncio

    ids = [f"req_on_the_loop_{n}" for n in range(30)]
    loop_thread = threading.get_ident()

    async def serve() -> list:
        already = len(_ThreadIO.seen)  # the loop's own setup
        for request_id in ids:
            sink.emit(_record(org, request_id))
        during_emit = _ThreadIO.seen[already:]
        # No flush(), and no I/O of the test's own while recording: the loop hands its batch
        # over after the linger, on its own.
        await asyncio.sleep(sink.LINGER_SECONDS * 5)
        return during_emit

    _ThreadIO.start()
    try:
        during_emit = asyncio.run(serve())
    finally:
        seen = _ThreadIO.stop()

    assert during_emit == []  # emit() itself only touched memory
    # The loop's own thread connected to Redis: the batch did not pass through the sink thread.
    assert "socket.connect" in {event for thread, event in seen if thread == loop_thread}
    # In the stream before any flush(), every record in it once.
    assert sorted(_stream_ids(redis_url, redis_stream)) == sorted(ids)


def test_flush_from_another_thread_takes_the_batch_a_running_loop_holds(org, monkeypatch):
    import asyncio

    monkeypatch.setattr(sink, "LINGER_SECONDS", 60.0)  # the loop would hold it for a minute
    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_forever)
    server.start()
    try:
        ids = [f"req_held_by_the_loop_{n}" for n in range(20)]
        emitted = asyncio.run_coroutine_threadsafe(_emit_all(org, ids), loop)
        emitted.result(timeout=10)

        assert sink.flush(timeout=10)

        stored = UsageEvent.objects.for_org(org).values_list("request_id", flat=True)
        assert sorted(stored) == sorted(ids)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        server.join(timeout=10)
        loop.close()


async def _emit_all(org, ids) -> None:
    for request_id in ids:
        sink.emit(_record(org, request_id))


def test_flush_on_the_loop_itself_delivers_a_batch_whose_send_is_still_in_flight(
    org, redis_stream, redis_url
):
    """As the ASGI lifespan's shutdown does: flush() blocks the loop, so the loop cannot finish
    a send it started; flush() sends that batch again instead (the unique request id stores it
    once), rather than leaving it to a loop that is about to stop."""
    import asyncio

    ids = [f"req_in_flight_{n}" for n in range(sink.BATCH_SIZE)]

    async def shutdown_with_a_send_in_flight() -> list[str]:
        for request_id in ids:
            sink.emit(_record(org, request_id))  # the last one fills the batch: its send starts
        assert sink.flush(timeout=10)
        return _stream_ids(redis_url, redis_stream)  # before the loop could run the send

    assert sorted(asyncio.run(shutdown_with_a_send_in_flight())) == sorted(ids)


def test_a_loop_whose_sends_fail_spools_its_batches_and_appends_again_once_redis_is_back(
    org, settings, tmp_path, redis_url
):
    import asyncio

    spool_dir = tmp_path / "spool"
    use_usage_stream(settings, f"redis://127.0.0.1:{free_port()}/0", spool_dir)  # nobody there
    down = [f"req_loop_redis_down_{n}" for n in range(50)]

    async def serve(ids) -> None:
        await _emit_all(org, ids)
        await asyncio.sleep(sink.LINGER_SECONDS * 3)  # the loop's send fails meanwhile

    asyncio.run(serve(down))
    assert sink.flush(timeout=30)
    spooled = [
        usage_stream.decode(json.loads(line))
        for path in sorted(spool_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert sorted(r["request_id"] for _, items in spooled for r in items) == sorted(down)

    # Redis answers (another URL, the same spool): the spool is replayed, and loops append again.
    stream = use_usage_stream(settings, redis_url, spool_dir)
    try:
        sink.emit(_record(org, "req_outside_any_loop"))  # the sink thread finds Redis back
        assert sink.flush(timeout=10)
        back = [f"req_loop_redis_back_{n}" for n in range(20)]
        loop_thread = threading.get_ident()
        _ThreadIO.start()
        try:
            asyncio.run(serve(back))
        finally:
            seen = _ThreadIO.stop()
        assert sink.flush(timeout=10)

        assert "socket.connect" in {event for thread, event in seen if thread == loop_thread}
        assert sorted(_stream_ids(redis_url, stream)) == sorted(
            [*down, "req_outside_any_loop", *back]
        )
        assert not list(spool_dir.glob("*.jsonl"))
    finally:
        drop_usage_stream(redis_url, stream)


def test_a_send_cancelled_by_the_loop_closing_is_delivered_by_the_thread(org, settings, tmp_path):
    """The loop closes (a server stopped without its lifespan) while its send waits on a Redis
    that does not answer: the batch goes to the thread, without anyone calling flush()."""
    import asyncio
    import signal

    import redis

    server = RedisServer(tmp_path / "redis")
    server.start()
    stream = use_usage_stream(settings, server.url, tmp_path / "spool")
    ids = [f"req_cancelled_{n}" for n in range(sink.BATCH_SIZE)]

    async def serve() -> None:
        await _emit_all(org, ids)  # a full batch: its send starts
        await asyncio.sleep(0.2)  # and waits on Redis when the loop closes

    try:
        server.process.send_signal(signal.SIGSTOP)  # connections are accepted, nothing answered
        asyncio.run(serve())  # cancels the send
        server.process.send_signal(signal.SIGCONT)
        client = redis.Redis(port=server.port)
        # Spooled by the thread after its own timeout, then replayed: in the stream, all of them
        # (the thread's first XADD may also have run when Redis resumed: a duplicate, stored once).
        wait_until(lambda: set(_stream_ids(server.url, stream)) == set(ids), timeout=60)
        client.close()
    finally:
        server.process.send_signal(signal.SIGCONT)
        sink.flush(timeout=30)
        server.stop()


def test_a_flush_with_nothing_queued_does_not_cut_the_next_batchs_linger_short(
    org, redis_stream, redis_url, monkeypatch
):
    import time

    import redis

    sink.emit(_record(org, "req_linger_before"))
    assert sink.flush(timeout=10)
    assert sink.flush(timeout=10)  # nothing queued: the thread takes the request alone
    monkeypatch.setattr(sink, "LINGER_SECONDS", 5.0)

    sink.emit(_record(org, "req_linger_1"))
    time.sleep(0.3)  # well inside the linger
    sink.emit(_record(org, "req_linger_2"))
    assert sink.flush(timeout=10)  # cuts it short

    entries = [
        [record["request_id"] for record in usage_stream.decode(fields)[1]]
        for _, fields in redis.Redis.from_url(redis_url).xrange(redis_stream)
    ]
    assert entries[-1] == ["req_linger_1", "req_linger_2"]  # one batch, as lingering is for
