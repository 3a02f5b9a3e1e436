"""The usage writer's rate from the Redis stream into PostgreSQL, as deployed: records put in a
stream the way web processes put them (one entry per batch of 500), then K
``manage.py run_usage_writer --until-empty`` processes, started together as consumers of one
group, drain it. Events/s = events stored / wall time from their start to the last one's exit
(process start-up included, so the figure is on the safe side).

    DATABASE_URL=postgres://… [REDIS_URL=redis://…] .venv/bin/python -m bench.stream_writer \\
        [--records 200000] [--writers 1 2]
"""

import argparse
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.writer import _setup_django, generate

ROOT = Path(__file__).resolve().parent.parent
SINK_BATCH = 500  # records per stream entry, as apps.usage.metering.sink sends them


def _drain(records: int, writers: int, redis_url: str, seed: int) -> dict:
    from django.conf import settings

    from apps.accounts.models import Organization
    from apps.usage.metering import stream as usage_stream
    from apps.usage.models import UsageEvent

    suffix = uuid.uuid4().hex[:8]
    orgs = [
        Organization.objects.create(name=f"Stream bench {n}", slug=f"stream-bench-{suffix}-{n}")
        for n in range(3)
    ]
    name = f"costr-bench:stream:{suffix}"
    client = usage_stream.client_for(redis_url)
    try:
        items = generate([o.pk for o in orgs], records, seed=seed)
        entries = [
            usage_stream.encode(usage_stream.KIND_EVENTS, items[i : i + SINK_BATCH])
            for i in range(0, len(items), SINK_BATCH)
        ]
        for start in range(0, len(entries), 50):
            usage_stream.append(client, name, entries[start : start + 50])
        env = {
            **os.environ,
            "DATABASE_URL": os.environ["DATABASE_URL"],
            "COSTR_USAGE_REDIS_URL": redis_url,
            "COSTR_USAGE_STREAM": name,
            "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
            "LOG_LEVEL": "WARNING",
        }
        argv = [sys.executable, "manage.py", "run_usage_writer", "--until-empty"]
        started = time.perf_counter()
        processes = [
            subprocess.Popen(  # noqa: S603 - our own command, run with this interpreter
                [*argv, "--consumer", f"bench-{n}"],
                cwd=ROOT,
                env=env,
                # Their log lines would land in the markdown this module prints.
                stdout=subprocess.DEVNULL,
            )
            for n in range(writers)
        ]
        codes = [process.wait(timeout=900) for process in processes]
        seconds = time.perf_counter() - started
        reason = "the benchmark's own organizations"
        stored = UsageEvent.objects.unscoped(reason=reason).filter(organization__in=orgs).count()
        return {"seconds": seconds, "stored": stored, "codes": codes}
    finally:
        client.delete(name, usage_stream.dead_letter_stream(name))
        reason = "the benchmark's own organizations"
        UsageEvent.objects.unscoped(reason=reason).filter(organization__in=orgs).delete()
        for organization in orgs:
            organization.delete()


def _startup_seconds(redis_url: str) -> float:
    """What a writer process costs before it reads anything: one run on an empty stream."""
    from django.conf import settings

    env = {
        **os.environ,
        "COSTR_USAGE_REDIS_URL": redis_url,
        "COSTR_USAGE_STREAM": f"costr-bench:empty:{uuid.uuid4().hex[:8]}",
        "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
        "LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "manage.py", "run_usage_writer", "--until-empty"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def run(records: int = 200_000, writers: tuple[int, ...] = (1, 2)) -> str:
    _setup_django()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0, interactive=False)
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    startup = _startup_seconds(redis_url)
    rows = []
    for seed, count in enumerate(writers, start=40):
        result = _drain(records, count, redis_url, seed)
        rate = result["stored"] / result["seconds"]
        steady = result["stored"] / max(result["seconds"] - startup, 1e-9)
        verdict = "PASS" if steady >= 20_000 and result["stored"] == records else "MISS"
        rows.append(
            f"| {count} | {records:,} | {result['stored']:,} | {result['seconds']:.1f} | "
            f"{rate:,.0f} | {steady:,.0f} | {verdict} |"
        )
    return "\n".join(
        [
            "## Usage writer: from the Redis stream",
            "",
            f"`python -m bench.stream_writer`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, into "
            f"{connection.vendor}, load average {os.getloadavg()[0]:.2f} at the end. "
            f"{records:,} records in entries of {SINK_BATCH} (as web processes send them), "
            "drained by `run_usage_writer --until-empty` processes started together (one "
            f"consumer group). *Wall*: events over the whole run, process start-up included; "
            f"*running*: with the start-up ({startup:.1f} s, a writer on an empty stream) taken "
            "off, the rate of a writer that is already up, as in production. Target: 20,000 "
            "events/s.",
            "",
            "| writer processes | records | stored | seconds | events/s, wall | events/s, running "
            "| target |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            *rows,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(run(records=args.records, writers=tuple(args.writers)))


if __name__ == "__main__":
    main()
