"""The Redis mode's batch writer (metering.writer.StreamWriter, behind run_usage_writer), run in
this process against a real Redis: what it reads is stored once, acknowledged and deleted; what
can never be stored is set aside without holding up the rest; what a dead writer or a dead web
process left behind is picked up."""

import json
import tracemalloc

import pytest
import redis

from apps.usage.metering import sink
from apps.usage.metering import stream as usage_stream
from apps.usage.metering.spool import Spool
from apps.usage.metering.writer import StreamWriter
from apps.usage.models import RefusalCount, UsageEvent
from apps.usage.tests.test_writer import _record
from tests.outage import drop_usage_stream, use_usage_stream

# The writer stores through its own transactions, as in production.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def usage_stream_name(settings, redis_url, tmp_path):
    stream = use_usage_stream(settings, redis_url, tmp_path / "spool")
    yield stream
    sink.flush(timeout=10)
    drop_usage_stream(redis_url, stream)


@pytest.fixture
def client(redis_url):
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def _writer(client, stream, **options) -> StreamWriter:
    return StreamWriter(client=client, stream=stream, block_ms=100, **options)


def _stored(org) -> list[str]:
    return sorted(UsageEvent.objects.for_org(org).values_list("request_id", flat=True))


def _add(client, stream, records):
    client.xadd(stream, usage_stream.encode(usage_stream.KIND_EVENTS, records))


def test_the_web_process_only_appends_and_the_writer_stores_acknowledges_and_deletes(
    org, client, usage_stream_name
):
    ids = [f"req_stream_{n}" for n in range(30)]
    for request_id in ids:
        sink.emit(_record(org, request_id))
    assert sink.flush(timeout=10)

    # Handed over, yet not in the database: in the Redis mode the web process never writes it.
    assert _stored(org) == []
    in_stream = [
        record["request_id"]
        for _, fields in client.xrange(usage_stream_name)
        for record in usage_stream.decode(fields)[1]
    ]
    assert sorted(in_stream) == sorted(ids)

    _writer(client, usage_stream_name).run(until_empty=True)

    assert _stored(org) == sorted(ids)
    assert client.xlen(usage_stream_name) == 0
    assert client.xpending(usage_stream_name, usage_stream.GROUP)["pending"] == 0


def test_the_same_batch_twice_in_the_stream_is_stored_once(org, client, usage_stream_name):
    batch = [_record(org, "req_twice_1"), _record(org, "req_twice_2")]
    _add(client, usage_stream_name, batch)
    _add(client, usage_stream_name, batch)

    _writer(client, usage_stream_name).run(until_empty=True)

    assert _stored(org) == ["req_twice_1", "req_twice_2"]
    assert UsageEvent.objects.for_org(org).count() == 2


def test_a_record_that_can_never_be_stored_is_set_aside_and_the_rest_is_stored(
    org, client, usage_stream_name
):
    good = [_record(org, f"req_good_{n}") for n in range(9)]
    no_request_id = _record(org, "x")
    del no_request_id["request_id"]
    bad_timestamp = _record(org, "req_bad_time", timestamp="the day after tomorrow")
    _add(client, usage_stream_name, [*good[:4], no_request_id, *good[4:], bad_timestamp])

    _writer(client, usage_stream_name).run(until_empty=True)

    assert _stored(org) == sorted(r["request_id"] for r in good)
    dead = client.xrange(usage_stream.dead_letter_stream(usage_stream_name))
    set_aside = [json.loads(fields[b"data"]) for _, fields in dead]
    assert sorted(set_aside, key=str) == sorted([[no_request_id], [bad_timestamp]], key=str)
    errors = sorted(fields[b"error"].decode().split(":")[0] for _, fields in dead)
    assert errors == ["KeyError", "ValueError"]
    # Acknowledged and gone: the writer will not stumble over them again.
    assert client.xlen(usage_stream_name) == 0
    assert client.xpending(usage_stream_name, usage_stream.GROUP)["pending"] == 0


def test_an_unreadable_entry_is_set_aside_whole(org, client, usage_stream_name):
    client.xadd(usage_stream_name, {"kind": "events", "v": "1", "data": "[{not json"})
    client.xadd(usage_stream_name, {"kind": "telemetry", "v": "1", "data": "[]"})
    _add(client, usage_stream_name, [_record(org, "req_after_garbage")])

    _writer(client, usage_stream_name).run(until_empty=True)

    assert _stored(org) == ["req_after_garbage"]
    dead = client.xrange(usage_stream.dead_letter_stream(usage_stream_name))
    assert [json.loads(fields[b"data"])[0]["kind"] for _, fields in dead] == [
        "events",
        "telemetry",
    ]
    assert client.xlen(usage_stream_name) == 0


