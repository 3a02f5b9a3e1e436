"""What the usage sink costs a web process, and how fast the stream writer drains the stream.

    [DATABASE_URL=postgres://…] [REDIS_URL=redis://…] .venv/bin/python -m bench.sink [--records N]

Three figures, each for the transports the sink has:

- ``emit()`` on the calling thread (the proxy's event loop): CPU and wall time per call. It is
  a queue put, whatever the transport, so this is the sink's whole cost on the request path.
- the sink's background thread, CPU per record: JSON + one XADD per batch (redis), the same into
  the spool file with an fsync per batch (Redis unreachable), or pricing and storing the batch
  in the database itself (embedded). It runs in the web process, so it competes with the event
  loop for the GIL; comparing it with the proxy's CPU per request (docs/benchmarks.md) gives the
  sink's share of the web process's throughput.
- ``run_usage_writer``'s loop (XREADGROUP, decode, ``usage_events_write``, XACK + XDEL) from a
  full stream into the database: events per second.

It uses the database DATABASE_URL names (migrating it; records go to organizations it creates
and deletes) and the Redis of REDIS_URL (default 127.0.0.1:6379/15), on streams of its own.
``run(...)`` returns the markdown section printed here, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime

from bench.writer import _setup_django, generate


def _thread_cpu(thread: threading.Thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def _measure(records: list[dict], *, pace: float | None = None) -> dict[str, float]:
    """Emit ``records`` (as fast as possible, or ``pace`` per second), flush, and return the
    caller's and the sink thread's cost per record."""
    from apps.usage.metering import sink

    sink.emit(dict(records[0], request_id=uuid.uuid4().hex))  # start the thread and transport
    assert sink.flush(timeout=120)
    thread = sink._sink.thread
    background_before = _thread_cpu(thread)
    caller_cpu = caller_wall = 0.0
    started = time.perf_counter()
    for index, record in enumerate(records):
        cpu, wall = time.thread_time(), time.perf_counter()
        sink.emit(record)
        caller_cpu += time.thread_time() - cpu
        caller_wall += time.perf_counter() - wall
        if pace:
            delay = started + (index + 1) / pace - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    assert sink.flush(timeout=300), "the sink did not catch up"
    background = _thread_cpu(thread) - background_before
    count = len(records)
    return {
        "emit_cpu_us": caller_cpu / count * 1e6,
        "emit_wall_us": caller_wall / count * 1e6,
        "thread_cpu_us": background / count * 1e6,
    }


def run(records: int = 20_000, paced: int = 2_000, pace: float = 500.0) -> str:
    _setup_django()
    import redis
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from apps.accounts.models import Organization
    from apps.usage.metering import stream as usage_stream
    from apps.usage.metering.writer import StreamWriter
    from tests.outage import free_port

    call_command("migrate", verbosity=0, interactive=False)
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    client = redis.Redis.from_url(redis_url)
    client.ping()
    suffix = uuid.uuid4().hex[:8]
    organizations = [
        Organization.objects.create(name=f"Sink bench {n}", slug=f"sink-bench-{suffix}-{n}")
        for n in range(3)
    ]
    ids = [o.pk for o in organizations]
    streams = []
    rows = []
    writer_row = ""
    try:
        with tempfile.TemporaryDirectory(prefix="costr-bench-sink-") as scratch:
            settings.COSTR_USAGE_SPOOL_DIR = os.path.join(scratch, "spool")
            modes = [
                ("redis", redis_url),
                ("redis unreachable (spool)", f"redis://127.0.0.1:{free_port()}/0"),
                ("embedded (database)", ""),
            ]
            for seed, (label, url) in enumerate(modes, start=10):
                stream = f"costr-bench:usage:{uuid.uuid4().hex}"
                streams.append(stream)
                settings.COSTR_USAGE_REDIS_URL = url
                settings.COSTR_USAGE_STREAM = stream
                burst = _measure(generate(ids, records, seed=seed))
                slow = _measure(generate(ids, paced, seed=seed + 100), pace=pace)
                rows.append(
                    f"| {label} | {burst['emit_cpu_us']:.2f} | {burst['emit_wall_us']:.2f} | "
                    f"{burst['thread_cpu_us']:.1f} | {slow['thread_cpu_us']:.1f} |"
                )
                if label == "redis":
                    # Each _measure adds one warm-up record.
                    writer_stream, writer_records = stream, records + paced + 2
            # The first stream now holds every record of the redis row: drain it.
            writer = StreamWriter(client=client, stream=writer_stream, count=10, block_ms=100)
            started = time.perf_counter()
            writer.run(until_empty=True)
            seconds = time.perf_counter() - started
            writer_row = (
                f"| {writer_records:,} | {writer.stored:,} | {seconds:.2f} | "
                f"{writer.stored / seconds:,.0f} |"
            )
    finally:
        settings.COSTR_USAGE_REDIS_URL = ""
        for stream in streams:
            client.delete(stream, usage_stream.dead_letter_stream(stream))
        for organization in organizations:
            organization.delete()

    return "\n".join(
        [
            "## Usage sink",
            "",
            f"`python -m bench.sink`: the sink's cost in a web process and the stream writer's "
            f"rate, into {connection.vendor} (`DATABASE_URL`), measured "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Per record, µs. *Burst*: {records:,} "
            f"records emitted back to back (full batches of 500); *paced*: {paced:,} at "
            f"{pace:,.0f}/s (batches of ~{pace * 0.2:.0f}, the 0.2 s linger).",
            "",
            "| transport | emit() CPU | emit() wall | sink thread CPU, burst | "
            "sink thread CPU, paced |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            "`run_usage_writer`'s loop draining that stream (XREADGROUP 10 entries, "
            "`usage_events_write`, XACK + XDEL):",
            "",
            "| records in the stream | stored | seconds | events/s |",
            "| ---: | ---: | ---: | ---: |",
            writer_row,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--paced", type=int, default=2_000)
    parser.add_argument("--pace", type=float, default=500.0)
    args = parser.parse_args()
    print(run(records=args.records, paced=args.paced, pace=args.pace))


if __name__ == "__main__":
    main()
