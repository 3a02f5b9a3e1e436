"""The usage writer's throughput: events per second through ``usage_events_write`` into the
database that DATABASE_URL names (PostgreSQL for the figure that counts; issue #5's target is
20,000 events/s on this machine).

    DATABASE_URL=postgres://… .venv/bin/python -m bench.writer [--events 100000] [--batch 5000]

It migrates that database, writes N generated records (several providers, models, customers,
days, cached and cache-write tokens, reasoning, some unknown models and errors) in batches, as
the Redis-stream writer would hand them over, then the same records again (a full replay: all
duplicates), checks that the rollups add up to the events, and deletes what it wrote.
``run(...)`` returns the markdown section printed here, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("openai", "gpt-5"),
    ("openai", "o3-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("google", "gemini-2.5-pro"),
    ("google", "gemini-2.5-flash"),
    ("openai", "ft:private-model"),  # unknown: unpriced
]


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costr.settings.local")
    import django

    django.setup()


def generate(
    organization_ids: list[int], count: int, seed: int = 5, tokens: dict[int, int] | None = None
) -> list[dict]:
    """Records shaped as the proxy's ``ProxiedRequest.record`` makes them; ``tokens`` maps an
    organization to the id of the token its records name (none without it)."""
    tokens = tokens or {}
    rng = random.Random(seed)  # noqa: S311 - generated load, not secrets
    start = datetime(2026, 11, 1, tzinfo=UTC)
    # A few large customers and a long tail (weight 1/rank), as real traffic has; no customer
    # header on a tenth of requests. Models likewise: the first of MODELS most used.
    customers = [f"cust_{n}" for n in range(500)] + [None]
    customer_weights = [1 / rank for rank in range(1, 501)] + [
        0.1 * sum(1 / r for r in range(1, 501))
    ]
    model_weights = [1 / rank for rank in range(1, len(MODELS) + 1)]
    # In time order over three days, as a stream delivers them: a batch spans a short while.
    step = 3 * 86400 / max(count, 1)
    records = []
    for index in range(count):
        [(provider, model)] = rng.choices(MODELS, weights=model_weights)
        inputs = rng.randint(10, 20_000)
        cached = rng.randint(0, inputs // 2) if rng.random() < 0.5 else 0
        writes = rng.randint(0, inputs - cached) if provider == "anthropic" else 0
        output = rng.randint(1, 4_000)
        status = 200 if rng.random() < 0.97 else rng.choice([429, 500])
        organization_id = rng.choice(organization_ids)
        records.append(
            {
                "request_id": uuid.uuid4().hex,
                "organization_id": organization_id,
                "token_id": tokens.get(organization_id),
                "timestamp": (start + timedelta(seconds=index * step)).isoformat(),
                "provider": provider,
                "endpoint": "chat",
                "model": model,
                "requested_model": model,
                "customer": rng.choices(customers, weights=customer_weights)[0],
                "properties": {"feature": rng.choice(["chat", "search", "summary"])},
                "status": status,
                "stream": rng.random() < 0.5,
                "outcome": "ok",
                "input_tokens": inputs if status == 200 else None,
                "cached_input_tokens": cached if status == 200 else None,
                "cache_write_tokens": writes if status == 200 else None,
                "cache_write_1h_tokens": writes // 3 if status == 200 else None,
                "output_tokens": output if status == 200 else None,
                "reasoning_tokens": output // 4 if status == 200 else None,
                "service_tier": rng.choice(["", "", "", "flex"]) if model == "gpt-5" else "",
                "raw_usage": {"prompt_tokens": inputs, "completion_tokens": output},
                "latency_ms": rng.randint(100, 5_000),
                "ttfb_ms": rng.randint(50, 500),
                "overhead_ms": 0.4,
            }
        )
    return records


def run(events: int = 100_000, batch: int = 5_000, organizations: int = 3, writers: int = 2) -> str:
    """Write ``events`` records in batches of ``batch``; the same again (all duplicates); then
    ``events`` new ones split between ``writers`` processes writing at once (as several
    ``run_usage_writer`` consumers of one stream would). The markdown section with the figures."""
    _setup_django()
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Count, Sum

    from apps.accounts.models import Organization
    from apps.keys.services import proxy_token_create
    from apps.usage.metering.events import usage_events_write
    from apps.usage.models import DailyRollup, UsageEvent

    call_command("migrate", verbosity=0, interactive=False)
    suffix = uuid.uuid4().hex[:8]
    orgs = [
        Organization.objects.create(name=f"Writer bench {n}", slug=f"writer-bench-{suffix}-{n}")
        for n in range(organizations)
    ]
    try:
        tokens = {
            o.pk: proxy_token_create(
                organization=o, name="bench", scopes=["proxy"], actor=None
            ).token.pk
            for o in orgs
        }
        records = generate([o.pk for o in orgs], events, tokens=tokens)
        batches = [records[i : i + batch] for i in range(0, len(records), batch)]
        # One batch first, not timed: connection, catalog and statement caches.
        warm = generate([orgs[0].pk], min(batch, 1000), seed=6)
        usage_events_write(warm)

        backend = _backend_cpu_reader(connection)
        load_before = os.getloadavg()[0]
        first = _timed(lambda: sum(usage_events_write(b) for b in batches), backend)
        replay = _timed(lambda: sum(usage_events_write(b) for b in batches), backend)
        parallel = (
            _parallel([o.pk for o in orgs], tokens, events, batch, writers) if writers > 1 else None
        )

        reason = "the benchmark's own organizations"
        events_qs = UsageEvent.objects.unscoped(reason=reason).filter(organization__in=orgs)
        totals = events_qs.aggregate(n=Count("id"), cost=Sum("cost_usd"))
        rollups = (
            DailyRollup.objects.unscoped(reason=reason)
            .filter(organization__in=orgs)
            .aggregate(n=Sum("requests"), cost=Sum("cost_usd"))
        )
        consistent = totals["n"] == rollups["n"] and totals["cost"] == rollups["cost"]
    finally:
        for organization in orgs:
            organization.delete()

    vendor = connection.vendor
    return "\n".join(
        [
            "## Usage writer",
            "",
            f"`python -m bench.writer`: {events:,} generated records through `usage_events_write`"
            f" in batches of {batch:,}, into {vendor} (`DATABASE_URL`), by one process"
            + (f" and then by {writers} at once" if writers > 1 else "")
            + ", measured "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Target (issue #5): at least 20,000 "
            "events/s into PostgreSQL.",
            "",
            "| pass | records | stored | seconds | events/s | CPU µs/event: writer | "
            "database | events/s the CPU allows |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            _row("new events (priced, inserted, rolled up)", events, first),
            _row("the same batches replayed (all duplicates)", events, replay),
            *(
                [_row(f"new events, {writers} writer processes at once", events, parallel)]
                if parallel
                else []
            ),
            "",
            "CPU is the writer processes' own time and their PostgreSQL backends' (read from "
            '/proc when the database runs on this machine). "events/s the CPU allows" is what '
            "the machine would reach with nothing else running: 1 / (writer + database) per "
            "event for one writer (it and its backend take turns on one core's worth), twice "
            "that for several writers sharing the 2 cores. Wall-clock figures move with whatever "
            f"else runs: load average {load_before:.2f} when this started.",
            "",
            f"Rollups after all passes: {rollups['n']:,} requests, ${rollups['cost']} against "
            f"{totals['n']:,} events, ${totals['cost']} — "
            + ("equal." if consistent else "**NOT EQUAL**."),
            "",
        ]
    )


def _parallel(organization_ids, tokens, events, batch, writers) -> dict:
    """``writers`` processes, each writing its share of new records in batches, started
    together; wall time from the start to the last one done, CPU summed over all of them."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start = context.Barrier(writers + 1)
    results = context.Queue()
    processes = [
        context.Process(
            target=_writer_process,
            args=(organization_ids, tokens, events // writers, batch, 100 + n, start, results),
        )
        for n in range(writers)
    ]
    for process in processes:
        process.start()
    # A writer that fails before the start breaks the barrier instead of leaving this waiting.
    start.wait(timeout=300)
    started = time.perf_counter()
    done = [results.get(timeout=600) for _ in processes]
    seconds = time.perf_counter() - started
    for process in processes:
        process.join(timeout=60)
    failed = [r for r in done if "error" in r]
    if failed:
        raise RuntimeError(f"a writer process failed: {failed[0]['error']}")
    databases = [r["db"] for r in done]
    return {
        "stored": sum(r["stored"] for r in done),
        "seconds": seconds,
        "cpu": sum(r["cpu"] for r in done),
        "db": None if None in databases else sum(databases),
        "parallel": True,
    }


def _writer_process(organization_ids, tokens, count, batch, seed, start, results) -> None:
    try:
        _setup_django()
        from django.db import connection

        from apps.usage.metering.events import usage_events_write

        records = generate(organization_ids, count, seed=seed, tokens=tokens)
        usage_events_write(generate(organization_ids, 200, seed=seed + 1000, tokens=tokens))
        backend = _backend_cpu_reader(connection)
        batches = [records[i : i + batch] for i in range(0, len(records), batch)]
    except BaseException as error:
        start.abort()
        results.put({"error": repr(error)})
        raise
    start.wait()
    try:
        results.put(_timed(lambda: sum(usage_events_write(b) for b in batches), backend))
    except BaseException as error:
        results.put({"error": repr(error)})
        raise


def _backend_cpu_reader(connection):
    """A function giving the CPU seconds of this connection's PostgreSQL backend, or None when
    they cannot be read (another database, another machine)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    path = f"/proc/{pid}/stat"
    if not os.path.exists(path):
        return None
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        with open(path) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    return read


def _timed(work, backend) -> dict:
    cpu, db, wall = time.process_time(), backend() if backend else None, time.perf_counter()
    stored = work()
    return {
        "stored": stored,
        "seconds": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "db": backend() - db if backend else None,
    }


def _row(label: str, events: int, m: dict) -> str:
    writer = m["cpu"] / events * 1e6
    if m["db"] is None:
        database = allows = "-"
    else:
        database = f"{m['db'] / events * 1e6:.1f}"
        # One writer and its backend take turns: one core's worth. Several spread over both.
        cores = min(os.cpu_count() or 1, 2) if m.get("parallel") else 1
        allows = f"{cores * events / (m['cpu'] + m['db']):,.0f}"
    return (
        f"| {label} | {events:,} | {m['stored']:,} | {m['seconds']:.2f} | "
        f"{events / m['seconds']:,.0f} | {writer:.1f} | {database} | {allows} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--organizations", type=int, default=3)
    parser.add_argument("--writers", type=int, default=2)
    args = parser.parse_args()
    print(
        run(
            events=args.events,
            batch=args.batch,
            organizations=args.organizations,
            writers=args.writers,
        )
    )


if __name__ == "__main__":
    main()