def test_records_of_different_shapes_come_back_from_an_entry_as_they_were_handed_over(org):
    first = _record(org, "req_shape_1")
    reordered = dict(reversed(list(_record(org, "req_shape_2").items())))
    fewer = {"request_id": "req_shape_3", "status": 200}
    nested = _record(org, "req_shape_4", raw_usage={"a": [1, {"b": None}]}, properties={"k": "v"})
    records = [first, reordered, fewer, nested]

    kind, items = usage_stream.decode(usage_stream.encode(usage_stream.KIND_EVENTS, records))

    assert kind == usage_stream.KIND_EVENTS
    assert items == records
    assert [list(item) for item in items] == [list(record) for record in records]


def test_raw_usage_orjson_refuses_still_travels_through_the_standard_encoder(org):
    # A provider's raw usage with a key that is not a string and an integer beyond 64 bits:
    # orjson refuses both; the record must reach the writer all the same, as JSON would have it.
    odd = _record(org, "req_odd_usage", raw_usage={7: "seven", "huge": 2**70, "n": 3})

    [item] = usage_stream.decode(usage_stream.encode(usage_stream.KIND_EVENTS, [odd]))[1]

    assert item["raw_usage"] == {"7": "seven", "huge": float(2**70), "n": 3}
    assert {k: v for k, v in item.items() if k != "raw_usage"} == {
        k: v for k, v in odd.items() if k != "raw_usage"
    }


def test_an_entry_of_the_earlier_format_is_still_stored(org, client, usage_stream_name):
    # Format 1: a JSON list of objects, as spooled or streamed by web processes before format 2.
    records = [_record(org, "req_format_1_a"), _record(org, "req_format_1_b")]
    client.xadd(usage_stream_name, {"kind": "events", "v": "1", "data": json.dumps(records)})

    _writer(client, usage_stream_name).run(until_empty=True)

    assert _stored(org) == ["req_format_1_a", "req_format_1_b"]
    assert client.xlen(usage_stream_name) == 0


def test_an_entry_that_is_not_a_list_of_groups_is_set_aside_whole(org, client, usage_stream_name):
    data = '{"request_id":"req_x"}'
    client.xadd(
        usage_stream_name, {"kind": "events", "v": usage_stream.FORMAT_VERSION, "data": data}
    )
    _add(client, usage_stream_name, [_record(org, "req_after_malformed")])

    _writer(client, usage_stream_name).run(until_empty=True)

    assert _stored(org) == ["req_after_malformed"]
    dead = client.xrange(usage_stream.dead_letter_stream(usage_stream_name))
    assert [json.loads(fields[b"data"])[0]["data"] for _, fields in dead] == [data]
    assert client.xlen(usage_stream_name) == 0


def test_a_malformed_row_or_group_is_set_aside_alone_and_its_neighbours_are_stored(
    org, client, usage_stream_name
):
    """One web process's entry carries many organizations' records: a part of it that cannot be
    read costs that part only."""
    good = [_record(org, f"req_beside_{n}") for n in range(3)]
    keys = list(good[0])
    rows = [list(record.values()) for record in good]
    data = json.dumps(
        [
            [keys, [rows[0], ["req_short"], rows[1]]],  # a row shorter than its keys
            [["request_id", 7], [["req_x", 200]]],  # a key that is not a name
            [["request_id"]],  # a group without rows
            [keys, [rows[2]]],
        ]
    )
    client.xadd(
        usage_stream_name, {"kind": "events", "v": usage_stream.FORMAT_VERSION, "data": data}
    )

    _writer(client, usage_stream_name).run(until_empty=True)

    assert _stored(org) == sorted(record["request_id"] for record in good)
    dead = client.xrange(usage_stream.dead_letter_stream(usage_stream_name))
    set_aside = [(json.loads(f[b"data"]), f[b"error"].decode()) for _, f in dead]
    assert set_aside == [
        ([{"keys": keys, "row": ["req_short"]}], "ValueError: entry row does not match its keys"),
        (
            [[["request_id", 7], [["req_x", 200]]]],
            "ValueError: entry group keys are not a list of names",
        ),
        ([[["request_id"]]], "ValueError: entry group is not [keys, rows]"),
    ]
    assert client.xlen(usage_stream_name) == 0


def test_refusal_counts_travel_the_stream_to_the_database(
    org, other_org, client, usage_stream_name
):
    for _ in range(3):
        sink.emit_refusal(org.slug, 401, "invalid_token")
    sink.emit_refusal(org.slug, 413, "body_too_large")
    sink.emit_refusal(other_org.slug, 401, "invalid_token")
    assert sink.flush(timeout=10)
    assert not RefusalCount.objects.for_org(org).exists()

    _writer(client, usage_stream_name).run(until_empty=True)

    counts = {(row.status, row.code): row.count for row in RefusalCount.objects.for_org(org).all()}
    assert counts == {(401, "invalid_token"): 3, (413, "body_too_large"): 1}
    assert RefusalCount.objects.for_org(other_org).get().count == 1


def test_a_bad_refusal_count_is_set_aside_and_the_good_ones_are_added(
    org, client, usage_stream_name
):
    good = {"org_slug": org.slug, "day": "2026-11-02", "status": 401, "code": "invalid_token"}
    bad = {"org_slug": org.slug, "day": "yesterday", "status": 401, "code": "x", "count": 1}
    client.xadd(
        usage_stream_name,
        usage_stream.encode(usage_stream.KIND_REFUSALS, [{**good, "count": 2}, bad]),
    )
    client.xadd(
        usage_stream_name, usage_stream.encode(usage_stream.KIND_REFUSALS, [{**good, "count": 3}])
    )

    _writer(client, usage_stream_name).run(until_empty=True)

    assert RefusalCount.objects.for_org(org).get().count == 5
    dead = client.xrange(usage_stream.dead_letter_stream(usage_stream_name))
    assert [json.loads(fields[b"data"]) for _, fields in dead] == [[bad]]
    assert client.xlen(usage_stream_name) == 0


def test_entries_a_dead_writer_had_read_are_claimed_and_stored(org, client, usage_stream_name):
    _add(client, usage_stream_name, [_record(org, "req_orphan_1"), _record(org, "req_orphan_2")])
    client.xgroup_create(usage_stream_name, usage_stream.GROUP, id="0")
    # A writer that read the entry and died before acknowledging it.
    read = client.xreadgroup(usage_stream.GROUP, "died", {usage_stream_name: ">"}, count=10)
    assert len(read[0][1]) == 1

    _writer(client, usage_stream_name, claim_idle=0).run(until_empty=True)

    assert _stored(org) == ["req_orphan_1", "req_orphan_2"]
    assert client.xpending(usage_stream_name, usage_stream.GROUP)["pending"] == 0
    assert client.xlen(usage_stream_name) == 0


def test_a_writer_restarted_under_its_name_takes_back_its_own_pending_entries_at_once(
    org, client, usage_stream_name
):
    _add(client, usage_stream_name, [_record(org, "req_mine")])
    client.xgroup_create(usage_stream_name, usage_stream.GROUP, id="0")
    client.xreadgroup(usage_stream.GROUP, "writer-1", {usage_stream_name: ">"}, count=10)

    # No claim would happen for an hour: only reading its own pending list gets the entry.
    _writer(client, usage_stream_name, consumer="writer-1", claim_idle=3600).run(until_empty=True)

    assert _stored(org) == ["req_mine"]


def test_the_writer_replays_spool_files_nobody_holds_and_leaves_held_ones(
    org, client, usage_stream_name, tmp_path
):
    spool_dir = tmp_path / "web-spool"
    dead = Spool(spool_dir)
    dead.append([usage_stream.encode("events", [_record(org, "req_spooled_by_the_dead")])])
    dead.close()  # its process is gone: the lock with it
    alive = Spool(spool_dir)
    alive.append([usage_stream.encode("events", [_record(org, "req_still_being_spooled")])])

    _writer(client, usage_stream_name, spool_dir=str(spool_dir)).run(until_empty=True)

    assert _stored(org) == ["req_spooled_by_the_dead"]
    remaining = list(spool_dir.iterdir())
    assert len(remaining) == 1
    assert b"req_still_being_spooled" in remaining[0].read_bytes()
    alive.close()


# ---------------------------------------------------------------------------------------------
# What the readers hand the writer is clean: store_events is told so (cleaned=True) and does not
# clean again, so a NUL written by an older or foreign producer must be cleaned by the reader.


def _nul_record() -> dict:
    return {"model": "gpt\x00x", "raw": {"tier\x00": ["a\x00b", 1]}, "tokens": 3}


@pytest.mark.django_db(transaction=False)
def test_decode_entry_cleans_a_nul_escape_in_any_string():
    data = json.dumps([[["model", "raw", "tokens"], [list(_nul_record().values())]]])
    assert "\\u0000" in data  # the way JSON writes a NUL
    _, items, rejected = usage_stream.decode_entry(
        {"kind": usage_stream.KIND_EVENTS, "v": usage_stream.FORMAT_VERSION, "data": data}
    )
    assert rejected == []
    assert items == [{"model": "gpt\ufffdx", "raw": {"tier\ufffd": ["a\ufffdb", 1]}, "tokens": 3}]
    assert all(usage_stream.is_clean(item) for item in items)


@pytest.mark.django_db(transaction=False)
def test_unpack_cleans_a_nul_escape_that_pack_did_not_write():
    keys = tuple(_nul_record())
    foreign = (keys, json.dumps(list(_nul_record().values())).encode())
    assert usage_stream.unpack(foreign) == {
        "model": "gpt\ufffdx",
        "raw": {"tier\ufffd": ["a\ufffdb", 1]},
        "tokens": 3,
    }


@pytest.mark.django_db(transaction=False)
def test_a_packed_record_holds_about_its_size():
    """orjson returns its result in a buffer of 4 KiB or more whatever its length; a record
    waiting in the sink's queue must not keep that buffer."""
    tracemalloc.start()
    try:
        kept = [usage_stream.pack({"model": "gpt-4o-mini", "tokens": i}) for i in range(100)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept[0][1] == b'["gpt-4o-mini",0]'
    assert held < 100 * 1024  # orjson's buffers would be over 400 KiB
